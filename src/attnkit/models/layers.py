"""Building blocks shared by every model: norms, MLPs and the transformer block.

A block is ``attention -> MLP`` with residual connections, normalised before each sublayer
("pre", GPT-2 and most modern decoders) or after each residual sum ("post", the original
Transformer and BERT). Attention is always :class:`attnkit.attention.module.MultiHeadAttention`,
so masks, backends, variants and the KV cache work the same in every model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attnkit.attention.kv_cache import KVCache
from attnkit.attention.module import MultiHeadAttention
from attnkit.attention.unpad import TokenIndex

NORM_KINDS = ("layernorm", "rmsnorm")
MLP_KINDS = ("gelu", "gelu_tanh", "relu", "relu2", "silu", "swiglu")


# --------------------------------------------------------------------------------------------
# norms
# --------------------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight, computed in float32 (float64 for float64 input)
    and cast back.

    Args:
        dim: the size of the last dimension, normalised over; ``weight`` is (dim,), ones.
        eps: added to the mean square.

    Examples:
        >>> RMSNorm(64)(torch.randn(2, 16, 64)).shape  # (2, 16, 64)
    """

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., dim) -> (..., dim), normalised over the last dimension, in x's dtype.

        Examples:
            >>> norm(torch.randn(2, 16, 64)).shape  # norm = RMSNorm(64); (2, 16, 64)
        """
        ct = torch.float64 if x.dtype == torch.float64 else torch.float32
        xc = x.to(ct)
        y = xc * torch.rsqrt(xc.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.to(ct)).to(x.dtype)

    def extra_repr(self) -> str:
        """The size and ``eps``, shown in the module's repr.

        Examples:
            >>> RMSNorm(64).extra_repr()
            '64, eps=1e-06'
        """
        return f"{self.weight.shape[0]}, eps={self.eps:g}"


def make_norm(kind: str, dim: int, eps: float, bias: bool = True) -> nn.Module:
    """A norm over the last dimension: ``nn.LayerNorm`` for "layernorm", :class:`RMSNorm` for
    "rmsnorm" (which has no bias, so ``bias`` applies to the LayerNorm only).

    Raises:
        ValueError: ``kind`` is not one of ``NORM_KINDS``.

    Examples:
        >>> make_norm("rmsnorm", 64, 1e-6)
        RMSNorm(64, eps=1e-06)
    """
    if kind == "layernorm":
        return nn.LayerNorm(dim, eps=eps, bias=bias)
    if kind == "rmsnorm":
        return RMSNorm(dim, eps=eps)
    raise ValueError(f"norm must be one of {list(NORM_KINDS)}, got {kind!r}")


# --------------------------------------------------------------------------------------------
# MLPs
# --------------------------------------------------------------------------------------------
class _SquaredReLU(torch.autograd.Function):
    """relu(x)^2 with its gradient 2 relu(x) as one saved tensor: autograd through relu and
    square keeps two tensors and runs four passes over them, about 3x slower on a CPU."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        r = torch.relu(x)
        ctx.save_for_backward(r)
        return r.square()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (r,) = ctx.saved_tensors
        return (r + r).mul_(grad)


def squared_relu(x: torch.Tensor) -> torch.Tensor:
    """relu(x) ** 2 (So et al. 2021), with a fused backward pass.

    x of any shape, e.g. (B, T, d_ff) -> the same shape.

    Examples:
        >>> squared_relu(torch.tensor([-1.0, 2.0]))
        tensor([0., 4.])
    """
    return _SquaredReLU.apply(x)


