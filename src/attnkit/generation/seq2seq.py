"""Decoding for encoder-decoder models: greedy, sampling and beam search, batched, as Hugging
Face's ``generate`` does for encoder-decoders.

    >>> out = attnkit.generate(model, input_ids, attention_mask=mask, num_beams=4,
    ...                        max_new_tokens=40)          # (B, L) decoder ids
    >>> out[:, 0]                                          # the decoder start token

The sources (B, S) are encoded once; each decoder block's cross-attention keys and values are
computed once per source (:meth:`EncoderDecoder.new_cache`) and the decoder then runs one
token per row per step on its self-attention cache. ``attention_mask`` (B, S), 1 = real token,
masks padded sources (right or left padding: only the mask matters).

The result is a (B * num_return_sequences, L) LongTensor of decoder ids: the decoder start
token, the generated tokens (the eos id that ends a row included), then ``pad_token_id`` up to
the longest row, L <= ``max_length`` = 1 + ``max_new_tokens``. The tokens are HF's; where a row
ends early, HF's beam search pads with ``pad_token_id or eos_token_id`` (an eos id for a pad id
of 0, as T5's), here it is always ``pad_token_id``.

Modes, chosen as in HF:

* greedy (default): the arg-max of each step's float32 logits (ties: the lowest id);
* ``do_sample=True``: a draw after ``temperature``, ``top_k`` and ``top_p``
  (:func:`~attnkit.generation.sampling.choose_tokens`), from a ``torch.Generator`` seeded with
  ``seed``; ``num_return_sequences`` draws per source;
* ``num_beams`` > 1: beam search (:mod:`attnkit.generation.beam`) with ``length_penalty``,
  ``early_stopping`` (True, False or "never", HF's meanings) and ``num_return_sequences`` <=
  ``num_beams`` hypotheses per source, best first.

In every mode ``no_repeat_ngram_size`` n > 0 forbids a token that would repeat an n-gram of
the row (its decoder start token included), ``min_length`` forbids the eos ids while a row (its
start token included) is shorter, a row ends at one of the eos ids (default: the config's) and
finished rows are padded. ``max_length``, when given, replaces ``max_new_tokens`` (both count
as in HF: ``max_length`` includes the start token).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from attnkit._util import checks
from attnkit.generation.beam import ban_eos_before, ban_repeated_ngrams, beam_search
from attnkit.generation.checks import eos_set
from attnkit.generation.sampling import choose_tokens
from attnkit.models.encdec import DecoderCache, EncoderDecoder
from attnkit.models.packed import packed_linears

__all__ = ["EARLY_STOPPING", "generate_seq2seq"]

EARLY_STOPPING = (True, False, "never")

# options of decoder-only generation, with the values that mean "not used"
_DECODER_ONLY = {
    "repetition_penalty": 1.0,
    "stop": None,
    "tokenizer": None,
    "callback": None,
    "use_cache": True,
    "context": "error",
}


def _source(model: EncoderDecoder, input_ids: Any, attention_mask: Any) -> tuple[Tensor, Tensor]:
    """The source ids (B, S) and mask (B, S) on the model's device, checked."""
    vocab = model.config.vocab_size
    if not isinstance(input_ids, Tensor):
        if (
            isinstance(input_ids, (list, tuple))
            and input_ids
            and all(isinstance(r, (list, tuple)) and r for r in input_ids)
        ):
            if attention_mask is not None:
                raise ValueError(
                    "attention_mask goes with input_ids given as a (B, S) tensor; lists of "
                    "id lists are padded here and need none"
                )
            S = max(len(r) for r in input_ids)
            pad = model.config.pad_token_id
            attention_mask = torch.tensor([[1] * len(r) + [0] * (S - len(r)) for r in input_ids])
            input_ids = [list(r) + [pad] * (S - len(r)) for r in input_ids]
        try:
            input_ids = torch.tensor(input_ids, dtype=torch.long)
        except (TypeError, ValueError):
            raise TypeError(
                f"input_ids must be a (B, S) or (S,) integer tensor or a list of non-empty "
                f"id lists, got {type(input_ids).__name__}"
            ) from None
    if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
        raise TypeError(f"input_ids must hold integer token ids, got dtype {input_ids.dtype}")
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    if input_ids.dim() != 2 or 0 in input_ids.shape:
        raise ValueError(
            f"input_ids must be (B, S) or (S,) with B, S >= 1, got shape {tuple(input_ids.shape)}"
        )
    lo, hi = int(input_ids.min()), int(input_ids.max())
    if lo < 0 or hi >= vocab:
        raise ValueError(f"input_ids hold token id {lo if lo < 0 else hi}, expected [0, {vocab})")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if not isinstance(attention_mask, Tensor):
        raise TypeError(
            f"attention_mask must be a (B, S) tensor of 0/1, got {type(attention_mask).__name__}"
        )
    if attention_mask.dim() == 1:
        attention_mask = attention_mask[None]
    if tuple(attention_mask.shape) != tuple(input_ids.shape):
        raise ValueError(
            f"attention_mask must have input_ids' shape {tuple(input_ids.shape)}, got "
            f"{tuple(attention_mask.shape)}"
        )
    if attention_mask.dtype.is_floating_point or not bool(
        ((attention_mask == 0) | (attention_mask == 1)).all()
    ):
        raise ValueError("attention_mask must hold only 0 and 1 (1 = real token)")
    empty = (attention_mask.sum(dim=1) == 0).nonzero()
    if empty.numel():
        raise ValueError(
            f"source {int(empty[0, 0])} has no real token (its attention_mask is all 0); "
            f"expected at least one"
        )
    device = next(model.parameters()).device
    return input_ids.to(device, torch.long), attention_mask.to(device, torch.long)


