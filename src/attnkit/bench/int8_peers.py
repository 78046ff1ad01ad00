"""The int8 decoding linears ``attnkit bench generate`` times beside attnkit's own
(:func:`attnkit.generation.quantize_int8`): ``torch._weight_int8pack_mm`` with per-row
symmetric codes, and torchao's int8 weight-only quantization, each swapped into the same GPT.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from attnkit.bench.harness import short_error
from attnkit.models.gpt import GPT


class _SubclassWeightLinear(nn.Module):
    """``F.linear(x, weight, bias)`` for a weight that is a tensor subclass (torchao's
    ``Int8Tensor``), whose ``__torch_function__`` computes the product. Held as a module of its
    own so that attnkit's :func:`~attnkit.native.linear.decoding_linears`, which wraps plain
    ``nn.Linear`` layers, leaves it alone: its native kernel takes such a weight for float32
    (the subclass reports its original dtype) and would read the wrapper, not the int8 codes.
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.weight = linear.weight
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in_features) -> (..., out_features)."""
        return F.linear(x, self.weight, self.bias)


class _Int8PackLinear(nn.Module):
    """A minimal weight-only int8 linear over ``torch._weight_int8pack_mm``: the same per-row
    symmetric codes as :class:`~attnkit.native.int8.Int8Linear` (w ~ q * scale, |q| <= 127),
    activations and scales in bfloat16 (the op's fast CPU path; in float32 it took 10x longer
    for a 3072x768 weight), the result in the input's dtype."""

    weight: torch.Tensor
    scales: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        w = linear.weight.detach().float()  # (N, K)
        scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0  # (N,)
        q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)  # (N, K)
        self.in_features, self.out_features = w.shape[1], w.shape[0]
        self.register_buffer("weight", q)
        self.register_buffer("scales", scale.to(torch.bfloat16))
        bias = linear.bias
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in_features) -> x W^T + bias (..., out_features), in x's dtype."""
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16)  # (M, K)
        y = torch._weight_int8pack_mm(flat, self.weight, self.scales).to(x.dtype)  # (M, N)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*x.shape[:-1], self.out_features)


def _decoding_linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """The linears :func:`~attnkit.native.int8.quantize_int8` turns into int8: blocks and head."""
    return [
        (name, mod)
        for name, mod in model.named_modules()
        if isinstance(mod, nn.Linear)
        and (name.startswith("blocks.") or name.startswith("lm_head."))
    ]


def int8pack_model(model: GPT) -> GPT:
    """``model`` with its block and LM-head linears replaced, in place, by weight-only int8
    linears over ``torch._weight_int8pack_mm`` (a tied head gets its own int8 copy).

    Raises:
        RuntimeError: this torch has no ``torch._weight_int8pack_mm``.

    Examples:
        >>> m = int8pack_model(gpt)  # then attnkit.generate(m, ids (1, T), 16, temperature=0)
    """
    if not hasattr(torch, "_weight_int8pack_mm"):
        raise RuntimeError(f"torch {torch.__version__} has no torch._weight_int8pack_mm")
    for name, mod in _decoding_linears(model):
        model.set_submodule(name, _Int8PackLinear(mod))
    return model


@contextlib.contextmanager
def quiet_torchao() -> Iterator[None]:
    """Within the block, torchao's log lines and warnings (and torch's notes on its enums,
    logged when torchao registers them) are not shown."""
    names = ("torchao", "torch.utils._pytree")
    levels = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for n, level in levels.items():
            logging.getLogger(n).setLevel(level)


def import_torchao() -> tuple[Any | None, str | None]:
    """``torchao.quantization``, or None and why not ("torchao not installed", or the import
    error). The import's log lines (CUDA-only extensions that do not load on a CPU machine,
    torch's notes on torchao's enums) are kept off the console.

    Examples:
        >>> tq, why = import_torchao()  # (module, None) or (None, "torchao not installed")
    """
    try:
        with quiet_torchao():
            import torchao.quantization as tq
    except ImportError:
        return None, "torchao not installed"
    except Exception as e:  # a torchao built for another torch
        return None, f"torchao does not import with torch {torch.__version__}: {short_error(e)}"
    return tq, None


def torchao_int8_model(model: GPT) -> tuple[GPT | None, str | None]:
    """``model`` with torchao's int8 weight-only quantization of every linear (in place:
    ``quantize_(model, Int8WeightOnlyConfig())``, per-row scales, the tied head quantized
    apart from the embedding), ready for attnkit's decoding loop; or None and why not.

    Examples:
        >>> m, why = torchao_int8_model(gpt)  # m decodes ids (1, T) like gpt, in int8
    """
    tq, why = import_torchao()
    if tq is None:
        return None, why
    try:
        with quiet_torchao():
            tq.quantize_(model, tq.Int8WeightOnlyConfig())
    except Exception as e:
        return None, f"torchao's quantize_ failed: {short_error(e)}"
    for name, mod in _decoding_linears(model):
        if type(mod.weight) is not nn.Parameter or type(mod.weight.data) is not torch.Tensor:
            model.set_submodule(name, _SubclassWeightLinear(mod))
    return model, None
