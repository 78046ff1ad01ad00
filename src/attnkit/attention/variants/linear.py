"""Linear attention with the elu(x) + 1 feature map (Katharopoulos et al. 2020).

softmax(q . k) is replaced by phi(q) . phi(k) with phi(x) = elu(x) + 1 > 0, so
o_i = phi(q_i) . sum_j phi(k_j) v_j^T / phi(q_i) . sum_j phi(k_j): O(T * D * Dv) time and
memory. Causal attention uses prefix sums over chunks (see ``_scan``). The feature map is not a
softmax kernel, so q is not scaled by 1/sqrt(D) here (a scale would change phi, not cancel).
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor

from attnkit._util.checks import int_at_least
from attnkit.attention.variants._common import VariantAttention
from attnkit.attention.variants._scan import kernel_attention


class FeatureMapAttention(VariantAttention):
    """Base of the kernelised variants: subclasses define ``query_features`` and
    ``key_features``; chunking, causal prefix sums and padding are handled here.

    Args:
        chunk_size: tokens per chunk of the causal prefix sums (>= 1).

    Raises:
        ValueError: if ``chunk_size`` is below 1.

    Examples:
        >>> LinearAttention(chunk_size=32)  # a FeatureMapAttention with phi = elu + 1
    """

    exact = False
    # Tokens per checkpointed step: T / max_groups, kept within [group_tokens, max_group_tokens]
    # so short inputs run as a few large operations and long ones in steps of bounded size
    # (the same work per step at every length: time grows linearly with T)
    group_tokens = 1024
    max_group_tokens = 2048
    max_groups = 8

    def __init__(self, chunk_size: int = 64):
        super().__init__()
        self.chunk_size = int_at_least("chunk_size", chunk_size, 1)

    def query_features(self, x: Tensor) -> Tensor:
        """phi(q) for (..., t, D) queries -> (..., t, m); a subclass must define it.

        Args:
            x: queries, (..., t, D).

        Examples:
            >>> LinearAttention().query_features(torch.randn(4, 8, 16)).shape  # (4, 8, 16)
        """
        raise NotImplementedError

    def key_features(self, x: Tensor, valid: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """phi(k) for (N, ..., t, D) keys -> ((N, ..., t, m), log_scale (N,) or None): the
        features were divided by exp(log_scale) for numerical stability; a subclass must
        define it.

        Args:
            x: keys, (N, ..., t, D).
            valid: bool (N, ..., t), True = real key; padded keys must get exactly zero
                features. None: every key is real.

        Examples:
            >>> phi, log_scale = LinearAttention().key_features(torch.randn(4, 8, 16))
        """
        raise NotImplementedError

    def _attend(self, q, k, v, causal, key_valid):
        B, H, T, D = q.shape
        Dv = v.shape[-1]
        N = B * H
        kv = (
            None if key_valid is None else key_valid[:, None, :].expand(B, H, T).reshape(N, T)
        )  # (N, T)
        group = min(self.max_group_tokens, max(self.group_tokens, math.ceil(T / self.max_groups)))
        group = math.ceil(group / self.chunk_size) * self.chunk_size
        out = kernel_attention(
            self.query_features,
            self.key_features,
            q.reshape(N, T, D),
            k.reshape(N, T, D),
            v.reshape(N, T, Dv),
            kv,
            causal,
            self.chunk_size,
            group,
        )  # (N, T, Dv)
        return out.reshape(B, H, T, Dv)


class LinearAttention(FeatureMapAttention):
    """Linear attention, phi(x) = elu(x) + 1.

    Args:
        chunk_size: tokens per chunk of the causal prefix sums (>= 1).

    Examples:
        >>> LinearAttention()(q, k, v, causal=True)  # q, k, v (B, H, T, D) -> (B, H, T, D)
    """

    name = "linear"
    description = "linear attention with the elu(x)+1 feature map (Katharopoulos et al. 2020)"

    def __init__(self, chunk_size: int = 64):
        super().__init__(chunk_size)

    # elu's backward reads its input, not its output, so adding 1 in place is safe for autograd
    # and saves a pass over (and an allocation of) a feature tensor the size of q or k.
    def query_features(self, x: Tensor) -> Tensor:
        """phi(q) = elu(q) + 1, elementwise: (..., t, D) -> (..., t, D).

        Args:
            x: queries, (..., t, D).

        Examples:
            >>> LinearAttention().query_features(torch.zeros(2, 3)).tolist()  # all 1.0
        """
        return F.elu(x).add_(1.0)

    def key_features(self, x: Tensor, valid: Tensor | None = None):
        """phi(k) = elu(k) + 1, zero at padded keys: (N, ..., t, D) -> ((N, ..., t, D), None).

        No rescaling is needed (the features are at most max(k) + 1), so log_scale is None.

        Args:
            x: keys, (N, ..., t, D).
            valid: bool (N, ..., t), True = real key; None: every key is real.

        Examples:
            >>> phi, log_scale = LinearAttention().key_features(torch.randn(4, 8, 16))  # None
        """
        phi = F.elu(x).add_(1.0)
        if valid is not None:
            phi = phi.masked_fill_(~valid.unsqueeze(-1), 0.0)
        return phi, None
