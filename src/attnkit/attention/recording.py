"""Recording what attention kernels receive: the one wrapper used by capture and surgery.

    >>> with recording(attention_layers(model), lambda i, call: store.append((i, call))):
    ...     model(input_ids)

:class:`RecordingKernel` wraps a layer's kernel: each call hands an :class:`AttentionCall` (q, k,
v after positions and the KV cache, the masks and the layer's settings) to a callback, then runs
the wrapped kernel, whose output the layer uses unchanged. :func:`recording` installs one per
layer through ``MultiHeadAttention.set_kernel`` and puts the old kernels back afterwards
(also after an error). :func:`attention_layers` lists a model's attention layers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from attnkit.attention.kernel import AttentionKernel
from attnkit.attention.module import MultiHeadAttention

__all__ = [
    "AttentionCall",
    "RecordingKernel",
    "attention_layers",
    "is_recording",
    "recording",
]


@dataclass(frozen=True)
class AttentionCall:
    """One kernel call: q (B, Hq, Tq, D) and k, v (B, Hkv, Tk, D) as the kernel received them
    (after RoPE, with the KV cache prepended; not detached), the layer's settings and masks
    (``valid_key_mask`` (B, Tk) bool, True = real token), and the kernel that ran.

    Examples:
        >>> calls = []
        >>> with recording(attention_layers(model), lambda i, call: calls.append(call)):
        ...     model(input_ids)
        >>> calls[0].q.shape  # (B, Hq, Tq, D) of layer 0
    """

    q: Tensor
    k: Tensor
    v: Tensor
    causal: bool
    window: int | None
    alibi: bool
    valid_key_mask: Tensor | None
    mask: Tensor | None
    document_ids: Tensor | None
    kernel: AttentionKernel


class RecordingKernel(AttentionKernel):
    """Wraps ``inner``: every call goes to ``on_call(AttentionCall)`` first, then to ``inner``,
    whose result is returned. What ``inner`` supports is what this kernel supports.

    Args:
        inner: the kernel that computes the attention.
        on_call: called with each call's :class:`AttentionCall` before ``inner`` runs.

    Raises:
        TypeError: if ``inner`` is not an ``AttentionKernel``.

    Examples:
        >>> calls = []
        >>> layer.set_kernel(RecordingKernel(layer.kernel, calls.append))
    """

    def __init__(self, inner: AttentionKernel, on_call: Callable[[AttentionCall], None]):
        super().__init__()
        if not isinstance(inner, AttentionKernel):
            raise TypeError(f"inner must be an AttentionKernel, got {type(inner).__name__}")
        self.inner = inner
        self.on_call = on_call

    @property
    def name(self) -> str:  # type: ignore[override]
        """The wrapped kernel's name.

        Examples:
            >>> RecordingKernel(ExactKernel(), print).name  # 'exact'
        """
        return self.inner.name

    def check_layer(self, *, window: int | None, alibi: bool) -> None:
        """Raise ValueError if the wrapped kernel cannot serve a layer with these settings.

        Args:
            window: the layer's sliding window, or None.
            alibi: whether the layer uses ALiBi.

        Examples:
            >>> RecordingKernel(ExactKernel(), print).check_layer(window=512, alibi=False)
        """
        self.inner.check_layer(window=window, alibi=alibi)

    def check_call(
        self,
        *,
        cache: bool = False,
        mask: bool = False,
        document_ids: bool = False,
        return_weights: bool = False,
    ) -> None:
        """Raise ValueError if the wrapped kernel cannot run a call that uses these options.

        Args:
            cache: the call uses a KV cache.
            mask: the call passes a user mask.
            document_ids: the call passes packed-document ids.
            return_weights: the call asks for the attention weights.

        Examples:
            >>> RecordingKernel(ExactKernel(), print).check_call(cache=True)
        """
        self.inner.check_call(
            cache=cache, mask=mask, document_ids=document_ids, return_weights=return_weights
        )

    def forward(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        *,
        causal: bool = False,
        window: int | None = None,
        alibi: bool = False,
        valid_key_mask: Tensor | None = None,
        mask: Tensor | None = None,
        document_ids: Tensor | None = None,
        dropout_p: float = 0.0,
        return_weights: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Hand the call to ``on_call`` as an :class:`AttentionCall`, then return ``inner``'s
        result for the same arguments.

        Args:
            q: queries, (B, Hq, Tq, D).
            k: keys, (B, Hkv, Tk, D).
            v: values, (B, Hkv, Tk, Dv).
            causal: query at position p sees keys 0..p.
            window: sliding window, or None.
            alibi: add the ALiBi bias.
            valid_key_mask: bool (B, Tk), True = real token; or None.
            mask: bool, broadcastable to (B, Hq, Tq, Tk), True = may attend; or None.
            document_ids: int (B, Tk) packed-document ids, or None.
            dropout_p: dropout on the attention weights (``on_call`` does not see it).
            return_weights: also return the (B, Hq, Tq, Tk) weights.

        Returns:
            ``inner``'s output, (B, Hq, Tq, Dv), or (out, weights) with ``return_weights``.

        Examples:
            >>> out = RecordingKernel(ExactKernel(), calls.append)(q, k, v, causal=True)
        """
        self.on_call(
            AttentionCall(
                q, k, v, causal, window, alibi, valid_key_mask, mask, document_ids, self.inner
            )
        )
        return self.inner(
            q,
            k,
            v,
            causal=causal,
            window=window,
            alibi=alibi,
            valid_key_mask=valid_key_mask,
            mask=mask,
            document_ids=document_ids,
            dropout_p=dropout_p,
            return_weights=return_weights,
        )


