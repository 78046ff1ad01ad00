"""The parts of an encoder-decoder that GPT and BERT do not have: T5's relative position bias,
the kernel that adds it, cross-attention, the decoder block and the stacks' embeddings.

* :class:`RelativePositionBias`: T5's learned score bias by bucketed key-minus-query distance
  (:func:`attnkit.positional.relative_position_bucket`), one table per stack shared by all
  its layers.
* :class:`BiasedKernel`: exact attention with that bias (an
  :class:`~attnkit.attention.kernel.ExactKernel` given it as ``bias``), with T5's unscaled
  scores. It is an attention kernel, so a
  :class:`~attnkit.attention.module.MultiHeadAttention` layer holds it like any other: the
  projections, the causal mask and the KV cache stay the layer's.
* :class:`CrossAttention`: queries from the decoder, keys and values from the encoder's output
  (the "memory"), projected once per source by :meth:`CrossAttention.memory` and reused at every
  decoding step; the score -> softmax -> values step is a kernel too.
* :class:`DecoderBlock`: self-attention, cross-attention and MLP with residuals, pre- or
  post-norm like :class:`~attnkit.models.layers.TransformerBlock` (the encoder's block).
* :class:`StackEmbeddings`: tokens (optionally times sqrt(d_model)) + absolute positions, then
  a norm and dropout.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, cast

import torch
from torch import Tensor, nn

from attnkit.attention.kernel import AttentionKernel, ExactKernel
from attnkit.attention.kv_cache import KVCache
from attnkit.attention.module import MultiHeadAttention
from attnkit.models.encdec_config import EncDecConfig
from attnkit.models.layers import make_norm
from attnkit.positional import (
    LearnedPositionalEmbedding,
    relative_position_bucket,
    sinusoidal_table,
)

__all__ = [
    "BiasedKernel",
    "CrossAttention",
    "DecoderBlock",
    "RelativePositionBias",
    "StackEmbeddings",
    "half_sinusoidal_table",
    "relative_position_bucket",
]


# --------------------------------------------------------------------------------------------
# T5 relative positions (the buckets: attnkit.positional.relative_position_bucket)
# --------------------------------------------------------------------------------------------
class RelativePositionBias(nn.Module):
    """T5's relative position bias: ``weight`` (num_buckets, n_heads), one score offset per
    bucket and head; ``forward(q_len, k_len)`` -> (1, H, Tq, Tk) for queries that are the last
    Tq of Tk positions (Tq < Tk with a KV cache).

    Args:
        n_heads: heads H, one offset each per bucket.
        num_buckets: distance buckets (half of them per direction when ``bidirectional``).
        max_distance: the distance at and beyond which all distances share the last bucket.
        bidirectional: keys on both sides of the query (the encoder); False for the decoder.

    Examples:
        >>> RelativePositionBias(4, 32, 128, bidirectional=True)(8, 8).shape  # (1, 4, 8, 8)
    """

    def __init__(self, n_heads: int, num_buckets: int, max_distance: int, bidirectional: bool):
        super().__init__()
        self.n_heads = n_heads
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.bidirectional = bidirectional
        self.weight = nn.Parameter(torch.zeros(num_buckets, n_heads))

    def forward(self, q_len: int, k_len: int) -> Tensor:
        """The bias (1, H, q_len, k_len) for queries at the last ``q_len`` of ``k_len`` positions.

        Examples:
            >>> rel(1, 10).shape  # rel = RelativePositionBias(4, 32, 128, False); (1, 4, 1, 10)
        """
        device = self.weight.device
        keys = torch.arange(k_len, device=device)  # (Tk,)
        queries = keys[k_len - q_len :]  # (Tq,) the last Tq positions
        rel = keys[None, :] - queries[:, None]  # (Tq, Tk) key minus query
        idx = relative_position_bucket(
            rel, self.bidirectional, self.num_buckets, self.max_distance
        )  # (Tq, Tk)
        return self.weight[idx].permute(2, 0, 1).unsqueeze(0)  # (1, H, Tq, Tk)

    def extra_repr(self) -> str:
        """The sizes and the direction, shown in the module's repr.

        Examples:
            >>> RelativePositionBias(4, 32, 128, False).extra_repr()
            'n_heads=4, num_buckets=32, max_distance=128, bidirectional=False'
        """
        return (
            f"n_heads={self.n_heads}, num_buckets={self.num_buckets}, "
            f"max_distance={self.max_distance}, bidirectional={self.bidirectional}"
        )


class BiasedKernel(AttentionKernel):
    """Exact attention with a relative position bias: the bias of the queries' and keys'
    positions, made at each call from ``relative`` (the stack's :class:`RelativePositionBias`),
    is handed to an :class:`~attnkit.attention.kernel.ExactKernel` (``self.exact``) as its
    ``bias``; ``scale`` is that kernel's score scale (None: 1/sqrt(D); T5: 1.0).

    The table is held as a reference, not as a submodule (it belongs to the stack and is
    shared by every layer of it, so it is saved once). Supports what ``ExactKernel`` supports
    except ALiBi (a second bias).

    Examples:
        >>> kernel = BiasedKernel("math", RelativePositionBias(4, 32, 128, True), scale=1.0)
    """

    name: ClassVar[str] = "exact-biased"

    def __init__(
        self,
        backend: str = "auto",
        relative: RelativePositionBias | None = None,
        scale: float | None = None,
    ):
        super().__init__()
        self.exact = ExactKernel(backend, scale)  # checked there
        self._relative = () if relative is None else (relative,)

    @property
    def backend(self) -> str:
        """The backend the inner exact kernel passes to ``attention``.

        Examples:
            >>> BiasedKernel("sdpa").backend
            'sdpa'
        """
        return self.exact.backend

    @property
    def scale(self) -> float | None:
        """The score scale of the inner exact kernel (None: 1/sqrt(D)).

        Examples:
            >>> BiasedKernel(scale=1.0).scale
            1.0
        """
        return self.exact.scale

    def check_layer(self, *, window: int | None, alibi: bool) -> None:
        """Raise ValueError for a layer with ``alibi`` (a second score bias); any window is fine.

        Examples:
            >>> BiasedKernel().check_layer(window=None, alibi=False)  # None: it can
        """
        if alibi:
            raise ValueError(
                "kernel 'exact-biased' adds its own score bias; expected a layer without "
                "positional='alibi'"
            )

    def forward(
        self, q: Tensor, k: Tensor, v: Tensor, **options: Any
    ) -> Tensor | tuple[Tensor, Tensor]:
        """The kernel call (:mod:`attnkit.attention.kernel`), the relative bias added.

        q (B, H, Tq, D), k and v (B, H, Tk, D) -> out (B, H, Tq, D), or (out, weights) with
        ``return_weights``; ``options`` are the kernel protocol's keyword arguments.

        Examples:
            >>> out = kernel(q, k, v, causal=True)  # q, k, v (B, H, T, D) -> (B, H, T, D)
        """
        bias = None
        if self._relative:
            bias = self._relative[0](q.shape[2], k.shape[2]).to(q.dtype)  # (1, H, Tq, Tk)
        return cast(Tensor | tuple[Tensor, Tensor], self.exact(q, k, v, bias=bias, **options))

    def extra_repr(self) -> str:
        """The backend, whether a relative bias is held, and the scale.

        Examples:
            >>> BiasedKernel(scale=1.0).extra_repr()
            "backend='auto', relative=False, scale=1.0"
        """
        return f"backend={self.backend!r}, relative={bool(self._relative)}, scale={self.scale}"


def make_kernel(cfg: EncDecConfig, relative: RelativePositionBias | None) -> AttentionKernel:
    """The exact kernel of a layer: plain, or biased/scaled as ``cfg`` asks."""
    scale = None if cfg.scale_attention else 1.0
    if relative is None:
        return ExactKernel(cfg.backend, scale)
    return BiasedKernel(cfg.backend, relative, scale)


# --------------------------------------------------------------------------------------------
# cross-attention and the decoder block
# --------------------------------------------------------------------------------------------
class CrossAttention(nn.Module):
    """Attention from the decoder's tokens (queries) to the encoder's output (keys, values).

    ``q_proj`` (H*D, C); ``kv_proj`` (2*H*D, C) with rows ``[k heads | v heads]``; ``out_proj``
    (C, H*D). :meth:`memory` projects the encoder output once into (k, v); :meth:`forward`
    attends to them through ``self.kernel``.

    Examples:
        >>> xattn = CrossAttention(64, 4, 16, ExactKernel())
        >>> xattn(torch.randn(2, 8, 64), *xattn.memory(torch.randn(2, 12, 64))).shape  # (2, 8, 64)
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        head_dim: int,
        kernel: AttentionKernel,
        dropout: float = 0.0,
        bias: bool = True,
    ):
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = head_dim
        self.dropout = float(dropout)
        inner = n_heads * head_dim
        self.q_proj = nn.Linear(d_model, inner, bias=bias)
        self.kv_proj = nn.Linear(d_model, 2 * inner, bias=bias)
        self.out_proj = nn.Linear(inner, d_model, bias=bias)
        self.out_dropout = nn.Dropout(self.dropout)
        self.kernel = kernel

    def memory(self, states: Tensor) -> tuple[Tensor, Tensor]:
        """Encoder output (B, S, C) -> keys and values (B, H, S, D) each.

        Examples:
            >>> k, v = xattn.memory(torch.randn(2, 12, 64))  # (2, 4, 12, 16) each
        """
        B, S, _ = states.shape
        H, D = self.n_heads, self.head_dim
        k, v = self.kv_proj(states).split(H * D, dim=-1)  # (B, S, H * D) each
        k = k.view(B, S, H, D).transpose(1, 2)  # (B, H, S, D)
        v = v.view(B, S, H, D).transpose(1, 2)  # (B, H, S, D)
        return k, v

    def forward(
        self, x: Tensor, k: Tensor, v: Tensor, valid_key_mask: Tensor | None = None
    ) -> Tensor:
        """x (B, T, C), k and v (Bs, H, S, D) from :meth:`memory`, valid_key_mask (Bs, S) bool
        (True = real source token) -> (B, T, C).

        B may be a multiple g of Bs (beam search: g beams per source): rows ``b * g .. b * g +
        g - 1`` of x read source ``b``, and their g * T queries attend to its keys together,
        so the memory is held and read once per source, not once per beam.

        Examples:
            >>> xattn(torch.randn(8, 1, 64), k, v).shape  # 4 beams of 2 sources; (8, 1, 64)
        """
        B, T, _ = x.shape
        H, D = self.n_heads, self.head_dim
        Bs = k.shape[0]
        g = B // Bs  # rows per source
        q = self.q_proj(x).view(Bs, g * T, H, D).transpose(1, 2)  # (Bs, H, g * T, D)
        if k.dtype != q.dtype:
            q = q.to(k.dtype)
        y = cast(
            Tensor,
            self.kernel(
                q,
                k,
                v,
                valid_key_mask=valid_key_mask,
                dropout_p=self.dropout if self.training else 0.0,
            ),
        )  # (Bs, H, g * T, D)
        y = y.transpose(1, 2).reshape(B, T, H * D).to(x.dtype)  # (B, T, H * D)
        return self.out_dropout(self.out_proj(y))  # (B, T, C)

    def extra_repr(self) -> str:
        """The heads and their width, shown in the module's repr.

        Examples:
            >>> CrossAttention(64, 4, 16, ExactKernel()).extra_repr()
            'n_heads=4, head_dim=16'
        """
        return f"n_heads={self.n_heads}, head_dim={self.head_dim}"


