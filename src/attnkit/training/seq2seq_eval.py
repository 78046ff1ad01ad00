"""What the encoder-decoder training loop (:mod:`attnkit.training.seq2seq`) measures: the
summed label-smoothed loss of a batch (the fused LM-head loss when the model is not wrapped),
the validation loss and perplexity, and BLEU / chrF of decoded validation or test sources.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import torch

from attnkit.models.encdec import seq2seq_loss
from attnkit.training import distributed, precision
from attnkit.training.seq2seq_data import Seq2SeqData, caps, make_batch

if TYPE_CHECKING:  # pragma: no cover - for static tools only
    from attnkit.models.encdec import EncoderDecoder
    from attnkit.training.config import RunConfig

__all__ = ["decode_scores", "loss_sum", "validation_loss"]


def loss_sum(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], smoothing: float
) -> tuple[torch.Tensor, int]:
    """(summed loss over the target tokens, their count).

    Args:
        model: the encoder-decoder (or its DDP wrapper).
        batch: :func:`~attnkit.training.seq2seq_data.make_batch`'s ``input_ids`` (B, S),
            ``attention_mask`` (B, S) and ``labels`` (B, T), on the model's device.
        smoothing: the label smoothing (0.0: none).

    Returns:
        ``(loss, count)``: the 0-d summed loss and the number of labels not -100.

    Examples:
        >>> loss, count = loss_sum(model, make_batch(examples, pad_id=0), smoothing=0.1)
    """
    from attnkit.models.encdec import EncoderDecoder

    labels = batch["labels"]
    count = int((labels != -100).sum())
    if isinstance(model, EncoderDecoder):  # not compiled, not wrapped: the fused LM-head loss
        loss = model.loss(
            batch["input_ids"], batch["attention_mask"], labels, label_smoothing=smoothing
        )
        return loss * count, count
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels)
    return seq2seq_loss(out.logits, labels, smoothing) * count, count


@torch.no_grad()
def validation_loss(
    raw: EncoderDecoder, data: Seq2SeqData, max_tokens: int, d: distributed.Dist, dtype: str
) -> dict[str, float]:
    """Mean cross-entropy and perplexity over the validation examples (no label smoothing,
    no autograd), in batches of at most ``max_tokens`` padded tokens.

    Args:
        raw: the unwrapped encoder-decoder.
        data: the run's data (``data.val``).
        max_tokens: the padded-token cap of a batch.
        d: this process's place in the process group (its device).
        dtype: ``train.dtype``.

    Returns:
        ``{"loss": ..., "perplexity": ...}``.

    Examples:
        >>> validation_loss(model, data, 4096, Dist(), "float32")["loss"]
    """
    from attnkit.text.batching import token_batches

    was = raw.training
    raw.eval()
    total, count = 0.0, 0
    lengths = [(len(s), len(t)) for s, t in data.val]
    for idx in token_batches(lengths, max_tokens):
        batch = make_batch([data.val[i] for i in idx], raw.config.pad_token_id)
        batch = {k: v.to(d.device) for k, v in batch.items()}
        with precision.autocast(d.device, dtype):
            s, n = loss_sum(raw, batch, 0.0)
        total, count = total + float(s), count + n
    raw.train(was)
    mean = total / max(count, 1)
    return {"loss": mean, "perplexity": math.exp(min(mean, 700.0))}


def decode_scores(
    raw: EncoderDecoder, data: Seq2SeqData, split: str, cfg: RunConfig
) -> dict[str, Any]:
    """BLEU and chrF of the first ``train.eval_sentences`` sources of ``split``, decoded
    with ``train.eval_num_beams`` beams.

    Args:
        raw: the unwrapped encoder-decoder.
        data: the run's data (``data.texts``).
        split: "validation" or "test".
        cfg: the run config.

    Returns:
        The scores with ``sentences``, ``decode_seconds`` and the first ``example``; empty
        when the split has no texts or ``train.eval_sentences`` is 0.

    Examples:
        >>> decode_scores(model, data, "validation", cfg)["bleu"]
    """
    from attnkit.generation.translate import translate
    from attnkit.text.scores import translation_scores

    tc = cfg.train
    pairs = data.texts.get(split, [])[: tc.eval_sentences]
    if not pairs or not tc.eval_sentences:
        return {}
    max_src, max_tgt = caps(cfg)
    t0 = time.perf_counter()
    hyps = translate(
        raw,
        data.tok,
        [s for s, _ in pairs],
        num_beams=tc.eval_num_beams,
        max_new_tokens=min(tc.eval_max_new_tokens or max_tgt, raw.config.max_seq_len - 1),
        max_source_len=max_src,
        batch_size=32,
    )
    scores: dict[str, Any] = dict(translation_scores(hyps, [t for _, t in pairs]))
    scores.update(sentences=len(pairs), decode_seconds=round(time.perf_counter() - t0, 3))
    scores["example"] = {"source": pairs[0][0], "reference": pairs[0][1], "output": hyps[0]}
    return scores