def gelu(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """``F.gelu``, but in inference on a CPU the erf form runs PyTorch's own kernel rather than
    oneDNN's. oneDNN compiles and keeps one kernel per input shape (up to 1,024 of them, about
    100 MiB): a server or a stream whose batches all differ in size grows by that much before
    it levels off, and pays a compile for each new shape. PyTorch sends only contiguous inputs
    to oneDNN, so the transposed view takes the native kernel (the same values, in the same
    layout). Training shapes repeat, so training keeps oneDNN, which is faster once compiled.

    Args:
        x: any shape, e.g. (B, T, d_ff); the result has the same shape.
        approximate: "none" (erf) or "tanh", as in ``F.gelu``.

    Examples:
        >>> gelu(torch.randn(2, 16, 256), approximate="tanh").shape  # (2, 16, 256)
    """
    if (
        approximate == "none"
        and x.dim() >= 2
        and x.device.type == "cpu"
        and not (torch.is_grad_enabled() and x.requires_grad)
    ):
        return F.gelu(x.mT).mT
    return F.gelu(x, approximate=approximate)


class MLP(nn.Module):
    """C -> d_ff -> activation -> C. ``activation`` is gelu (erf), gelu_tanh, relu, silu (swish,
    Marian's) or relu2 (squared ReLU, So et al. 2021: about as good as GELU for small LMs and much
    cheaper on CPU, where an erf/tanh GELU over (B, T, d_ff) costs as much as a tenth of a small
    model's step).

    Raises:
        ValueError: ``activation`` is none of those.

    Examples:
        >>> MLP(64, 256, activation="relu2")(torch.randn(2, 16, 64)).shape  # (2, 16, 64)
    """

    def __init__(self, d_model: int, d_ff: int, activation: str = "gelu", bias: bool = True):
        super().__init__()
        if activation not in ("gelu", "gelu_tanh", "relu", "relu2", "silu"):
            raise ValueError(
                f"activation must be 'gelu', 'gelu_tanh', 'relu', 'relu2' or 'silu', "
                f"got {activation!r}"
            )
        self.activation = activation
        self.up = nn.Linear(d_model, d_ff, bias=bias)
        self.down = nn.Linear(d_ff, d_model, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C) (any leading dimensions).

        Examples:
            >>> mlp(torch.randn(2, 16, 64)).shape  # mlp = MLP(64, 256); (2, 16, 64)
        """
        h = self.up(x)  # (B, T, d_ff)
        if self.activation == "relu":
            h = F.relu(h)
        elif self.activation == "relu2":
            h = squared_relu(h)
        elif self.activation == "silu":
            h = F.silu(h)
        else:
            h = gelu(h, approximate="tanh" if self.activation == "gelu_tanh" else "none")
        return self.down(h)  # (B, T, C)


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)) (Shazeer 2020); gate and up are one fused linear.

    Examples:
        >>> SwiGLU(64, 172)(torch.randn(2, 16, 64)).shape  # (2, 16, 64)
    """

    def __init__(self, d_model: int, d_ff: int, bias: bool = False):
        super().__init__()
        self.d_ff = d_ff
        self.gate_up = nn.Linear(d_model, 2 * d_ff, bias=bias)  # rows: [gate | up]
        self.down = nn.Linear(d_ff, d_model, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C) (any leading dimensions).

        Examples:
            >>> swiglu(torch.randn(2, 16, 64)).shape  # swiglu = SwiGLU(64, 172); (2, 16, 64)
        """
        gate, up = self.gate_up(x).split(self.d_ff, dim=-1)  # (B, T, d_ff) each
        return self.down(F.silu(gate) * up)  # (B, T, C)


def make_mlp(kind: str, d_model: int, d_ff: int, bias: bool = True) -> nn.Module:
    """The MLP sublayer for ``kind``: :class:`SwiGLU` for "swiglu", else an :class:`MLP` with
    that activation (gelu, gelu_tanh, relu, relu2, silu).

    Raises:
        ValueError: ``kind`` is not one of ``MLP_KINDS``.

    Examples:
        >>> make_mlp("swiglu", 64, 172, bias=False).d_ff
        172
    """
    if kind == "swiglu":
        return SwiGLU(d_model, d_ff, bias=bias)
    if kind in MLP_KINDS:
        return MLP(d_model, d_ff, activation=kind, bias=bias)
    raise ValueError(f"mlp must be one of {list(MLP_KINDS)}, got {kind!r}")


# --------------------------------------------------------------------------------------------
# the block
# --------------------------------------------------------------------------------------------
class TransformerBlock(nn.Module):
    """One attention sublayer and one MLP sublayer with residuals.

    pre-norm:  x = x + attn(norm1(x));  x = x + mlp(norm2(x))
    post-norm: x = norm1(x + attn(x));  x = norm2(x + mlp(x))

    ``attn`` and ``mlp`` are passed in ready-made; ``dropout`` applies to the MLP output
    (the attention layer applies its own dropout to its output).

    Raises:
        ValueError: ``placement`` is not "pre" or "post".

    Examples:
        >>> block = TransformerBlock(MultiHeadAttention(64, 4), MLP(64, 256), nn.LayerNorm(64),
        ...                          nn.LayerNorm(64))
    """

    def __init__(
        self,
        attn: MultiHeadAttention,
        mlp: nn.Module,
        norm1: nn.Module,
        norm2: nn.Module,
        placement: str = "pre",
        dropout: float = 0.0,
    ):
        super().__init__()
        if placement not in ("pre", "post"):
            raise ValueError(f"placement must be 'pre' or 'post', got {placement!r}")
        self.placement = placement
        self.attn = attn
        self.mlp = mlp
        self.norm1 = norm1
        self.norm2 = norm2
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        *,
        valid_key_mask: torch.Tensor | None = None,
        document_ids: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        cache: KVCache | None = None,
        tokens: TokenIndex | None = None,
    ) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C), or (N, C) -> (N, C) with ``tokens`` (the real tokens of a
        padded batch, packed); the keyword arguments go to the attention layer.

        Args:
            x: (B, T, C) hidden states, or (N, C) packed real tokens with ``tokens``.
            valid_key_mask: (B, Tk) bool, True = real token.
            document_ids: (B, T) ids of the packed documents; attention stays inside each.
            positions: (T,) or (B, T) int positions, for RoPE layers only.
            cache: this block's KV cache, for incremental decoding.
            tokens: where the real tokens of a padded batch are, when ``x`` is packed.

        Examples:
            >>> block(torch.randn(2, 16, 64)).shape  # (2, 16, 64)
        """

        def attend(h: torch.Tensor) -> torch.Tensor:
            return self.attn(
                h,
                valid_key_mask=valid_key_mask,
                document_ids=document_ids,
                positions=positions,
                cache=cache,
                tokens=tokens,
            )

        if self.placement == "pre":
            x = x + attend(self.norm1(x))  # (B, T, C)
            x = x + self.dropout(self.mlp(self.norm2(x)))
        else:
            x = self.norm1(x + attend(x))  # (B, T, C)
            x = self.norm2(x + self.dropout(self.mlp(x)))
        return x