def attention_layers(model: nn.Module) -> list[MultiHeadAttention]:
    """The model's attention layers in module order; index i is layer i (block i's attention
    in GPT and BERT).

    Args:
        model: an attnkit model, or any module holding ``MultiHeadAttention`` layers.

    Raises:
        ValueError: if ``model`` is not an ``nn.Module`` or holds no ``MultiHeadAttention``.

    Examples:
        >>> len(attention_layers(build_model("tiny", n_layer=2)))  # 2
    """
    if not isinstance(model, nn.Module):
        raise ValueError(
            f"model must be an attnkit model (torch.nn.Module), got {type(model).__name__}"
        )
    layers = [m for m in model.modules() if isinstance(m, MultiHeadAttention)]
    if not layers:
        raise ValueError(
            f"{type(model).__name__} has no MultiHeadAttention layer; expected an "
            f"attnkit model (GPT, Bert or a module built from MultiHeadAttention)"
        )
    return layers


def is_recording(layer: MultiHeadAttention) -> bool:
    """Whether ``layer``'s kernel is being recorded (is a :class:`RecordingKernel`).

    Args:
        layer: an attention layer.

    Examples:
        >>> is_recording(attention_layers(model)[0])  # False outside ``recording``
    """
    return isinstance(layer.kernel, RecordingKernel)


@contextlib.contextmanager
def recording(
    layers: Sequence[MultiHeadAttention], on_call: Callable[[int, AttentionCall], None]
) -> Iterator[None]:
    """Record the kernel calls of ``layers`` for the ``with`` block: ``on_call(i, call)`` for
    a call of ``layers[i]``. The layers' kernels are restored afterwards, also after an error.

    Args:
        layers: the layers to record, e.g. :func:`attention_layers` of a model.
        on_call: called with the layer's index in ``layers`` and the :class:`AttentionCall`.

    Raises:
        ValueError: if a layer is already being recorded (no nesting on one layer).

    Examples:
        >>> with recording(attention_layers(model), lambda i, call: print(i, call.q.shape)):
        ...     model(input_ids)
    """
    installed: list[tuple[MultiHeadAttention, AttentionKernel]] = []

    def callback(i: int) -> Callable[[AttentionCall], None]:
        return lambda call: on_call(i, call)

    try:
        for i, layer in enumerate(layers):
            if is_recording(layer):
                raise ValueError(
                    f"layer {i} is already being recorded; nested recording of the same layer "
                    f"is not supported"
                )
            previous = layer.set_kernel(RecordingKernel(layer.kernel, callback(i)))
            installed.append((layer, previous))
        yield
    finally:
        for layer, previous in reversed(installed):
            layer.set_kernel(previous)
