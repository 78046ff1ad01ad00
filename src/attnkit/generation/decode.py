"""The KV-cached decoding loop: batching of prompts, prefill, one token per row per step,
:func:`stream` and :func:`generate` (see :mod:`attnkit.generation` for the rules)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from tokenizers import Tokenizer

from attnkit.attention.kv_cache import KVCache
from attnkit.generation.checks import Options, check_model, check_options, prompt_rows
from attnkit.generation.detok import TextTail, hits_stop_ids, hits_stop_string
from attnkit.generation.sampling import apply_repetition_penalty, choose_tokens
from attnkit.generation.seq2seq import generate_seq2seq
from attnkit.models.encdec import EncoderDecoder
from attnkit.models.gpt import GPT
from attnkit.native.linear import PACK_MIN_TOKENS, decoding_linears

__all__ = ["GeneratedToken", "generate", "stream"]


@dataclass(frozen=True)
class GeneratedToken:
    """One new token of one row: its id, the step (0 = first new token) and the text it makes
    printable (``None`` without a tokenizer; may be "" while a multi-byte character is
    incomplete, and then holds all of it at the token that completes it).

    Examples:
        >>> [t.text for t in stream(model, "ROMEO:", 5)]  # each a GeneratedToken
    """

    row: int
    step: int
    token_id: int
    text: str | None


class _Batch:
    """Left-padded token rows with their attention mask and positions, on one device.

    ids (B, cap) hold every row right-aligned at ``self.length`` (the padded length so far);
    mask (B, cap) is 1 for real tokens; row_len (B,) counts each row's real tokens.
    """

    def __init__(self, rows: list[list[int]], capacity: int, device: torch.device, pad: int):
        B = len(rows)
        P = max(len(r) for r in rows)
        self.capacity = capacity
        self.ids = torch.full((B, capacity), pad, dtype=torch.long, device=device)  # (B, cap)
        self.mask = torch.ones(B, capacity, dtype=torch.long, device=device)  # (B, cap)
        for i, r in enumerate(rows):
            self.ids[i, P - len(r) : P] = torch.tensor(r, dtype=torch.long)
            self.mask[i, : P - len(r)] = 0
        self.length = P
        self.row_len = torch.tensor([len(r) for r in rows], dtype=torch.long, device=device)
        self.padded = any(len(r) != P for r in rows)

    def positions(self, start: int, end: int) -> torch.Tensor:
        """(B, end - start) positions of the real tokens (pads get 0)."""
        pos = torch.cumsum(self.mask[:, :end], dim=1) - 1  # (B, end)
        return pos[:, start:end].clamp(min=0)

    def append(self, tokens: torch.Tensor) -> None:
        self.ids[:, self.length] = tokens
        self.length += 1
        self.row_len += 1


class _Decoder:
    """Runs the model on a _Batch: a prefill, then one token per row per step."""

    def __init__(self, model: GPT, batch: _Batch, use_cache: bool):
        self.model = model
        self.batch = batch
        param = next(model.parameters())
        # a half-precision model on the CPU keeps its cache in float32: the CPU's attention
        # kernels are several times faster in float32 than in bfloat16 at one query
        dtype = (
            torch.float32
            if param.device.type == "cpu" and param.dtype in (torch.bfloat16, torch.float16)
            else None
        )
        self.cache: list[KVCache] | None = (
            model.new_cache(max_len=batch.capacity, dtype=dtype) if use_cache else None
        )

    def _logits(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor | None,
        positions: torch.Tensor | None,
    ) -> torch.Tensor:
        h = self.model.hidden_states(
            ids, attention_mask=mask, position_ids=positions, cache=self.cache
        )  # (B, T, C)
        assert self.model.lm_head is not None  # checked before decoding starts
        return self.model.lm_head(h[:, -1]).float()  # (B, V), last position only

    def prefill(self) -> torch.Tensor:
        if self.cache is not None:
            for c in self.cache:
                c.reset()
        return self.full()

    def full(self) -> torch.Tensor:
        """Logits after the whole batch so far (uncached, or filling an empty cache)."""
        b = self.batch
        T = b.length
        if b.padded:
            return self._logits(b.ids[:, :T], b.mask[:, :T], b.positions(0, T))
        return self._logits(b.ids[:, :T], None, None)

    def step(self) -> torch.Tensor:
        """Logits after the batch's newest token."""
        if self.cache is None:
            return self.full()
        b = self.batch
        T = b.length
        if b.padded:
            pos = (b.row_len - 1)[:, None]  # (B, 1)
            return self._logits(b.ids[:, T - 1 : T], b.mask[:, :T], pos)
        return self._logits(b.ids[:, T - 1 : T], None, None)


