"""Shared test set-up: every test starts from the same random state.

The number of torch threads is left as it is.
"""
import random

import pytest
import torch

SEED = 1234


@pytest.fixture(autouse=True)
def seed() -> int:
    """Seed python, torch (and numpy, when installed) before each test; returns the seed."""
    random.seed(SEED)
    torch.manual_seed(SEED)
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a core dependency
        pass
    else:
        np.random.seed(SEED)
    return SEED
