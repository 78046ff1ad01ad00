"""Output heads and pooling: what turns the last hidden states into an answer.

* :class:`LMHead`: next-token logits (decoder), usually sharing the token embedding matrix.
* :class:`MLMHead`: masked-token logits (BERT): dense -> GELU -> LayerNorm -> tied decoder.
* :class:`Pooler`: dense + tanh on the first token (BERT's ``pooler_output``).
* :class:`ClassificationHead`: dropout + linear over a pooled vector.
* :func:`mean_pool`, :func:`cls_pool`: sentence vectors from hidden states.
"""

from __future__ import annotations

import torch
from torch import nn

from attnkit.models.layers import gelu


class LMHead(nn.Module):
    """(B, T, C) -> (B, T, V) logits: one linear layer, without a bias by default.

    Examples:
        >>> LMHead(64, 256)(torch.randn(2, 16, 64)).shape  # (2, 16, 256)
    """

    def __init__(self, d_model: int, vocab_size: int, bias: bool = False):
        super().__init__()
        self.proj = nn.Linear(d_model, vocab_size, bias=bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """h (B, T, C) hidden states -> (B, T, V) logits.

        Examples:
            >>> head(torch.randn(2, 16, 64)).shape  # head = LMHead(64, 256); (2, 16, 256)
        """
        return self.proj(h)  # (B, T, V)


class MLMHead(nn.Module):
    """(B, T, C) -> (B, T, V): dense -> GELU -> LayerNorm -> decoder (+ its own bias).

    ``activation`` "gelu_tanh" uses the tanh GELU; any other value the erf GELU.

    Examples:
        >>> MLMHead(64, 512)(torch.randn(2, 16, 64)).shape  # (2, 16, 512)
    """

    def __init__(self, d_model: int, vocab_size: int, eps: float = 1e-12, activation: str = "gelu"):
        super().__init__()
        self.approximate = "tanh" if activation == "gelu_tanh" else "none"
        self.dense = nn.Linear(d_model, d_model)
        self.norm = nn.LayerNorm(d_model, eps=eps)
        self.decoder = nn.Linear(d_model, vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """h (B, T, C) hidden states -> (B, T, V) masked-token logits.

        Examples:
            >>> head(torch.randn(2, 16, 64)).shape  # head = MLMHead(64, 512); (2, 16, 512)
        """
        h = self.norm(gelu(self.dense(h), approximate=self.approximate))  # (B, T, C)
        return self.decoder(h) + self.bias  # (B, T, V)


class Pooler(nn.Module):
    """(B, T, C) -> (B, C): tanh(dense(h[:, 0])).

    Examples:
        >>> Pooler(64)(torch.randn(2, 16, 64)).shape  # (2, 64)
    """

    def __init__(self, d_model: int):
        super().__init__()
        self.dense = nn.Linear(d_model, d_model)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """h (B, T, C) hidden states -> (B, C), from the first token.

        Examples:
            >>> pooler(torch.randn(2, 16, 64)).shape  # pooler = Pooler(64); (2, 64)
        """
        return torch.tanh(self.dense(h[:, 0]))  # (B, C)


class ClassificationHead(nn.Module):
    """(B, C) pooled -> (B, num_labels) logits: dropout, then one linear layer.

    Examples:
        >>> ClassificationHead(64, 3)(torch.randn(2, 64)).shape  # (2, 3)
    """

    def __init__(self, d_model: int, num_labels: int, dropout: float = 0.0):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(d_model, num_labels)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """pooled (B, C) -> (B, num_labels) class logits.

        Examples:
            >>> head(torch.randn(2, 64)).shape  # head = ClassificationHead(64, 3); (2, 3)
        """
        return self.proj(self.dropout(pooled))  # (B, num_labels)


def mean_pool(h: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T, C) -> (B, C): mean over the real tokens (attention_mask 1 = real).

    Args:
        h: (B, T, C) hidden states.
        attention_mask: (B, T), 1 = real token, 0 = padding; None: every token counts.

    Examples:
        >>> mean_pool(torch.randn(2, 16, 64), torch.ones(2, 16)).shape  # (2, 64)
    """
    if attention_mask is None:
        return h.mean(dim=1)
    m = attention_mask.to(h.dtype).unsqueeze(-1)  # (B, T, 1)
    return (h * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)


def cls_pool(h: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T, C) -> (B, C): the first token's vector.

    Args:
        h: (B, T, C) hidden states.
        attention_mask: (B, T); not used (taken so that it is called like :func:`mean_pool`).

    Examples:
        >>> cls_pool(torch.randn(2, 16, 64)).shape  # (2, 64)
    """
    return h[:, 0]


POOLERS = {"mean": mean_pool, "cls": cls_pool}