def _max_length(model: EncoderDecoder, max_new_tokens: Any, max_length: Any) -> int:
    if max_length is None:
        total = checks.int_at_least("max_new_tokens", max_new_tokens, 1) + 1
    else:
        total = checks.int_at_least(
            "max_length", max_length, 2, "an int >= 2 (the decoder start token and one more)"
        )
    cfg = model.config
    if cfg.positional in ("learned", "sinusoidal") and total > cfg.max_seq_len:
        raise ValueError(
            f"max_length={total} decoder tokens (start token included) exceeds the model's "
            f"max_seq_len={cfg.max_seq_len} (positional={cfg.positional!r}); ask for fewer"
        )
    return total


def _token(name: str, value: Any, default: int, vocab: int) -> int:
    if value is None:
        return default
    return checks.int_in(name, value, 0, vocab - 1, f"a token id in [0, {vocab})")


def _greedy_or_sample(
    model: EncoderDecoder,
    cache: DecoderCache,
    *,
    max_length: int,
    min_length: int,
    no_repeat_ngram_size: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    generator: torch.Generator | None,
    eos: Tensor,
    pad: int,
    start: int,
) -> Tensor:
    R = cache.batch_size
    device = eos.device
    seqs = torch.full((R, max_length), pad, dtype=torch.long, device=device)
    seqs[:, 0] = start
    done = torch.zeros(R, dtype=torch.bool, device=device)
    cur = 1
    while cur < max_length:
        logits = model.decode_step(seqs[:, cur - 1 : cur], cache)[:, -1].float()  # (R, V)
        logits = ban_eos_before(seqs[:, :cur], logits, min_length, eos)
        logits = ban_repeated_ngrams(seqs[:, :cur], logits, no_repeat_ngram_size)
        nxt = choose_tokens(logits, temperature, top_k, top_p, generator)  # (R,)
        nxt = torch.where(done, pad, nxt)
        seqs[:, cur] = nxt
        cur += 1
        done |= torch.isin(nxt, eos)
        if bool(done.all()):  # one host sync per step
            break
    return seqs[:, :cur]


