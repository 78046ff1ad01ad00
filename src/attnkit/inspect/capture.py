"""Capture attention maps from any attnkit model, whatever backend or variant it runs on.

    >>> with capture(model, layers=[0, 3], heads=None, top_k=None) as maps:
    ...     model(input_ids)
    >>> maps.weights[0].shape        # (B, H, Tq, Tk) for layer maps.layers[0]

Each :class:`~attnkit.attention.module.MultiHeadAttention` of the model is a layer, numbered in
module order (block 0's attention is layer 0). While the context is open, the kernel of every
captured layer is wrapped in a recording kernel (:mod:`attnkit.attention.recording`), which
hands the q and k the kernel receives (after RoPE, with the KV cache prepended) and the masks to
this module; the weights are recomputed from them (:mod:`attnkit.inspect.weights`) in float32
(float64 for float64 models): softmax(q k^T / sqrt(D) + ALiBi) over the keys the layer may see
(causal, sliding window, key padding, packed documents, a user mask). The forward pass itself is untouched: the fast kernel
(SDPA, FlexAttention, windowed) still produces the layer's output.

Approximate variants report the weights they actually use:

* ``local`` and ``bigbird`` are exact softmax attention on a fixed pattern; the weights are
  that softmax under the variant's ``dense_mask`` (and the key padding);
* ``lsh`` attends, for each query, to the union of the keys that share its chunk or the chunk
  before in some hash round (never itself unless nothing else is left); the weights are the
  softmax of the shared-QK scores over that union, and the hash buckets are kept in
  ``maps.info``;
* ``linear`` and ``performer`` never form weights (they multiply feature maps, with no softmax
  over keys), so capturing them raises ``ValueError`` with that reason
  (:func:`unavailable_layers` says which layers these are without raising).

Memory: only the requested layers and heads are computed; the score matrix is processed a block
of query rows at a time, and with ``top_k`` only the ``top_k`` largest weights of each row are
kept (a sparse COO tensor per layer, plus the values and key indices as dense tensors), so a long
input never holds a (B, H, T, T) map.

If a layer runs more than once inside the context (a KV-cached decoding loop), the maps of its
last call are kept; ``maps.calls`` counts the calls per captured layer. Weights are those
before attention dropout (dropout is off in eval mode).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from typing import Any, Protocol, TypeAlias

import torch
from torch import Tensor, nn

from attnkit._util.checks import int_at_least, positive_int
from attnkit.attention.kernel import AttentionKernel, ExactKernel
from attnkit.attention.module import MultiHeadAttention
from attnkit.attention.recording import (
    AttentionCall,
    RecordingKernel,
    attention_layers,
    is_recording,
    recording,
)
from attnkit.attention.variants import FeatureMapAttention, LSHAttention, VariantAttention
from attnkit.inspect.maps import AttentionMaps
from attnkit.inspect.weights import layer_weights, lsh_weights, to_sparse

__all__ = [
    "AttentionMaps",
    "HasModel",
    "Inspectable",
    "capture",
    "attention_layers",
    "unavailable_layers",
    "layer_weights",
    "capture_overhead",
]


class HasModel(Protocol):
    """Anything that holds an attnkit model as ``.model`` (a sentence Encoder, say).

    Examples:
        >>> encoder = Encoder.load("minilm")  # holds its Bert as .model: a HasModel
        >>> with capture(encoder, layers=[0]) as maps:
        ...     encoder.encode(["he swung the bat"])
    """

    @property
    def model(self) -> nn.Module:
        """The attnkit model held.

        Examples:
            >>> encoder.model  # the Bert inside a sentence Encoder
        """


# what capture and the other functions here take: a model, or something holding one
Inspectable: TypeAlias = nn.Module | HasModel


# --------------------------------------------------------------------------------------------
# the model's layers
# --------------------------------------------------------------------------------------------
def _unwrap(model: Inspectable) -> nn.Module:
    """The model itself, or the model inside an Encoder (its ``model``)."""
    if isinstance(model, nn.Module):
        return model
    try:
        inner = model.model  # an Encoder
    except AttributeError:
        inner = None
    if isinstance(inner, nn.Module):
        return inner
    raise ValueError(
        f"model must be an attnkit model (torch.nn.Module) or an Encoder, got "
        f"{type(model).__name__}"
    )


def _kernel(layer: MultiHeadAttention) -> AttentionKernel:
    """The layer's kernel, under any recording wrappers."""
    kernel = layer.kernel
    while isinstance(kernel, RecordingKernel):
        kernel = kernel.inner
    return kernel


