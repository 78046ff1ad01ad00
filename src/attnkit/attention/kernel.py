"""The attention kernel: the score -> softmax -> values step of a `MultiHeadAttention` layer.

A layer holds exactly one kernel object (``layer.kernel``), chosen when it is built and replaced
only through ``layer.set_kernel``. Every kernel is an :class:`AttentionKernel`:

* :class:`ExactKernel` is exact softmax attention through
  :func:`attnkit.attention.functional.attention`, which picks a backend (math, SDPA,
  FlexAttention, windowed);
* each approximate variant of :mod:`attnkit.attention.variants` is a kernel too;
* :class:`attnkit.attention.recording.RecordingKernel` wraps another kernel to hand its inputs
  to a recorder (attention-map capture, q/k/v recording).

The call, for q (B, Hq, Tq, D) and k, v (B, Hkv, Tk, D) after positions and the KV cache
(queries are the last Tq of the Tk positions)::

    kernel(q, k, v, causal=, window=, alibi=, valid_key_mask=, mask=, document_ids=,
           dropout_p=, return_weights=)  -> (B, Hq, Tq, Dv), or (out, weights) with return_weights

:class:`ExactKernel` also takes ``bias=`` (an additive float score bias broadcastable to
(B, Hq, Tq, Tk), e.g. T5's relative position bias; not with ``alibi``) and holds a fixed score
``scale`` (None: 1/sqrt(D); T5 does not scale). A kernel that computes a bias of its own (the
encoder-decoder's ``BiasedKernel``) makes it and calls an :class:`ExactKernel` with it, rather
than repeating the call to ``attention``.

A kernel says what it cannot do: :meth:`AttentionKernel.check_layer` (once, when it is put into a
layer: a sliding window or ALiBi) and :meth:`AttentionKernel.check_call` (before a forward pass
touches the KV cache: a cache, masks, weights) raise ValueError naming the option.
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor, nn

from attnkit.attention.functional import BACKENDS, attention

__all__ = ["AttentionKernel", "ExactKernel"]


class AttentionKernel(nn.Module):
    """Base class of every attention kernel (see the module docstring for the call).

    Examples:
        >>> layer.set_kernel(MyKernel())  # a subclass that implements forward(q, k, v, ...)
    """

    name: ClassVar[str] = "kernel"

    def check_layer(self, *, window: int | None, alibi: bool) -> None:
        """Raise ValueError if this kernel cannot serve a layer with these settings.

        Examples:
            >>> ExactKernel().check_layer(window=512, alibi=False)  # None: it can
        """

    def check_call(
        self,
        *,
        cache: bool = False,
        mask: bool = False,
        document_ids: bool = False,
        return_weights: bool = False,
    ) -> None:
        """Raise ValueError if this kernel cannot run a call that uses these options.

        Examples:
            >>> ExactKernel().check_call(cache=True, return_weights=True)
        """

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
        """Attention of q (B, Hq, Tq, D) over k, v (B, Hkv, Tk, D): out (B, Hq, Tq, Dv), or (out, weights (B, Hq, Tq, Tk)) with ``return_weights``.

        Examples:
            >>> out = kernel(q, k, v, causal=True)  # q (B, Hq, Tq, D), k, v (B, Hkv, Tk, D) -> (B, Hq, Tq, D)
        """
        raise NotImplementedError


class ExactKernel(AttentionKernel):
    """Exact softmax attention through :func:`attnkit.attention.functional.attention`.

    ``backend`` is passed on (``"auto"`` lets the planner choose; see
    :func:`attnkit.attention.functional.explain`); ``scale`` multiplies the scores (None:
    1/sqrt(D)). Supports everything a layer can ask for: causal, sliding windows, ALiBi, key
    padding, packed documents, user masks, dropout, the KV cache and returning the weights;
    and an additive score ``bias`` tensor given with the call.

    Examples:
        >>> MultiHeadAttention(64, 4, kernel=ExactKernel("sdpa"))
    """

    name: ClassVar[str] = "exact"

    def __init__(self, backend: str = "auto", scale: float | None = None):
        super().__init__()
        if not isinstance(backend, str):
            raise TypeError(f"backend must be a str, got {backend!r}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
        if scale is not None and (
            isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0
        ):
            raise ValueError(f"scale must be a float > 0 or None (1/sqrt(D)), got {scale!r}")
        self.backend = backend
        self.scale = None if scale is None else float(scale)

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
        bias: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """As the protocol (module docstring); ``bias``: an additive float score bias
        broadcastable to (B, Hq, Tq, Tk), not with ``alibi``.

        Examples:
            >>> out = ExactKernel("math")(q, k, v, causal=True)  # q, k, v (B, H, T, D)
        """
        if bias is not None and alibi:
            raise ValueError(
                "the exact kernel takes one score bias: alibi=True or a bias tensor, not both"
            )
        # a single query is the last position (decoding), so causal masks nothing there
        return attention(
            q,
            k,
            v,
            causal=causal and q.shape[2] > 1,
            mask=mask,
            valid_key_mask=valid_key_mask,
            window=window,
            bias="alibi" if alibi else bias,
            document_ids=document_ids,
            dropout_p=dropout_p,
            scale=self.scale,
            backend=self.backend,
            return_weights=return_weights,
        )

    def extra_repr(self) -> str:
        """The backend (and scale), shown inside ``repr(kernel)``.

        Examples:
            >>> print(ExactKernel("sdpa"))
        """
        extra = "" if self.scale is None else f", scale={self.scale:g}"
        return f"backend={self.backend!r}{extra}"