class DecoderBlock(nn.Module):
    """Causal self-attention, cross-attention to the encoder's output and an MLP, each with a
    residual.

    pre-norm:  x += self_attn(norm1(x)); x += cross_attn(norm2(x)); x += mlp(norm3(x))
    post-norm: x = norm1(x + self_attn(x)); x = norm2(x + cross_attn(x)); x = norm3(x + mlp(x))

    ``dropout`` applies to the MLP output. ``placement`` other than "pre" or "post" is a
    ValueError.

    Examples:
        >>> block = model.decoder.blocks[0]  # model = EncoderDecoder(get_encdec_preset("tiny-t5"))
    """

    def __init__(
        self,
        self_attn: MultiHeadAttention,
        cross_attn: CrossAttention,
        mlp: nn.Module,
        norms: tuple[nn.Module, nn.Module, nn.Module],
        placement: str = "pre",
        dropout: float = 0.0,
    ):
        super().__init__()
        if placement not in ("pre", "post"):
            raise ValueError(f"placement must be 'pre' or 'post', got {placement!r}")
        self.placement = placement
        self.self_attn = self_attn
        self.cross_attn = cross_attn
        self.mlp = mlp
        self.norm1, self.norm2, self.norm3 = norms
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: Tensor,
        memory: tuple[Tensor, Tensor],
        *,
        source_valid_mask: Tensor | None = None,
        valid_key_mask: Tensor | None = None,
        cache: KVCache | None = None,
    ) -> Tensor:
        """x (B, T, C); memory: this block's (k, v) of the encoder output; source_valid_mask (B, S)
        True = real source token; valid_key_mask (B, Tk) over the decoder's own tokens (cached
        ones included); cache: this block's self-attention KV cache.

        Returns (B, T, C).

        Examples:
            >>> block(torch.randn(2, 8, 64), block.cross_attn.memory(enc_out)).shape  # (2, 8, 64)
        """
        k, v = memory

        def attend(h: Tensor) -> Tensor:
            return cast(Tensor, self.self_attn(h, valid_key_mask=valid_key_mask, cache=cache))

        if self.placement == "pre":
            x = x + attend(self.norm1(x))  # (B, T, C)
            x = x + self.cross_attn(self.norm2(x), k, v, source_valid_mask)
            x = x + self.dropout(self.mlp(self.norm3(x)))
        else:
            x = self.norm1(x + attend(x))  # (B, T, C)
            x = self.norm2(x + self.cross_attn(x, k, v, source_valid_mask))
            x = self.norm3(x + self.dropout(self.mlp(x)))
        return x