def _unavailable_reason(layer: MultiHeadAttention) -> str | None:
    kernel = _kernel(layer)
    if isinstance(kernel, (ExactKernel, LSHAttention)) or hasattr(kernel, "dense_mask"):
        return None
    if isinstance(kernel, FeatureMapAttention):
        return (
            f"variant {kernel.name!r} ({kernel.description}) forms no attention weights: it "
            f"multiplies feature maps phi(q) (phi(k)^T v) and never takes a softmax over keys"
        )
    what = kernel.description if isinstance(kernel, VariantAttention) else "not exact attention"
    return (
        f"kernel {kernel.name!r} ({what}) has no softmax weights this module can recompute; "
        f"expected exact attention or a variant with a dense_mask or LSH buckets"
    )


def unavailable_layers(model: Inspectable) -> dict[int, str]:
    """Layers whose attention has no weights to capture (linear, performer), with the reason.

    Args:
        model: an attnkit model, or something holding one as ``.model``.

    Returns:
        Model layer index -> why its weights cannot be captured (empty when all can).

    Raises:
        ValueError: ``model`` is neither.

    Examples:
        >>> unavailable_layers(model)  # {} for exact attention
        {}
    """
    out = {}
    for i, layer in enumerate(attention_layers(_unwrap(model))):
        reason = _unavailable_reason(layer)
        if reason is not None:
            out[i] = reason
    return out


def _index_list(name: str, values, limit: int, what: str) -> list[int] | None:
    if values is None:
        return None
    if isinstance(values, (int, str)) or not isinstance(values, Sequence):
        if isinstance(values, int) and not isinstance(values, bool):
            values = [values]
        else:
            raise ValueError(
                f"{name} must be a list of {what} indices in [0, {limit}) or None, got {values!r}"
            )
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < limit:
            raise ValueError(f"{name} holds {v!r}; expected {what} indices in [0, {limit})")
        if v in out:
            raise ValueError(f"{name} holds {v} twice; expected distinct {what} indices")
        out.append(v)
    if not out:
        raise ValueError(f"{name} is empty; expected at least one {what} index (or None for all)")
    return out


class _Recorder:
    """Turns the kernel calls of one captured layer into its entry of ``maps``."""

    def __init__(self, maps: AttentionMaps, slot: int, heads: list[int] | None):
        self.maps, self.slot, self.heads = maps, slot, heads

    @torch.no_grad()
    def __call__(self, call: AttentionCall) -> None:
        maps, i = self.maps, self.slot
        q, k = call.q.detach(), call.k.detach()
        head_idx = (
            torch.arange(q.shape[1], device=q.device)
            if self.heads is None
            else torch.as_tensor(self.heads, dtype=torch.long, device=q.device)
        )
        kernel = call.kernel
        while isinstance(kernel, RecordingKernel):
            kernel = kernel.inner
        info: dict = {}
        if isinstance(kernel, ExactKernel):
            res = layer_weights(
                q,
                k,
                causal=call.causal,
                window=call.window,
                alibi=call.alibi,
                valid_key_mask=call.valid_key_mask,
                document_ids=call.document_ids,
                mask=call.mask,
                heads=self.heads,
                top_k=maps.top_k,
            )
            source = "exact"
        elif isinstance(kernel, LSHAttention):
            res, info["buckets"] = lsh_weights(
                kernel, q, call.valid_key_mask, call.causal, head_idx, maps.top_k
            )
            source = "lsh"
        elif callable(dense_mask := getattr(kernel, "dense_mask", None)):
            T = q.shape[2]
            pattern = dense_mask(T, call.causal, device=q.device)  # (T, T)
            rep = q.shape[1] // k.shape[1]
            res = layer_weights(
                q,
                k.repeat_interleave(rep, dim=1),
                valid_key_mask=call.valid_key_mask,
                mask=pattern,
                heads=self.heads,
                top_k=maps.top_k,
            )
            source = kernel.name
        else:  # pragma: no cover - refused when the context opens
            raise ValueError(f"kernel {kernel.name!r} has no attention weights to capture")
        maps.sources[i] = source
        maps.info[i] = info
        maps.calls[i] += 1
        if isinstance(res, Tensor):  # dense: no top_k
            maps.weights[i] = res
        else:
            values, indices = res
            maps.topk_values[i], maps.topk_indices[i] = values, indices
            maps.weights[i] = to_sparse(values, indices, k.shape[2])


