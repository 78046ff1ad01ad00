"""Positional encodings: sinusoidal, learned absolute, RoPE, ALiBi and T5's relative buckets.

Absolute encodings (sinusoidal, learned) produce a (T, C) table that a model adds to its token
embeddings. Rotary embeddings (RoPE) rotate queries and keys inside attention, so the dot
product of a query at position m and a key at position n depends only on m - n. ALiBi adds a
per-head linear distance penalty to the attention scores; here we only provide the slopes, the
bias itself is built by the attention function (``bias="alibi"``). T5's relative positions
are a learned score bias per bucket of key-minus-query distance: :func:`relative_position_bucket`
is the bucketing, the table is :class:`attnkit.models.encdec_layers.RelativePositionBias`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from attnkit._util.checks import non_negative_int, positive_float, positive_int

ROPE_LAYOUTS = ("half", "interleaved")


# --------------------------------------------------------------------------------------------
# ALiBi
# --------------------------------------------------------------------------------------------
def alibi_slopes(n_heads: int) -> torch.Tensor:
    """Per-head ALiBi slopes (Press et al. 2022), float32 tensor of shape (n_heads,).

    For a power of two n the slopes are the geometric sequence 2^(-8/n), 2^(-16/n), ...
    For other head counts the slopes of the nearest lower power of two p are followed by every
    other slope of the sequence for 2p, as in the reference implementation.

    Examples:
        >>> alibi_slopes(8)  # (8,): 1/2, 1/4, ..., 1/256
    """
    positive_int("n_heads", n_heads)

    def geometric(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    p = 2 ** int(math.floor(math.log2(n_heads)))
    slopes = geometric(p)
    if p < n_heads:
        slopes += geometric(2 * p)[0::2][: n_heads - p]
    return torch.tensor(slopes, dtype=torch.float32)


# --------------------------------------------------------------------------------------------
# Sinusoidal and learned absolute embeddings
# --------------------------------------------------------------------------------------------
def sinusoidal_table(
    n_positions: int, dim: int, base: float = 10000.0, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Fixed sinusoidal table of Vaswani et al. (2017), shape (n_positions, dim).

    ``table[p, 2i] = sin(p / base^(2i/dim))`` and ``table[p, 2i+1] = cos(p / base^(2i/dim))``.
    An odd ``dim`` has one more sine column than cosine columns. Computed in float64 and cast.

    Examples:
        >>> sinusoidal_table(512, 64).shape  # (512, 64)
    """
    positive_int("n_positions", n_positions)
    positive_int("dim", dim)
    base = positive_float("base", base)
    pos = torch.arange(n_positions, dtype=torch.float64)  # (P,)
    even = torch.arange(0, dim, 2, dtype=torch.float64)  # (ceil(dim/2),) = 2i
    inv_freq = base ** (-even / dim)  # (ceil(dim/2),)
    angles = pos[:, None] * inv_freq[None, :]  # (P, ceil(dim/2))
    table = torch.empty(n_positions, dim, dtype=torch.float64)  # (P, dim)
    table[:, 0::2] = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles[:, : dim // 2])
    return table.to(dtype)


def _lookup_range(name: str, max_len: int, seq_len, offset) -> tuple[int, int]:
    positive_int("seq_len", seq_len)
    non_negative_int("offset", offset)
    end = offset + seq_len
    if end > max_len:
        raise ValueError(
            f"{name}: position {end - 1} (offset={offset} + seq_len={seq_len} - 1) is out of "
            f"range; max_len={max_len} allows positions 0..{max_len - 1}"
        )
    return offset, end


def _is_integer(t: torch.Tensor) -> bool:
    """An integer dtype (not bool, float or complex)."""
    return not (t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool)


def _check_positions_tensor(name: str, positions: torch.Tensor, max_len: int) -> None:
    if not _is_integer(positions):
        raise TypeError(f"{name}: positions must be an integer tensor, got dtype {positions.dtype}")
    if positions.numel():
        lo, hi = int(positions.min()), int(positions.max())
        if lo < 0 or hi >= max_len:
            bad = lo if lo < 0 else hi
            raise ValueError(
                f"{name}: position {bad} is out of range; max_len={max_len} "
                f"allows positions 0..{max_len - 1}"
            )


class SinusoidalPositionalEmbedding(nn.Module):
    """Fixed sinusoidal embeddings, a non-trainable (max_len, dim) table held as a buffer.

    ``forward(seq_len, offset=0)`` returns rows offset..offset+seq_len-1, shape (T, dim);
    ``forward(positions)`` with an integer tensor of any shape (...,) returns (..., dim).

    Examples:
        >>> SinusoidalPositionalEmbedding(512, 64)(10).shape  # (10, 64)
    """

    table: torch.Tensor  # (max_len, dim) buffer

    def __init__(self, max_len: int, dim: int, base: float = 10000.0):
        super().__init__()
        self.max_len = positive_int("max_len", max_len)
        self.dim = positive_int("dim", dim)
        self.base = positive_float("base", base)
        # Not persistent: the table is a pure function of (max_len, dim, base).
        self.register_buffer("table", sinusoidal_table(max_len, dim, base), persistent=False)

    def forward(self, positions_or_seq_len, offset: int = 0) -> torch.Tensor:
        """The table rows for ``seq_len`` positions from ``offset`` (T, dim), or for an integer tensor of positions (...,) -> (..., dim).

        Examples:
            >>> pe(10, offset=5)  # rows 5..14, (10, dim)
        """
        if isinstance(positions_or_seq_len, torch.Tensor):
            if offset != 0:
                raise ValueError(f"offset must be 0 when positions are given, got {offset!r}")
            _check_positions_tensor(type(self).__name__, positions_or_seq_len, self.max_len)
            return self.table[positions_or_seq_len]  # (..., dim)
        start, end = _lookup_range(type(self).__name__, self.max_len, positions_or_seq_len, offset)
        return self.table[start:end]  # (T, dim)

    def extra_repr(self) -> str:
        """The table's size and base, shown inside ``repr(module)``.

        Examples:
            >>> print(SinusoidalPositionalEmbedding(512, 64))
        """
        return f"max_len={self.max_len}, dim={self.dim}, base={self.base:g}"


class LearnedPositionalEmbedding(nn.Embedding):
    """Trainable absolute position embeddings (GPT-2 ``wpe``, BERT ``position_embeddings``).

    An ``nn.Embedding(max_len, dim)`` whose ``forward(seq_len, offset=0)`` returns the rows for
    positions offset..offset+seq_len-1, shape (T, dim). An integer tensor of positions (...,)
    is also accepted and gives (..., dim).

    Examples:
        >>> LearnedPositionalEmbedding(1024, 768)(16).shape  # (16, 768)
    """

    def __init__(self, max_len: int, dim: int, **kwargs):
        positive_int("max_len", max_len)
        positive_int("dim", dim)
        super().__init__(max_len, dim, **kwargs)
        self.max_len = max_len

    def forward(self, positions_or_seq_len, offset: int = 0) -> torch.Tensor:
        """The embeddings of ``seq_len`` positions from ``offset`` (T, dim), or of an integer tensor of positions (...,) -> (..., dim).

        Examples:
            >>> wpe(torch.tensor([[0, 1, 2, 0, 1]]))  # (1, 5) -> (1, 5, dim)
        """
        if isinstance(positions_or_seq_len, torch.Tensor):
            if offset != 0:
                raise ValueError(f"offset must be 0 when positions are given, got {offset!r}")
            _check_positions_tensor(type(self).__name__, positions_or_seq_len, self.max_len)
            return super().forward(positions_or_seq_len)  # (..., dim)
        start, end = _lookup_range(type(self).__name__, self.max_len, positions_or_seq_len, offset)
        return self.weight[start:end]  # (T, dim)


# --------------------------------------------------------------------------------------------
# Rotary embeddings
# --------------------------------------------------------------------------------------------
def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def apply_rotary(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layout: str = "half"
) -> torch.Tensor:
    """Rotate the first ``2 * cos.shape[-1]`` channels of ``x``; the rest pass through.

    x: (..., T, D). cos, sin: (..., T, R/2) broadcastable against x's leading dims, holding
    cos/sin of the angle of each rotated pair (R = rotary dim <= D).

    layout "half" (HF Llama / GPT-NeoX ``rotate_half``): channel i is paired with i + R/2.
    layout "interleaved" (GPT-J / RoFormer): channels (0, 1), (2, 3), ... are pairs.
    Each pair (a, b) becomes (a cos - b sin, b cos + a sin). The arithmetic runs in float32
    (float64 when x is float64) and the result is cast back to x.dtype.

    Examples:
        >>> x_rot = apply_rotary(x, cos, sin)  # x (B, H, T, D), cos, sin (T, D/2)
    """
    if layout not in ROPE_LAYOUTS:
        raise ValueError(f"layout must be one of {ROPE_LAYOUTS}, got {layout!r}")
    if cos.shape != sin.shape:
        raise ValueError(
            f"cos and sin must have the same shape, got {tuple(cos.shape)} and {tuple(sin.shape)}"
        )
    half = cos.shape[-1]
    rot = 2 * half
    if rot > x.shape[-1]:
        raise ValueError(
            f"cos/sin rotate {rot} channels but x has only {x.shape[-1]} (x shape {tuple(x.shape)})"
        )
    ct = _compute_dtype(x.dtype)
    cos = cos.to(ct)
    sin = sin.to(ct)
    xr = x[..., :rot].to(ct)  # (..., T, R)
    if layout == "half":
        a, b = xr[..., :half], xr[..., half:]  # (..., T, R/2) each
        out = torch.cat((a * cos - b * sin, b * cos + a * sin), dim=-1)  # (..., T, R)
    else:
        a, b = xr[..., 0::2], xr[..., 1::2]  # (..., T, R/2) each
        out = torch.stack((a * cos - b * sin, b * cos + a * sin), dim=-1).flatten(-2)
    out = out.to(x.dtype)
    if rot == x.shape[-1]:
        return out
    return torch.cat((out, x[..., rot:]), dim=-1)  # (..., T, D)


class RotaryEmbedding(nn.Module):
    """Rotary position embeddings (Su et al. 2021) for queries and keys.

    ``forward(q, k, offset=0, positions=None) -> (q_rot, k_rot)`` with q (B, Hq, Tq, D) and
    k (B, Hkv, Tk, D). Keys sit at positions offset..offset+Tk-1; queries are the last Tq of
    those positions (Tq == Tk in ordinary use; with a KV cache, offset is the cache length).
    ``positions`` (a (Tk,) or (B, Tk) integer tensor) replaces the offset range, for packed
    sequences whose positions restart at each document.

    ``rotary_dim`` (default ``head_dim``) rotates only the first rotary_dim channels of each
    head (GPT-NeoX/Phi partial rotary); the rest pass through unchanged.

    The cos/sin table for positions 0..max_seq_len-1 is computed in float64 and kept per device
    and compute dtype; it grows (doubling) when a longer position is asked for. It is not a
    buffer, so ``module.half()`` cannot round it and ``state_dict`` does not carry it.

    Examples:
        >>> q_rot, k_rot = RotaryEmbedding(64, max_seq_len=2048)(torch.randn(1, 8, 16, 64), torch.randn(1, 8, 16, 64))
    """

    def __init__(
        self,
        head_dim: int,
        base: float = 10000.0,
        layout: str = "half",
        max_seq_len: int = 2048,
        rotary_dim: int | None = None,
    ):
        super().__init__()
        positive_int("head_dim", head_dim)
        if head_dim % 2:
            raise ValueError(f"RoPE needs an even head_dim, got head_dim={head_dim}")
        if rotary_dim is None:
            rotary_dim = head_dim
        positive_int("rotary_dim", rotary_dim)
        if rotary_dim % 2 or rotary_dim > head_dim:
            raise ValueError(
                f"rotary_dim must be even and <= head_dim={head_dim}, got rotary_dim={rotary_dim}"
            )
        if layout not in ROPE_LAYOUTS:
            raise ValueError(f"layout must be one of {ROPE_LAYOUTS}, got {layout!r}")
        self.head_dim = head_dim
        self.rotary_dim = rotary_dim
        self.base = positive_float("base", base)
        self.layout = layout
        self.max_seq_len = positive_int("max_seq_len", max_seq_len)
        # theta_i = base^(-2i/R), i = 0..R/2-1
        self.inv_freq = self.base ** (
            -torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim
        )  # (R/2,)
        self._cached_len = 0
        self._tables: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    # -- tables -----------------------------------------------------------------------------
    def _grow(self, needed: int) -> None:
        n = max(self.max_seq_len, self._cached_len)
        while n < needed:
            n *= 2
        pos = torch.arange(n, dtype=torch.float64)  # (N,)
        angles = pos[:, None] * self.inv_freq[None, :]  # (N, R/2)
        self._tables = {
            (torch.device("cpu"), torch.float64): (torch.cos(angles), torch.sin(angles))
        }
        self._cached_len = n

    def cos_sin(
        self, n_positions: int, device=None, dtype: torch.dtype = torch.float32
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin tables, each (N, R/2) with N >= n_positions, on ``device`` in ``dtype``
        (float32 or float64).

        Examples:
            >>> cos, sin = rope.cos_sin(128)  # each (N >= 128, R/2)
        """
        if n_positions > self._cached_len or not self._tables:  # none built yet (n = 0)
            self._grow(n_positions)
        device = torch.device("cpu") if device is None else torch.device(device)
        key = (device, dtype)
        if key not in self._tables:
            cos64, sin64 = self._tables[(torch.device("cpu"), torch.float64)]
            self._tables[key] = (cos64.to(dtype).to(device), sin64.to(dtype).to(device))
        return self._tables[key]

    def _angles_for(
        self, x: torch.Tensor, offset: int, positions: torch.Tensor | None, n: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin for the n keys, shaped to broadcast over (B, H, n, R/2)."""
        ct = _compute_dtype(x.dtype)
        if positions is None:
            cos, sin = self.cos_sin(offset + n, x.device, ct)
            return cos[offset : offset + n], sin[offset : offset + n]  # (n, R/2)
        hi = int(positions.max()) if positions.numel() else 0
        cos, sin = self.cos_sin(hi + 1, x.device, ct)
        idx = positions.to(x.device)
        cos, sin = cos[idx], sin[idx]  # (n, R/2) or (B, n, R/2)
        if cos.dim() == 3:
            cos, sin = cos[:, None], sin[:, None]  # (B, 1, n, R/2)
        return cos, sin

    # -- forward ----------------------------------------------------------------------------
    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        offset: int = 0,
        positions: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotate q (B, Hq, Tq, D) and k (B, Hkv, Tk, D) by their positions; returns (q_rot, k_rot), the same shapes.

        Examples:
            >>> q_rot, k_rot = rope(q, k, offset=cache.length)  # q (B, Hq, Tq, D), k (B, Hkv, Tk, D)
        """
        for name, t in (("q", q), ("k", k)):
            if t.dim() != 4 or t.shape[-1] != self.head_dim:
                raise ValueError(
                    f"{name} must be (B, H, T, head_dim={self.head_dim}), got "
                    f"shape {tuple(t.shape)}"
                )
        tq, tk = q.shape[2], k.shape[2]
        if tq > tk:
            raise ValueError(
                f"q has more positions than k: Tq={tq} > Tk={tk}; queries are "
                f"taken to be the last Tq key positions"
            )
        non_negative_int("offset", offset)
        if positions is not None:
            if offset != 0:
                raise ValueError(f"give either offset or positions, not both (offset={offset})")
            if not isinstance(positions, torch.Tensor):
                raise TypeError(
                    f"positions must be an integer tensor, got {type(positions).__name__}"
                )
            if not _is_integer(positions):
                raise TypeError(f"positions must be an integer tensor, got dtype {positions.dtype}")
            ok = (positions.dim() == 1 and positions.shape[0] == tk) or (
                positions.dim() == 2 and positions.shape == (k.shape[0], tk)
            )
            if not ok:
                raise ValueError(
                    f"positions must have shape ({tk},) or ({k.shape[0]}, {tk}) "
                    f"to match k {tuple(k.shape)}, got {tuple(positions.shape)}"
                )
            if positions.numel() and int(positions.min()) < 0:
                raise ValueError(f"positions must be >= 0, got min {int(positions.min())}")
        cos_k, sin_k = self._angles_for(k, offset, positions, tk)
        k_rot = apply_rotary(k, cos_k, sin_k, self.layout)  # (B, Hkv, Tk, D)
        cos_q, sin_q = cos_k[..., tk - tq :, :], sin_k[..., tk - tq :, :]  # queries: last Tq
        q_rot = apply_rotary(q, cos_q, sin_q, self.layout)  # (B, Hq, Tq, D)
        return q_rot, k_rot

    def extra_repr(self) -> str:
        """Head and rotary dims, base and layout, shown inside ``repr(module)``.

        Examples:
            >>> print(RotaryEmbedding(64))
        """
        s = f"head_dim={self.head_dim}, base={self.base:g}, layout={self.layout!r}"
        if self.rotary_dim != self.head_dim:
            s += f", rotary_dim={self.rotary_dim}"
        return s + f", max_seq_len={self.max_seq_len}"


# --------------------------------------------------------------------------------------------
# T5 relative position buckets
# --------------------------------------------------------------------------------------------
def relative_position_bucket(
    relative_position: torch.Tensor, bidirectional: bool, num_buckets: int, max_distance: int
) -> torch.Tensor:
    """The bucket (an int tensor of the same shape) of each key-minus-query distance, as T5
    (Raffel et al. 2020) defines it.

    Bidirectional (the encoder): half of the buckets are for keys after the query. Each
    direction's buckets hold the distances below half their count one per bucket, and the
    distances up to ``max_distance`` in logarithmically wider buckets; farther keys share the
    last one. Unidirectional (the decoder): only keys at or before the query count; later keys
    fall in bucket 0 (the causal mask hides them).

    Examples:
        >>> relative_position_bucket(torch.arange(-3, 4), True, 32, 128)  # (7,) -> (7,)
    """
    n = num_buckets
    buckets = torch.zeros_like(relative_position)
    if bidirectional:
        n //= 2
        buckets = buckets + (relative_position > 0).to(relative_position.dtype) * n
        distance = relative_position.abs()
    else:
        distance = (-relative_position).clamp(min=0)
    exact = n // 2
    # log-spaced buckets from `exact` to `max_distance` (the float32 arithmetic T5 uses)
    far = exact + (
        torch.log(distance.float().clamp(min=1) / exact)
        / math.log(max_distance / exact)
        * (n - exact)
    ).to(relative_position.dtype)
    far = far.clamp(max=n - 1)
    return buckets + torch.where(distance < exact, distance, far)
