import pytest


@pytest.fixture
def kernel_calls(monkeypatch):
    """The row counts of every call of the native skinny product, in order."""
    from attnkit import native as kernels

    calls = []
    real = kernels.SkinnyLinear.__call__
    monkeypatch.setattr(
        kernels.SkinnyLinear, "__call__", lambda self, x: calls.append(x.shape[0]) or real(self, x)
    )
    return calls
