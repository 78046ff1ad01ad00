"""Helpers the HF parity tests share: a padded batch, the largest difference over real tokens,
and weights moved off their initial values so that a wrong key map cannot pass."""

from __future__ import annotations

import torch


def padded_batch(vocab: int, T: int = 13) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask), both (3, T): row 0 full, row 1 padded after 9 tokens, row 2 after 4 (pad 0)."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, vocab, (3, T), generator=g)
    mask = torch.ones(3, T, dtype=torch.long)
    mask[1, 9:] = 0
    mask[2, 4:] = 0
    return ids.masked_fill(mask == 0, 0), mask


def max_diff(ref: torch.Tensor, got: torch.Tensor, mask: torch.Tensor) -> float:
    """max |ref - got| over the positions where ``mask`` (B, T) is 1."""
    return (ref - got)[mask.bool()].abs().max().item()


def perturb_norms_and_biases(model: torch.nn.Module, scale: float, norm_names=("norm",)) -> None:
    """Add ``scale`` x N(0, 1) to every norm weight and bias (in place, no grad)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(n in name for n in norm_names) or name.endswith("bias"):
                p.add_(scale * torch.randn_like(p))
