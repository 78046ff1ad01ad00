"""Shared pieces of the bad-input fuzz tests: the example budget and the tally of cases.

Every fuzz test draws its cases with hypothesis under ``fuzz_settings(n)``: ``n`` examples in
the default run, ``n * 20`` with ``ATTNKIT_FUZZ_PROFILE=slow`` (``make test-slow`` and
``benchmarks/fuzz_report.py``). Examples are derandomized, so a run is the same every time.

Each case ends in one :func:`record` call naming its surface and how it ended:

* ``"refused"``: a ``ValueError``/``TypeError`` (API) or exit 2 with one stderr line (CLI);
* ``"accepted"``: a valid call whose result the test checked (shape, finiteness, a reference).

Anything else fails the test where it happens, so the tally holds only those two outcomes; the
session's summary (``conftest.py``) prints it and, with ``ATTNKIT_FUZZ_REPORT=PATH``, writes it
as JSON.
"""

from __future__ import annotations

import os
from collections import defaultdict

from hypothesis import HealthCheck, settings
from tokenizers import Tokenizer, models, pre_tokenizers
from tokenizers.processors import TemplateProcessing

SLOW = os.environ.get("ATTNKIT_FUZZ_PROFILE", "default") == "slow"
SCALE = 20 if SLOW else 1

# surface -> outcome -> count
TALLY: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))


def fuzz_settings(n: int) -> settings:
    """Hypothesis settings for ``n`` examples (scaled in the slow profile), deterministic."""
    return settings(
        max_examples=n * SCALE,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.filter_too_much,
            HealthCheck.data_too_large,
            HealthCheck.function_scoped_fixture,
        ],
    )


def record(surface: str, outcome: str) -> None:
    assert outcome in ("refused", "accepted"), outcome
    TALLY[surface][outcome] += 1


def one_line(message: str) -> bool:
    """A clear error message: not empty, one line."""
    return bool(message.strip()) and "\n" not in message.strip()


CHARS = "abcdefghijklmnopqrstuvwxyz .,:;!?'\n"
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *CHARS]


def char_tokenizer(specials: bool) -> Tokenizer:
    """One token per character of CHARS; with ``specials``, [CLS] text [SEP] (for BERT)."""
    tok = Tokenizer(models.WordLevel({c: i for i, c in enumerate(VOCAB)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    if specials:
        tok.post_processor = TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
        )
    return tok
