"""Perplexity of a GPT over a token stream, in the windows training reads.

A stream of N token ids has N - 1 targets: each token after the first, predicted from the
tokens before it. Training reads windows of ``block_size + 1`` consecutive tokens (inputs
``block_size`` T, targets shifted by one); evaluation covers the stream with such windows in
order, each target scored exactly once (:func:`window_spans`):

* ``stride`` = T (the default): consecutive windows do not overlap; window k reads inputs
  ``ids[kT : kT + T]`` and scores targets ``ids[kT + 1 : kT + T + 1]``, so a target sees 0 to
  T - 1 tokens of context, as in training.
* ``stride`` S < T (a sliding window): window k ends at target ``e_k = min(T + kS, N - 1)``,
  reads the T tokens before it and scores only the targets after the previous window's end,
  so every target after the first window sees at least T - S tokens of context.

The last window is moved back to end at the last target (it reads T tokens and scores only
the new ones). ``loss`` is the mean negative log-likelihood in nats over the N - 1 targets,
summed in float64; ``perplexity`` = exp(loss).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from attnkit._util import checks
from attnkit.models.gpt import GPT

__all__ = ["eval_token_ids", "perplexity", "run_settings", "window_spans"]

SPLITS = ("train", "val", "all")


def window_spans(
    n_tokens: int, block_size: int, stride: int | None = None
) -> list[tuple[int, int, int]]:
    """``(start, end, scored)`` of every window over a stream of ``n_tokens`` ids: inputs
    ``ids[start:end]``, targets ``ids[start + 1 : end + 1]``, of which the last ``scored`` are
    counted. The ``scored`` of all windows add up to ``n_tokens - 1``.

    Args:
        n_tokens: length of the token stream (at least 2).
        block_size: input tokens per window.
        stride: tokens each window moves by, 1..block_size (default: ``block_size``).

    Returns:
        One ``(start, end, scored)`` triple per window, in order.

    Raises:
        ValueError: ``n_tokens`` < 2, ``block_size`` < 1 or ``stride`` outside 1..block_size.

    Examples:
        >>> window_spans(10, 4)
        [(0, 4, 4), (4, 8, 4), (5, 9, 1)]
    """
    checks.int_at_least("n_tokens", n_tokens, 2, "at least 2 tokens (one target)")
    checks.positive_int("block_size", block_size)
    stride = block_size if stride is None else stride
    checks.int_in("stride", stride, 1, block_size, f"an integer in 1..block_size={block_size}")
    last = n_tokens - 1  # the index of the last target
    spans = []
    done, k = 0, 0  # targets 1..done are scored
    while done < last:
        end = min(block_size + k * stride, last)
        spans.append((max(0, end - block_size), end, end - done))
        done, k = end, k + 1
    return spans


@torch.no_grad()
def perplexity(
    model: GPT,
    ids: Sequence[int] | torch.Tensor,
    block_size: int | None = None,
    stride: int | None = None,
    batch_size: int = 8,
) -> dict[str, Any]:
    """Loss and perplexity of ``model`` on the token ids ``ids`` (see the module docstring).

    Args:
        model: an attnkit GPT with an LM head; evaluated in eval mode, its mode restored after.
        ids: the token stream, shape (n_tokens,) (any shape is flattened), ids in the vocabulary.
        block_size: tokens per window (default: the model's ``max_seq_len``, at most that).
        stride: tokens the window moves by (default: ``block_size``).
        batch_size: windows run through the model at once.

    Returns:
        ``{"loss", "perplexity", "tokens" (targets scored), "windows", "block_size",
        "stride"}``; ``loss`` in nats per target.

    Raises:
        ValueError: not a GPT with an LM head, ``block_size`` over the model's ``max_seq_len``,
            a token id outside the vocabulary, or fewer than 2 tokens.

    Examples:
        >>> perplexity(attnkit.load("runs/char"), ids, block_size=64, stride=32)["perplexity"]
    """
    if not isinstance(model, GPT) or model.lm_head is None:
        raise ValueError(
            f"perplexity needs an attnkit GPT with an LM head, got {type(model).__name__}"
        )
    block = model.config.max_seq_len if block_size is None else block_size
    checks.positive_int("block_size", block)
    if block > model.config.max_seq_len:
        raise ValueError(
            f"block_size={block} exceeds the model's max_seq_len={model.config.max_seq_len}; "
            f"expected at most {model.config.max_seq_len}"
        )
    checks.positive_int("batch_size", batch_size)
    flat = torch.as_tensor(ids, dtype=torch.long).reshape(-1)
    vocab = model.config.vocab_size
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= vocab):
        bad = int(flat.min()) if int(flat.min()) < 0 else int(flat.max())
        raise ValueError(f"token id {bad} is outside the model's vocabulary 0..{vocab - 1}")
    spans = window_spans(flat.numel(), block, stride)
    device = next(model.parameters()).device
    head = model.lm_head
    was_training = model.training
    model.eval()
    total = 0.0
    try:
        for b in range(0, len(spans), batch_size):
            group = spans[b : b + batch_size]
            x = torch.stack([flat[s:e] for s, e, _ in group]).to(device)  # (B, T)
            h = model.hidden_states(x)  # (B, T, C)
            for row, (_, e, scored) in enumerate(group):
                # the LM head on the scored positions only: (scored, V) logits, not (B, T, V)
                logits = head(h[row, -scored:]).float()  # (scored, V)
                target = flat[e + 1 - scored : e + 1].to(device)  # (scored,)
                nll = F.cross_entropy(logits, target, reduction="none")  # (scored,)
                total += float(nll.double().sum())
    finally:
        model.train(was_training)
    n = flat.numel() - 1
    loss = total / n
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 700.0)),
        "tokens": n,
        "windows": len(spans),
        "block_size": block,
        "stride": block if stride is None else stride,
    }


def eval_token_ids(
    tokenizer: Any, data: str | os.PathLike[str], split: str, val_fraction: float = 0.1
) -> list[int]:
    """The token ids of a corpus (a name or a .txt/.jsonl file or directory, as
    :func:`attnkit.text.corpora.load_corpus` reads it): its ``"train"`` or ``"val"`` part as
    training splits it (:func:`attnkit.text.corpora.split_text` with ``val_fraction``), or
    ``"all"`` of it, encoded as training encodes it (without truncation).

    Args:
        tokenizer: a ``tokenizers.Tokenizer`` (copied: its own settings are left alone).
        data: a corpus name, or a .txt/.jsonl file or a directory of them.
        split: ``"train"``, ``"val"`` or ``"all"``.
        val_fraction: the fraction of the text that training held out for validation.

    Returns:
        The token ids of that part, at least 2 of them.

    Raises:
        ValueError: an unknown ``split``, or a text that encodes to fewer than 2 tokens.

    Examples:
        >>> ids = eval_token_ids(model.meta.tokenizer, "shakespeare", "val", val_fraction=0.1)
    """
    from tokenizers import Tokenizer

    from attnkit.text.corpora import load_corpus, split_text
    from attnkit.text.tokenizers import encode

    checks.choice("split", split, SPLITS)
    text = load_corpus(data).text
    if split != "all":
        text = split_text(text, val_fraction)[0 if split == "train" else 1]
    tok = Tokenizer.from_str(tokenizer.to_str())  # a copy: the model's keeps its settings
    tok.no_truncation()  # a loaded tokenizer may cut at the model's length; a corpus is long
    ids = encode(tok, text)
    if len(ids) < 2:
        raise ValueError(f"{data} ({split}) encodes to {len(ids)} token(s); expected at least 2")
    return ids


def run_settings(model_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """What the training run that wrote ``model_dir`` read: ``{"corpus", "val_fraction",
    "block_size"}`` from its ``run_config.json``, or ``{}`` when it has none (a Hugging Face
    directory, a known model name).

    Args:
        model_dir: the directory a training run saved the model in.

    Raises:
        ValueError: ``run_config.json`` lacks ``data.corpus``, ``data.val_fraction`` or
            ``train.block_size``, or is not JSON.

    Examples:
        >>> sorted(run_settings("runs/char"))
        ['block_size', 'corpus', 'val_fraction']
    """
    path = Path(model_dir) / "run_config.json"
    if not path.is_file():
        return {}
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
        return {
            "corpus": str(cfg["data"]["corpus"]),
            "val_fraction": float(cfg["data"]["val_fraction"]),
            "block_size": int(cfg["train"]["block_size"]),
        }
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(
            f"{path}: not a run configuration ({type(e).__name__}: {e}); expected the JSON "
            f"written by pretrain with data.corpus, data.val_fraction and train.block_size"
        ) from None
