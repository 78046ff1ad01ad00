"""Pre-training objectives: the batches of causal LM (next token) and masked LM, and the loss.

A GPT learns causal LM: windows of ``block_size + 1`` tokens, inputs and targets shifted by
one. A BERT learns masked LM: 15% of tokens chosen, 80/10/10 mask/random/keep
(:func:`attnkit.text.datasets.mask_tokens`). Every process draws the same global batch from
one seeded generator and keeps its rows, so N processes see the batch one process would.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from attnkit.text.datasets import TokenStream, mask_tokens
from attnkit.training import distributed
from attnkit.training.config import RunConfig

if TYPE_CHECKING:  # pragma: no cover - for static tools only
    from tokenizers import Tokenizer

__all__ = ["Batches", "loss_sums"]


class Batches:
    """Global batches drawn from a stream with one generator; each rank keeps its rows."""

    def __init__(
        self,
        stream: TokenStream,
        cfg: RunConfig,
        d: distributed.Dist,
        objective: str,
        tok: Tokenizer,
        seed: int,
    ):
        self.stream, self.cfg, self.d, self.objective = stream, cfg, d, objective
        self.gen = torch.Generator().manual_seed(seed)
        self.rows = cfg.train.batch_size
        if objective == "mlm":
            mask_id = tok.token_to_id("[MASK]")
            if mask_id is None:
                raise ValueError("masked LM needs a tokenizer with a [MASK] token; it has none")
            self.mask_id: int = mask_id
            self.special = tuple(
                i
                for i in (
                    tok.token_to_id(t) for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
                )
                if i is not None
            )
            self.vocab = tok.get_vocab_size()

    def next(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(inputs, targets) for this rank and the number of target tokens in the global batch."""
        T = self.cfg.train.block_size
        n = self.rows * self.d.world_size
        if self.objective == "clm":
            w = self.stream.windows(n, T + 1, self.gen)  # (n, T+1)
            x, y = w[:, :-1], w[:, 1:]
            count = y.numel()
        else:
            w = self.stream.windows(n, T, self.gen)  # (n, T)
            x, y = mask_tokens(
                w,
                mask_id=self.mask_id,
                vocab_size=self.vocab,
                generator=self.gen,
                special_ids=self.special,
                prob=self.cfg.train.mlm_probability,
            )
            count = int((y != -100).sum())
        lo = self.d.rank * self.rows
        dev = self.d.device
        return x[lo : lo + self.rows].to(dev), y[lo : lo + self.rows].to(dev), count


def loss_sums(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed cross entropy over target tokens, number of correct predictions)."""
    logits = model(x).logits  # (B, T, V)
    flat = logits.float().reshape(-1, logits.shape[-1])
    target = y.reshape(-1)
    loss = F.cross_entropy(flat, target, ignore_index=-100, reduction="sum")
    with torch.no_grad():
        keep = target != -100
        correct = (flat.argmax(-1)[keep] == target[keep]).sum()
    return loss, correct