# --------------------------------------------------------------------------------------------
# embeddings
# --------------------------------------------------------------------------------------------
def half_sinusoidal_table(n_positions: int, dim: int) -> Tensor:
    """The sinusoidal table with the sines in the first ceil(dim/2) channels and the cosines
    after them (Marian, tensor2tensor), (n_positions, dim) float32: the columns of
    :func:`attnkit.positional.sinusoidal_table` (sin, cos interleaved) regrouped.

    Examples:
        >>> half_sinusoidal_table(256, 64).shape  # (256, 64)
    """
    table = sinusoidal_table(n_positions, dim, dtype=torch.float64)  # (P, dim)
    return torch.cat((table[:, 0::2], table[:, 1::2]), dim=1).float()  # (P, dim)


class StackEmbeddings(nn.Module):
    """ids (B, T) -> (B, T, C): token vectors (times sqrt(C) with ``scale_embedding``) +
    absolute positions (learned, or the fixed sinusoidal table), then a norm (``embed_norm``)
    and dropout. Relative positions act inside attention instead.

    Examples:
        >>> StackEmbeddings(get_encdec_preset("tiny-marian"))(torch.randint(0, 512, (2, 8))).shape
    """

    pos_table: Tensor | None

    def __init__(self, cfg: EncDecConfig):
        super().__init__()
        C = cfg.d_model
        self.tok = nn.Embedding(cfg.vocab_size, C)
        self.scale = math.sqrt(C) if cfg.scale_embedding else 1.0
        self.offset = cfg.position_offset
        self.pos: LearnedPositionalEmbedding | None = None
        if cfg.positional == "learned":
            self.pos = LearnedPositionalEmbedding(cfg.max_seq_len + cfg.position_offset, C)
        if cfg.positional == "sinusoidal":  # a function of the shape: not saved
            self.register_buffer(
                "pos_table", half_sinusoidal_table(cfg.max_seq_len, C), persistent=False
            )
        else:
            self.pos_table = None
        self.norm = make_norm(cfg.norm, C, cfg.norm_eps, bias=cfg.bias) if cfg.embed_norm else None
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, ids: Tensor, past: int = 0) -> Tensor:
        """ids (B, T) at positions past..past+T-1 -> (B, T, C).

        Examples:
            >>> embed(torch.randint(0, 512, (2, 1)), past=5).shape  # the 6th token; (2, 1, 64)
        """
        x = self.tok(ids)  # (B, T, C)
        if self.scale != 1.0:
            x = x * self.scale
        T = ids.shape[1]
        if self.pos is not None:
            x = x + self.pos(T, offset=past + self.offset)  # (T, C) broadcast
        elif self.pos_table is not None:
            x = x + self.pos_table[past : past + T].to(x.dtype)  # (T, C) broadcast
        if self.norm is not None:
            x = self.norm(x)
        return self.drop(x)
