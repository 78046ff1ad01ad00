"""Performer attention: FAVOR+ with positive orthogonal random features (Choromanski et al. 2021).

With x = q / D^(1/4) and y = k / D^(1/4) (so that x . y = q . k / sqrt(D)),

    phi(x) = exp(W x - |x|^2 / 2) / sqrt(m),   E[phi(x) . phi(y)] = exp(x . y),

where the m rows of W are blocks of orthonormal directions scaled by chi(D)-distributed norms.
Softmax attention is then approximated by kernelised attention with phi (see ``_scan``).

Stability: each query's features are divided by their largest entry (a per-query factor that
cancels in the normalisation); the key features are divided by exp of the running maximum of
their exponents over the keys seen so far, which also cancels and, in causal mode, never looks
at a later key.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from attnkit._util.checks import int_at_least, non_negative_int, optional_positive_int
from attnkit.attention.variants.linear import FeatureMapAttention


def orthogonal_random_features(m: int, d: int, generator: torch.Generator) -> Tensor:
    """(m, d) float64 matrix: blocks of d orthonormal rows, each row rescaled to the norm of an
    independent d-dim standard Gaussian vector.

    Args:
        m: the number of features (rows).
        d: the head dim (columns).
        generator: the random generator to draw from (advanced by the draw).

    Examples:
        >>> orthogonal_random_features(80, 16, torch.Generator().manual_seed(0)).shape  # (80, 16)
    """
    blocks = []
    for _ in range(math.ceil(m / d)):
        g = torch.randn(d, d, generator=generator, dtype=torch.float64)
        qmat, r = torch.linalg.qr(g)
        qmat = qmat * torch.sign(torch.diagonal(r)).where(
            torch.diagonal(r) != 0, torch.ones(d, dtype=torch.float64)
        )
        blocks.append(qmat.T)
    w = torch.cat(blocks)[:m]  # (m, d)
    norms = torch.randn(m, d, generator=generator, dtype=torch.float64).norm(dim=1)  # (m,)
    return w * norms[:, None]


class PerformerAttention(FeatureMapAttention):
    """FAVOR+ softmax-kernel approximation with positive orthogonal random features.

    Args:
        nb_features: m, default int(D * log(D)) for head dim D.
        redraw_interval: in training mode, draw new features every this many forward calls
            (None: only on :meth:`redraw`).
        seed: the features are drawn from a generator seeded with it, so a module is
            reproducible.
        chunk_size: tokens per chunk of the causal prefix sums (>= 1).
        head_dim: draw the features now for this D instead of at the first forward call
            (and refuse any other D later).

    Raises:
        ValueError: for a count below 1 or a negative seed.

    Examples:
        >>> PerformerAttention(nb_features=128)(q, k, v)  # q, k, v (B, H, T, D) -> (B, H, T, D)
    """

    projection: Tensor | None  # (m, D) buffer
    name = "performer"
    description = (
        "Performer FAVOR+: positive orthogonal random features approximating softmax attention"
    )

    def __init__(
        self,
        nb_features: int | None = None,
        redraw_interval: int | None = None,
        seed: int = 0,
        chunk_size: int = 128,
        head_dim: int | None = None,
    ):
        super().__init__(chunk_size)
        self.nb_features = optional_positive_int("nb_features", nb_features)
        self.redraw_interval = optional_positive_int("redraw_interval", redraw_interval)
        self.seed = non_negative_int("seed", seed)
        self.head_dim = optional_positive_int("head_dim", head_dim)
        self._generator = torch.Generator().manual_seed(self.seed)
        self._calls = 0
        self.register_buffer("projection", None)  # (m, D), drawn lazily for the first D seen
        if head_dim is not None:
            self.redraw(head_dim)

    def features_for(self, d: int) -> int:
        """The number of features m for head dim ``d``: ``nb_features``, or int(d * log(d)).

        Args:
            d: the head dim D.

        Examples:
            >>> PerformerAttention().features_for(64)  # 266
        """
        return self.nb_features if self.nb_features is not None else max(1, int(d * math.log(d)))

    @torch.no_grad()
    def redraw(self, head_dim: int | None = None) -> None:
        """Draw a new (m, head_dim) feature matrix into the ``projection`` buffer, from the
        module's generator (each draw continues its sequence).

        Args:
            head_dim: the head dim D; None: the current projection's.

        Raises:
            ValueError: if ``head_dim`` is None before any features were drawn.

        Examples:
            >>> PerformerAttention(head_dim=64).redraw()  # new features for D = 64
        """
        if head_dim is None:
            if self.projection is None:
                raise ValueError("redraw() needs head_dim before the first forward call, got None")
            head_dim = self.projection.shape[1]
        head_dim = int_at_least("head_dim", head_dim, 1)
        w = orthogonal_random_features(self.features_for(head_dim), head_dim, self._generator)
        device = self.projection.device if self.projection is not None else None
        self.projection = w.to(device=device, dtype=torch.float32)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "projection"
        if key in state_dict and self.projection is None:
            self.projection = torch.empty_like(state_dict[key], dtype=torch.float32)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _projection(self, d: int, like: Tensor) -> Tensor:
        if self.projection is None or self.projection.shape[1] != d:
            if self.projection is not None and self.head_dim is not None:
                raise ValueError(
                    f"this module was built for head_dim={self.projection.shape[1]}, got D={d}"
                )
            self.redraw(d)
        projection = self.projection
        if projection is None:  # pragma: no cover - redraw sets it
            raise RuntimeError("PerformerAttention has no projection after redraw()")
        return projection.to(device=like.device, dtype=like.dtype)

    def _proj(self, x: Tensor) -> Tensor:
        """W x / D^(1/4): (..., t, D) -> (..., t, m'), where m' rounds m up to a multiple of 16
        (matrix products run faster) and the extra columns are -inf, so their features are 0."""
        d = x.shape[-1]
        w = self._projection(d, x) * d**-0.25  # (m, D)
        m = w.shape[0]
        m_pad = -(-m // 16) * 16
        if m_pad > m:
            w = torch.cat([w, w.new_zeros(m_pad - m, d)])
        e = torch.matmul(x, w.T)  # (..., t, m')
        if m_pad > m:
            e[..., m:] = float("-inf")
        return e

    def query_features(self, x: Tensor) -> Tensor:
        """phi(q) up to a per-query factor (which cancels in the normalisation): exp(Wx - c)
        with c the row maximum; the -|x|^2/2 term and 1/sqrt(m) are per-query factors too.

        Args:
            x: queries, (..., t, D); D sets the features at the first call.

        Returns:
            (..., t, m'), m' = m rounded up to a multiple of 16 (the extra features are 0).

        Examples:
            >>> PerformerAttention(head_dim=64).query_features(torch.randn(4, 8, 64)).shape
            torch.Size([4, 8, 272])
        """
        e = self._proj(x)  # (..., t, m)
        return e.sub_(e.detach().amax(-1, keepdim=True)).exp_()

    def key_features(self, x: Tensor, valid: Tensor | None = None):
        """phi(k) = exp(Wx - |x|^2 / 2) / exp(log_scale), one factor for all keys of a row (it
        cancels); log_scale (one per row, the row index being dim -3 of x) is the largest
        exponent among the row's real keys. 1/sqrt(m) is dropped (it cancels with the queries').

        Args:
            x: keys, (..., N, t, D).
            valid: bool (..., N, t), True = real key (padded keys get exactly zero features);
                None: every key is real.

        Returns:
            features (..., N, t, m') (m' as in :meth:`query_features`) and log_scale (N,),
            -inf for a row whose keys are all padding.

        Examples:
            >>> phi, log_scale = PerformerAttention(head_dim=64).key_features(torch.randn(4, 8, 64))
        """
        d = x.shape[-1]
        e = self._proj(x)  # (..., N, t, m)
        half_sq = 0.5 * d**-0.5 * (x * x).sum(-1)  # (..., N, t): |x / D^(1/4)|^2 / 2
        n = x.shape[-3]
        with torch.no_grad():
            top = e.amax(-1) - half_sq  # (..., N, t) largest exponent of each key
            if valid is not None:
                top = top.masked_fill(~valid, float("-inf"))
            log_scale = (
                top.movedim(-2, 0).reshape(n, -1).amax(-1)
            )  # (N,), -inf if every key is padded
            finite = torch.where(torch.isfinite(log_scale), log_scale, torch.zeros_like(log_scale))
        shift = half_sq + finite.view(n, 1)  # (..., N, t)
        if valid is not None:  # padded keys: exactly zero features, and no overflow
            shift = shift.masked_fill(~valid, float("inf"))
        return e.sub_(shift.unsqueeze(-1)).exp_(), log_scale

    def _attend(self, q, k, v, causal, key_valid):
        if self.training and self.redraw_interval is not None:
            if self._calls % self.redraw_interval == 0 and self._calls > 0:
                self.redraw()
            self._calls += 1
        self._projection(q.shape[-1], q)  # draw the features before the scan starts
        return super()._attend(q, k, v, causal, key_valid)