def generate_seq2seq(
    model: EncoderDecoder,
    input_ids: Any,
    max_new_tokens: int = 64,
    *,
    attention_mask: Tensor | None = None,
    max_length: int | None = None,
    min_length: int = 0,
    num_beams: int = 1,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    length_penalty: float = 1.0,
    early_stopping: bool | str = False,
    no_repeat_ngram_size: int = 0,
    num_return_sequences: int = 1,
    eos_token_id: int | list[int] | None = None,
    pad_token_id: int | None = None,
    decoder_start_token_id: int | None = None,
    decoder_only: dict[str, Any] | None = None,
) -> Tensor:
    """Decoder ids (B * num_return_sequences, L) for the sources ``input_ids`` (B, S) (a
    tensor with ``attention_mask``, or a list of id lists, padded here); the options are
    described in the module docstring. ``eos_token_id``, ``pad_token_id`` and
    ``decoder_start_token_id`` default to the model config's. ``decoder_only``: the options of
    GPT generation this was called with (each must have its unused value).

    Examples:
        >>> out = generate_seq2seq(model, src_ids, attention_mask=src_mask, num_beams=4)  # (B, S) -> (B, L)
    """
    if not isinstance(model, EncoderDecoder):
        raise TypeError(f"model must be an attnkit EncoderDecoder, got {type(model).__name__}")
    for name, value in (decoder_only or {}).items():
        if name in _DECODER_ONLY and value != _DECODER_ONLY[name]:
            raise ValueError(
                f"{name}={value!r} is an option of decoder-only (GPT) generation; an "
                f"encoder-decoder model takes none (leave it at {_DECODER_ONLY[name]!r})"
            )
    cfg = model.config
    vocab = cfg.vocab_size
    src, mask = _source(model, input_ids, attention_mask)
    total = _max_length(model, max_new_tokens, max_length)
    checks.int_at_least("min_length", min_length, 0)
    checks.int_at_least("num_beams", num_beams, 1)
    checks.flag("do_sample", do_sample)
    temperature = checks.in_range("temperature", temperature, 0.0, math.inf)
    if top_k is not None:
        checks.int_at_least("top_k", top_k, 1)
    if top_p is not None:
        top_p = checks.in_range("top_p", top_p, 0.0, 1.0, low_open=True, high_open=False)
    if seed is not None:
        checks.int_at_least("seed", seed, 0)
    length_penalty = checks.in_range("length_penalty", length_penalty, -math.inf, math.inf)
    if not (early_stopping is True or early_stopping is False or early_stopping == "never"):
        raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")
    checks.int_at_least("no_repeat_ngram_size", no_repeat_ngram_size, 0)
    limit = num_beams if num_beams > 1 else None
    checks.int_at_least("num_return_sequences", num_return_sequences, 1)
    if limit is not None and num_return_sequences > limit:
        raise ValueError(
            f"num_return_sequences={num_return_sequences} exceeds num_beams={num_beams}; "
            f"beam search returns at most num_beams hypotheses per source"
        )
    if num_beams == 1 and not do_sample and num_return_sequences != 1:
        raise ValueError(
            f"num_return_sequences={num_return_sequences} needs do_sample=True or "
            f"num_beams >= {num_return_sequences}; greedy decoding has one output per source"
        )
    if not do_sample and (temperature not in (0.0, 1.0) or top_k is not None or top_p is not None):
        raise ValueError(
            f"temperature={temperature}, top_k={top_k}, top_p={top_p} shape sampling: pass "
            f"do_sample=True (temperature 0 or 1 and no top_k/top_p without it)"
        )
    if do_sample and num_beams > 1:
        raise ValueError(f"do_sample=True with num_beams={num_beams} is not supported; pick one")
    eos_ids = sorted(eos_set(cfg.eos_token_id if eos_token_id is None else eos_token_id, vocab))
    pad = _token("pad_token_id", pad_token_id, cfg.pad_token_id, vocab)
    start = _token(
        "decoder_start_token_id", decoder_start_token_id, cfg.decoder_start_token_id, vocab
    )

    device = src.device
    eos = torch.tensor(eos_ids, dtype=torch.long, device=device)
    copies = num_beams if num_beams > 1 else num_return_sequences
    param = next(model.parameters())
    cache_dtype = (
        torch.float32
        if device.type == "cpu" and param.dtype in (torch.bfloat16, torch.float16)
        else None
    )
    was_training = model.training
    model.eval()
    try:
        # the ids returned are ordinary tensors; on the CPU the linears run prepacked
        with torch.no_grad(), packed_linears(model, rows=src.shape[0] * copies):
            memory = model.encode(src, mask)  # (B, S, C), once per source
            cache = model.new_cache(memory, mask, max_len=total, dtype=cache_dtype)
            if copies > 1:
                cache.repeat(copies)
            if num_beams > 1:
                return beam_search(
                    model,
                    cache,
                    num_beams=num_beams,
                    max_length=total,
                    min_length=min_length,
                    length_penalty=length_penalty,
                    early_stopping=early_stopping,
                    no_repeat_ngram_size=no_repeat_ngram_size,
                    num_return_sequences=num_return_sequences,
                    eos=eos,
                    pad_token_id=pad,
                    decoder_start_token_id=start,
                )
            generator = None
            if do_sample and seed is not None:
                generator = torch.Generator(device=device).manual_seed(seed)
            return _greedy_or_sample(
                model,
                cache,
                max_length=total,
                min_length=min_length,
                no_repeat_ngram_size=no_repeat_ngram_size,
                temperature=temperature if do_sample else 0.0,
                top_k=top_k,
                top_p=top_p,
                generator=generator,
                eos=eos,
                pad=pad,
                start=start,
            )
    finally:
        model.train(was_training)
