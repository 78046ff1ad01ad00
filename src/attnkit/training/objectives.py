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

__all__ = ["Batches", "loss_sum", "loss_sums"]


class Batches:
    """Global batches drawn from a stream with one generator; each rank keeps its rows.

    Each call to :meth:`next` draws ``train.batch_size x world_size`` windows of
    ``train.block_size`` tokens (one more for causal LM) from ``stream`` with ``self.gen``,
    which is seeded with ``seed`` (its state is saved in checkpoints).

    Args:
        stream: the token stream (a split of the corpus).
        cfg: the run config (``train.batch_size``, ``block_size``, ``mlm_probability``).
        d: this process's place in the process group.
        objective: "clm" (causal LM) or "mlm" (masked LM).
        tok: the tokenizer (masked LM takes its [MASK] and special token ids).
        seed: the generator's seed.

    Raises:
        ValueError: ``objective`` is "mlm" and ``tok`` has no [MASK] token.

    Examples:
        >>> x, y, count = Batches(streams["train"], cfg, d, "clm", tok, seed=1).next()
    """

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
        """(inputs, targets) for this rank and the number of target tokens in the global batch.

        Returns:
            ``(x, y, count)``: inputs (batch_size, block_size) and targets (batch_size,
            block_size) on ``d.device`` (targets -100 where masked LM does not predict), and the
            target tokens of the whole global batch, all ranks together.

        Examples:
            >>> x, y, count = batches.next()  # x, y: (batch_size, block_size)
        """
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


def loss_sum(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The cross entropy summed over the target tokens: what a training step needs, without
    the argmax over the vocabulary that :func:`loss_sums` adds for the accuracy.

    Args:
        model: a model whose output has ``.logits`` (batch, seq, vocab).
        x: (batch, seq) input ids.
        y: (batch, seq) target ids; -100 is ignored.

    Returns:
        A 0-d float32 tensor (float64 for float64 logits).

    Examples:
        >>> (loss_sum(model, x, y) / (y != -100).sum()).backward()  # x, y: (batch, seq)
    """
    return _cross_entropy_sum(model(x).logits, y)


def _cross_entropy_sum(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    flat = logits.float().reshape(-1, logits.shape[-1])  # (B*T, V)
    return F.cross_entropy(flat, y.reshape(-1), ignore_index=-100, reduction="sum")


def loss_sums(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed cross entropy over target tokens, number of correct predictions).

    Args:
        model: a model whose output has ``.logits`` (batch, seq, vocab).
        x: (batch, seq) input ids.
        y: (batch, seq) target ids; -100 is ignored.

    Returns:
        ``(loss, correct)``: 0-d tensors, the float32 cross entropy summed over targets and the
        number of targets the argmax predicts.

    Examples:
        >>> loss, correct = loss_sums(model, x, y)  # x, y: (batch, seq)
    """
    logits = model(x).logits  # (B, T, V)
    loss = _cross_entropy_sum(logits, y)
    with torch.no_grad():
        flat = logits.reshape(-1, logits.shape[-1])
        target = y.reshape(-1)
        keep = target != -100
        correct = (flat.argmax(-1)[keep] == target[keep]).sum()
    return loss, correct