@contextlib.contextmanager
def capture(
    model: Inspectable,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    top_k: int | None = None,
    tokens: Sequence[str] | None = None,
) -> Iterator[AttentionMaps]:
    """Record the attention weights of ``layers`` (default all) and ``heads`` (default all) of
    ``model`` during the forward passes run inside the context. See the module docstring.

    Args:
        model: an attnkit model, or something holding one as ``.model``.
        layers: model layer indices to capture (None: all).
        heads: query head indices to keep, the same for every layer (None: all).
        top_k: keep only the ``top_k`` largest weights of each query row (None: dense).
        tokens: the token strings, kept in ``maps.tokens`` for display.

    Yields:
        The :class:`AttentionMaps`, filled in as the captured layers run.

    Raises:
        ValueError: a bad layer or head index, a ``top_k`` < 1, ``tokens`` not a list of str,
            a layer with no weights to capture (:func:`unavailable_layers`), or a layer
            already being captured.

    Examples:
        >>> with capture(model, layers=[0, 3], top_k=8) as maps:
        ...     model(input_ids)
    """
    all_layers = attention_layers(_unwrap(model))
    layer_ids = _index_list("layers", layers, len(all_layers), "layer")
    if layer_ids is None:
        layer_ids = list(range(len(all_layers)))
    n_heads = {all_layers[i].n_heads for i in layer_ids}
    head_ids = _index_list("heads", heads, min(n_heads), "head")
    if top_k is not None:
        int_at_least("top_k", top_k, 1, "a positive int (weights kept per query row) or None")
    if tokens is not None:
        if isinstance(tokens, str) or not all(isinstance(t, str) for t in tokens):
            raise ValueError(f"tokens must be a list of str, got {tokens!r:.80}")
        tokens = list(tokens)
    for i in layer_ids:
        reason = _unavailable_reason(all_layers[i])
        if reason is not None:
            raise ValueError(f"layer {i} has no attention weights to capture: {reason}")
        if is_recording(all_layers[i]):
            raise ValueError(
                f"layer {i} is already being captured; nested capture() of the same "
                f"layer is not supported"
            )
    maps = AttentionMaps(
        layers=layer_ids,
        heads=head_ids if head_ids is not None else list(range(min(n_heads))),
        tokens=tokens,
        top_k=top_k,
    )
    recorders = [_Recorder(maps, slot, head_ids) for slot in range(len(layer_ids))]
    with recording([all_layers[i] for i in layer_ids], lambda slot, call: recorders[slot](call)):
        yield maps


# --------------------------------------------------------------------------------------------
# overhead
# --------------------------------------------------------------------------------------------
def capture_overhead(
    model: Inspectable, *args: Any, rounds: int = 7, **kwargs: Any
) -> dict[str, float | int]:
    """Time ``model(*args, **kwargs)`` plain and inside ``capture(model)`` (all layers, all
    heads), interleaved, ``rounds`` times each after one warm-up, under ``torch.no_grad``.

    Args:
        model: an attnkit model, or something holding one as ``.model``.
        *args: positional arguments of the forward pass, e.g. the (batch, seq) token ids.
        rounds: timed rounds of each.
        **kwargs: keyword arguments of the forward pass.

    Returns:
        ``{"plain_s", "capture_s"`` (best round of each), ``"ratio", "rounds"}``.

    Examples:
        >>> capture_overhead(model, input_ids, rounds=3)["ratio"]
    """
    positive_int("rounds", rounds)
    net = _unwrap(model)

    def plain() -> float:
        t0 = time.perf_counter()
        net(*args, **kwargs)
        return time.perf_counter() - t0

    def captured() -> float:
        t0 = time.perf_counter()
        with capture(net):
            net(*args, **kwargs)
        return time.perf_counter() - t0

    with torch.no_grad():
        plain(), captured()  # warm-up
        p, c = [], []
        for _ in range(rounds):
            p.append(plain())
            c.append(captured())
    best_p, best_c = min(p), min(c)
    return {"plain_s": best_p, "capture_s": best_c, "ratio": best_c / best_p, "rounds": rounds}