def _capacity(model: GPT, rows: list[list[int]], max_new_tokens: int, context: str) -> int:
    cfg = model.config
    need = max(len(r) for r in rows) + max_new_tokens
    limited = cfg.positional in ("learned", "sinusoidal")
    if context == "slide":  # longer prompts are cut to their last max_seq_len tokens
        return min(need, cfg.max_seq_len)
    if limited and need > cfg.max_seq_len:
        raise ValueError(
            f"prompt ({max(len(r) for r in rows)} tokens, padded) + max_new_tokens="
            f"{max_new_tokens} = {need} exceeds the model's max_seq_len="
            f"{cfg.max_seq_len}; shorten them or pass context='slide'"
        )
    return need


def _slide(batch: _Batch, rows: list[list[int]], generated: list[list[int]], pad: int) -> None:
    """Keep the newest half of every row's tokens (prompt and generated), left-padded."""
    keep = max(1, batch.capacity // 2)
    kept = [(rows[i] + generated[i])[-keep:] for i in range(len(rows))]
    fresh = _Batch(kept, batch.capacity, batch.ids.device, pad)
    batch.__dict__.update(fresh.__dict__)


def stream(
    model: GPT,
    prompt: Any,
    max_new_tokens: int = 64,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    stop: str | Sequence[Any] | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    seed: int | None = None,
    tokenizer: Tokenizer | None = None,
    use_cache: bool = True,
    context: str = "error",
) -> Iterator[GeneratedToken]:
    """Like :func:`generate`, but an iterator over the new tokens as they are made: one
    :class:`GeneratedToken` per live row per step, rows in order. Arguments are checked when
    this is called, before the first token.

    Examples:
        >>> for t in stream(attnkit.load("runs/char"), "ROMEO:", 100, seed=0): print(t.text, end="")
    """
    gpt = check_model(model)
    vocab = gpt.config.vocab_size
    opts = check_options(
        vocab,
        max_new_tokens,
        temperature,
        top_k,
        top_p,
        repetition_penalty,
        stop,
        eos_token_id,
        seed,
        use_cache,
        context,
    )
    tok = tokenizer if tokenizer is not None else gpt.meta.tokenizer
    if opts.stops and tok is None:
        raise ValueError(
            f"stop={list(opts.stops)!r} needs a tokenizer to decode the output: the model has "
            f"none (model.meta.tokenizer) and no tokenizer= was given"
        )
    rows, _ = prompt_rows(prompt, tok, vocab)
    capacity = _capacity(gpt, rows, opts.max_new_tokens, opts.context)
    return _run(gpt, rows, opts, tok, capacity)


def _run(
    model: GPT, rows: list[list[int]], o: Options, tok: Tokenizer | None, capacity: int
) -> Iterator[GeneratedToken]:
    param = next(model.parameters())
    device = param.device
    B = len(rows)
    eos = o.eos
    pad = min(eos) if eos else 0
    generator = None
    if o.seed is not None and o.temperature > 0:
        generator = torch.Generator(device=device).manual_seed(o.seed)
    tails = [TextTail(tok, r) for r in rows] if tok is not None else None
    longest_stop = max((len(s) for s in o.stops), default=0)
    generated: list[list[int]] = [[] for _ in range(B)]
    live = [True] * B
    was_training = model.training
    model.eval()
    pack = B == 1 and o.max_new_tokens >= PACK_MIN_TOKENS
    try:
        with decoding_linears(model, pack=pack):
            with torch.inference_mode():
                batch = _Batch([r[-capacity:] for r in rows], capacity, device, pad)
                dec = _Decoder(model, batch, o.use_cache)
                seen = None
                if o.repetition_penalty != 1.0:
                    seen = torch.zeros(B, model.config.vocab_size, dtype=torch.bool, device=device)
                    for i, r in enumerate(rows):  # (B, V): True for ids already in the row
                        seen[i, torch.tensor(r, dtype=torch.long, device=device)] = True
                logits = dec.prefill()  # (B, V)
            for step in range(o.max_new_tokens):
                with torch.inference_mode():
                    if seen is not None:
                        logits = apply_repetition_penalty(logits, seen, o.repetition_penalty)
                    nxt = choose_tokens(logits, o.temperature, o.top_k, o.top_p, generator)  # (B,)
                    ids = nxt.tolist()
                events = []
                for i, t in enumerate(ids):
                    if not live[i]:
                        continue
                    generated[i].append(t)
                    text = tails[i].push(t) if tails is not None else None
                    events.append(GeneratedToken(i, step, t, text))
                    if t in eos:
                        live[i] = False
                    elif o.stop_ids and hits_stop_ids(generated[i], o.stop_ids):
                        live[i] = False
                    elif o.stops and tails is not None and text is not None:
                        if hits_stop_string(tails[i], text, o.stops, longest_stop):
                            live[i] = False
                yield from events
                if not any(live) or step == o.max_new_tokens - 1:
                    break
                with torch.inference_mode():
                    if not all(live):  # finished rows keep decoding a pad token, unread
                        nxt = torch.where(
                            torch.tensor(live, device=device), nxt, torch.full_like(nxt, pad)
                        )
                    if batch.length == batch.capacity:  # only with context="slide"
                        _slide(batch, rows, generated, pad)
                        logits = dec.prefill()
                    else:
                        batch.append(nxt)
                        logits = dec.step()
                    if seen is not None:
                        seen.scatter_(1, nxt[:, None], True)
    finally:
        model.train(was_training)


def generate(
    model: GPT | EncoderDecoder,
    prompt: Any,
    max_new_tokens: int = 64,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    stop: str | Sequence[Any] | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    seed: int | None = None,
    tokenizer: Tokenizer | None = None,
    callback: Callable[[GeneratedToken], Any] | None = None,
    use_cache: bool = True,
    context: str = "error",
    **seq2seq_options: Any,
) -> list[int] | list[list[int]] | torch.Tensor:
    """Continue ``prompt`` with up to ``max_new_tokens`` tokens from a GPT ``model``.

    For an encoder-decoder ``model``, ``prompt`` is the source ids (B, S) and the call is
    :func:`~attnkit.generation.seq2seq.generate_seq2seq` (``attention_mask=``, ``num_beams=``
    and its other options in ``seq2seq_options``), which returns the decoder ids (B, L).

    prompt: text (needs ``tokenizer`` or ``model.meta.tokenizer``), token ids (list or 1-D
        tensor), or a batch: a list of texts, a list of id lists (any lengths) or a (B, T)
        tensor.
    temperature: 0 for greedy decoding; top_k, top_p, repetition_penalty, stop, eos_token_id
        and seed as described in :mod:`attnkit.generation`.
    callback: called with each :class:`GeneratedToken` as soon as it is chosen (streaming).
    use_cache: False recomputes the whole sequence every step (the reference for the cache).
    context: "error" or "slide" (see :mod:`attnkit.generation`).

    Returns the prompt's token ids followed by the new ones: a ``list[int]`` for one prompt, a
    list of them (one per prompt, without padding) for a batch.

    Examples:
        >>> ids = generate(attnkit.load("runs/char"), "ROMEO:", max_new_tokens=50, top_k=40, seed=0)
    """
    if isinstance(model, EncoderDecoder):
        gpt_only: dict[str, Any] = dict(repetition_penalty=repetition_penalty, stop=stop)
        gpt_only.update(tokenizer=tokenizer)
        gpt_only.update(callback=callback, use_cache=use_cache, context=context)
        return generate_seq2seq(
            model,
            prompt,
            max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            eos_token_id=cast(Any, eos_token_id),
            seed=seed,
            decoder_only=gpt_only,
            **seq2seq_options,
        )
    if seq2seq_options:
        raise TypeError(
            f"generate() got {sorted(seq2seq_options)}: options of encoder-decoder models; "
            f"this model is a {type(model).__name__}"
        )
    if callback is not None and not callable(callback):
        raise ValueError(f"callback must be callable, got {callback!r}")
    gpt = check_model(model)
    tok = tokenizer if tokenizer is not None else gpt.meta.tokenizer
    rows, batched = prompt_rows(prompt, tok, gpt.config.vocab_size)
    out = [list(r) for r in rows]
    for event in stream(
        gpt,
        rows,
        max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        repetition_penalty=repetition_penalty,
        stop=stop,
        eos_token_id=eos_token_id,
        seed=seed,
        tokenizer=tokenizer,
        use_cache=use_cache,
        context=context,
    ):
        out[event.row].append(event.token_id)
        if callback is not None:
            callback(event)
    return out if batched else out[0]
