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
    """(B, T, C) -> (B, T, V) logits."""

    def __init__(self, d_model: int, vocab_size: int, bias: bool = False):
        super().__init__()
        self.proj = nn.Linear(d_model, vocab_size, bias=bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.proj(h)  # (B, T, V)


class MLMHead(nn.Module):
    """(B, T, C) -> (B, T, V): dense -> GELU -> LayerNorm -> decoder (+ its own bias)."""

    def __init__(self, d_model: int, vocab_size: int, eps: float = 1e-12, activation: str = "gelu"):
        super().__init__()
        self.approximate = "tanh" if activation == "gelu_tanh" else "none"
        self.dense = nn.Linear(d_model, d_model)
        self.norm = nn.LayerNorm(d_model, eps=eps)
        self.decoder = nn.Linear(d_model, vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = self.norm(gelu(self.dense(h), approximate=self.approximate))  # (B, T, C)
        return self.decoder(h) + self.bias  # (B, T, V)


class Pooler(nn.Module):
    """(B, T, C) -> (B, C): tanh(dense(h[:, 0]))."""

    def __init__(self, d_model: int):
        super().__init__()
        self.dense = nn.Linear(d_model, d_model)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(h[:, 0]))  # (B, C)


class ClassificationHead(nn.Module):
    """(B, C) pooled -> (B, num_labels) logits."""

    def __init__(self, d_model: int, num_labels: int, dropout: float = 0.0):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(d_model, num_labels)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.proj(self.dropout(pooled))  # (B, num_labels)


def mean_pool(h: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T, C) -> (B, C): mean over the real tokens (attention_mask 1 = real)."""
    if attention_mask is None:
        return h.mean(dim=1)
    m = attention_mask.to(h.dtype).unsqueeze(-1)  # (B, T, 1)
    return (h * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)


def cls_pool(h: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T, C) -> (B, C): the first token's vector."""
    return h[:, 0]


POOLERS = {"mean": mean_pool, "cls": cls_pool}
