"""Text generation with a KV cache: greedy, temperature, top-k, top-p, repetition penalty,
stop strings and streaming.

    >>> import attnkit
    >>> model = attnkit.load("runs/char")
    >>> ids = attnkit.generate(model, "ROMEO:", max_new_tokens=100, temperature=0.8, top_k=50,
    ...                        seed=0)                     # prompt ids + new ids, list[int]
    >>> print(model.tokenizer.decode(ids))
    >>> for tok in attnkit.generation.stream(model, "ROMEO:", max_new_tokens=100):
    ...     print(tok.text, end="", flush=True)            # text as it becomes printable

How one step picks the next token from the last position's logits (in float32):

1. ``repetition_penalty`` p (CTRL, Keskar et al. 2019): for every token id already in the row
   (prompt or generated), a positive logit is divided by p and a negative one multiplied by p;
   p > 1 discourages repeats, p = 1 is off.
2. ``temperature`` 0 takes the arg-max (greedy; ties go to the lowest id). Otherwise the
   logits are divided by the temperature, and
3. ``top_k`` keeps the k largest logits (ties with the k-th are kept too),
4. ``top_p`` keeps the smallest set of most likely tokens whose probability (after top-k,
   renormalised) sums to at least p; the most likely token is always kept,
5. a token is drawn from the softmax over what is kept, with a ``torch.Generator`` seeded from
   ``seed`` (the global RNG when ``seed`` is None), so a seed reproduces a sample.

A row ends when it emits one of ``eos_token_id`` (kept in the output), when its generated text
first contains one of the ``stop`` strings (the token that completes the stop string is kept,
so the decoded text contains it: cut with ``text.split(stop)[0]`` when unwanted), when its new
tokens end with one of the ``stop`` token-id sequences (kept too; a stop is a string, a list
of ids, or a list of either), or after ``max_new_tokens``.

Batches: prompts of different lengths are left-padded into one (B, P) batch with an attention
mask and per-row positions, so every row's tokens are exactly those it would get alone. The KV
cache is allocated once for P + max_new_tokens positions (or the model's context with
``context="slide"``) and written in place; each step feeds one token per row, runs attention
over the filled part of the cache and computes the LM head for the last position only.

``context``: with "error" (default) a prompt plus ``max_new_tokens`` longer than the model's
``max_seq_len`` is an error for models with learned or sinusoidal positions. With "slide" the
oldest half of each row is dropped when the context is full and the rest is encoded again, so
each new token sees between max_seq_len / 2 and max_seq_len earlier tokens (a longer prompt is
read from its last max_seq_len tokens; the returned ids still hold all of it).

Int8: :func:`quantize_int8` turns a model's block and LM-head linears into weight-only int8
(per-row scales) for faster memory-bound decoding on CPU.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from attnkit import native as kernels

CONTEXT_MODES = ("error", "slide")


@dataclass(frozen=True)
class GeneratedToken:
    """One new token of one row: its id, the step (0 = first new token) and the text it makes
    printable (``None`` without a tokenizer; may be "" while a multi-byte character is
    incomplete, and then holds all of it at the token that completes it)."""

    row: int
    step: int
    token_id: int
    text: str | None


# --------------------------------------------------------------------------------------------
# token choice
# --------------------------------------------------------------------------------------------
def apply_repetition_penalty(
    logits: torch.Tensor, seen: torch.Tensor, penalty: float
) -> torch.Tensor:
    """logits (B, V); seen (B, V) bool, True for ids already in the row. Returns new logits:
    seen positive logits / penalty, seen negative logits * penalty."""
    if penalty == 1.0:
        return logits
    scaled = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, scaled, logits)


def filter_logits(
    logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None
) -> torch.Tensor:
    """logits (B, V) -> logits with the tokens outside top-k / top-p set to -inf."""
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V)
        probs = torch.softmax(sorted_logits, dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs  # mass of the more likely tokens
        drop_sorted = before >= top_p
        drop_sorted[:, 0] = False  # the most likely token always stays
        drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def choose_tokens(
    logits: torch.Tensor,
    temperature: float,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """(B, V) logits -> (B,) token ids: arg-max for temperature 0, else a draw from the
    filtered, tempered softmax."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = filter_logits(logits / temperature, top_k, top_p)
    probs = torch.softmax(logits, dim=-1)  # (B, V)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


# --------------------------------------------------------------------------------------------
# argument checks
# --------------------------------------------------------------------------------------------
def _int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


def _float(
    name: str,
    value: Any,
    low: float,
    high: float = math.inf,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and (
            value < high if high_open else value <= high
        )
    if not ok:
        lo = "(" if low_open else "["
        hi = ")" if high_open or high == math.inf else "]"
        raise ValueError(f"{name} must be a number in {lo}{low:g}, {high:g}{hi}, got {value!r}")
    return float(value)


def _check_model(model: Any) -> None:
    cfg = getattr(model, "config", None)
    if cfg is None or getattr(cfg, "arch", None) != "gpt" or not hasattr(model, "hidden_states"):
        raise TypeError(
            f"model must be an attnkit GPT (attnkit.load(DIR) of a GPT or HF GPT-2 "
            f"checkpoint), got {type(model).__name__}"
            + (f" with arch={cfg.arch!r}" if cfg is not None else "")
        )
    if getattr(model, "lm_head", None) is None:
        raise ValueError("model has no LM head (config.head='none'); generation needs head='lm'")


def _prompt_rows(prompt: Any, tokenizer: Any, vocab: int) -> tuple[list[list[int]], bool]:
    """The prompt as token-id rows, and whether it was a batch."""
    if isinstance(prompt, torch.Tensor):
        if (
            prompt.dtype.is_floating_point
            or prompt.dtype == torch.bool
            or prompt.dim() not in (1, 2)
        ):
            raise ValueError(
                f"prompt tensor must hold integer token ids, shape (T,) or (B, T); "
                f"got shape {tuple(prompt.shape)} dtype {prompt.dtype}"
            )
        batched = prompt.dim() == 2
        rows = prompt.tolist() if batched else [prompt.tolist()]
    elif isinstance(prompt, str):
        batched, rows = False, [prompt]
    elif isinstance(prompt, (list, tuple)):
        if not prompt:
            raise ValueError("prompt is empty; expected text, token ids or a list of them")
        if all(isinstance(p, int) and not isinstance(p, bool) for p in prompt):
            batched, rows = False, [list(prompt)]
        elif all(isinstance(p, str) for p in prompt):
            batched, rows = True, list(prompt)
        elif all(isinstance(p, (list, tuple)) for p in prompt):
            batched, rows = True, [list(p) for p in prompt]
        else:
            raise ValueError(
                f"prompt must be a str, a list of token ids, a list of str or a "
                f"list of token-id lists, got a list of "
                f"{sorted({type(p).__name__ for p in prompt})}"
            )
    else:
        raise ValueError(
            f"prompt must be text, token ids (list or tensor) or a list of them, got "
            f"{type(prompt).__name__}"
        )
    out = []
    for i, row in enumerate(rows):
        if isinstance(row, str):
            if tokenizer is None:
                raise ValueError(
                    "a text prompt needs a tokenizer: the model has none "
                    "(model.tokenizer) and no tokenizer= was given"
                )
            row = tokenizer.encode(row, add_special_tokens=False).ids
        if not row:
            raise ValueError(f"prompt {i} is empty (no tokens); expected at least one token")
        bad = [
            t for t in row if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab
        ]
        if bad:
            raise ValueError(f"prompt {i} holds token id {bad[0]!r}, expected ints in [0, {vocab})")
        out.append(list(row))
    return out, batched


def _eos_set(eos_token_id: Any, vocab: int) -> set[int]:
    if eos_token_id is None:
        return set()
    ids = [eos_token_id] if not isinstance(eos_token_id, (list, tuple, set)) else list(eos_token_id)
    for t in ids:
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab:
            raise ValueError(
                f"eos_token_id must be an int or list of ints in [0, {vocab}), got {eos_token_id!r}"
            )
    return set(ids)


def _stop_list(stop: Any, vocab: int) -> tuple[list[str], list[tuple[int, ...]]]:
    """(stop strings, stop token-id sequences) from ``stop``: a string, a list of token ids, or
    a list mixing strings and lists of token ids."""
    if stop is None:
        return [], []
    bad = ValueError(
        f"stop must be a non-empty string, a non-empty list of token ids in "
        f"[0, {vocab}), or a list of those, got {stop!r}"
    )
    if isinstance(stop, str):
        items = [stop]
    elif (
        isinstance(stop, (list, tuple))
        and stop
        and all(isinstance(t, int) and not isinstance(t, bool) for t in stop)
    ):
        items = [tuple(stop)]  # one token-id sequence
    elif isinstance(stop, (list, tuple)):
        items = list(stop)
    else:
        raise bad
    strings, sequences = [], []
    for item in items:
        if isinstance(item, str) and item:
            strings.append(item)
        elif (
            isinstance(item, (list, tuple))
            and item
            and all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab for t in item)
        ):
            sequences.append(tuple(item))
        else:
            raise bad
    return strings, sequences


# --------------------------------------------------------------------------------------------
# incremental detokenisation
# --------------------------------------------------------------------------------------------
class _TextTail:
    """Turns a row's new token ids into text as it becomes printable. Decodes a short window
    of ids (not the whole row) per token; text ending in U+FFFD (an incomplete UTF-8 sequence
    of byte-level tokens) is held until the next token completes it."""

    def __init__(self, tokenizer: Any, context: list[int]):
        self.tok = tokenizer
        self.ids = list(context[-4:])  # a little left context, for tokenizers that need it
        self.prefix = 0  # ids[prefix:read] is decoded as context for the next token
        self.read = len(self.ids)  # ids[:read] are already printed
        self.text = ""  # everything printed so far

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        before = self.tok.decode(self.ids[self.prefix : self.read])
        now = self.tok.decode(self.ids[self.prefix :])
        if len(now) > len(before) and not now.endswith("\ufffd"):
            new = now[len(before) :]
            self.prefix, self.read = self.read, len(self.ids)
            self.text += new
            return new
        return ""


# --------------------------------------------------------------------------------------------
# the decoding loop
# --------------------------------------------------------------------------------------------
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

    def __init__(self, model, batch: _Batch, use_cache: bool):
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
        self.cache = model.new_cache(max_len=batch.capacity, dtype=dtype) if use_cache else None

    def _logits(self, ids, mask, positions, cache) -> torch.Tensor:
        h = self.model.hidden_states(
            ids, attention_mask=mask, position_ids=positions, cache=cache
        )  # (B, T, C)
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
            return self._logits(b.ids[:, :T], b.mask[:, :T], b.positions(0, T), self.cache)
        return self._logits(b.ids[:, :T], None, None, self.cache)

    def step(self) -> torch.Tensor:
        """Logits after the batch's newest token."""
        if self.cache is None:
            return self.full()
        b = self.batch
        T = b.length
        if b.padded:
            pos = (b.row_len - 1)[:, None]  # (B, 1)
            return self._logits(b.ids[:, T - 1 : T], b.mask[:, :T], pos, self.cache)
        return self._logits(b.ids[:, T - 1 : T], None, None, self.cache)


def _capacity(model, rows: list[list[int]], max_new_tokens: int, context: str) -> int:
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


def stream(
    model,
    prompt,
    max_new_tokens: int = 64,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    stop: str | Sequence[Any] | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    seed: int | None = None,
    tokenizer: Any = None,
    use_cache: bool = True,
    context: str = "error",
) -> Iterator[GeneratedToken]:
    """Like :func:`generate`, but an iterator over the new tokens as they are made: one
    :class:`GeneratedToken` per live row per step, rows in order. Arguments are checked when
    this is called, before the first token."""
    _check_model(model)
    vocab = model.config.vocab_size
    _int("max_new_tokens", max_new_tokens, 1)
    temperature = _float("temperature", temperature, 0.0)
    if top_k is not None:
        _int("top_k", top_k, 1)
    if top_p is not None:
        top_p = _float("top_p", top_p, 0.0, 1.0, low_open=True)
    repetition_penalty = _float("repetition_penalty", repetition_penalty, 0.0, low_open=True)
    if seed is not None:
        _int("seed", seed, 0)
    if context not in CONTEXT_MODES:
        raise ValueError(f"context must be one of {CONTEXT_MODES}, got {context!r}")
    if not isinstance(use_cache, bool):
        raise ValueError(f"use_cache must be a bool, got {use_cache!r}")
    stops, stop_ids = _stop_list(stop, vocab)
    eos = _eos_set(eos_token_id, vocab)
    tok = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if stops and tok is None:
        raise ValueError(
            f"stop={stops!r} needs a tokenizer to decode the output: the model has "
            f"none (model.tokenizer) and no tokenizer= was given"
        )
    rows, _ = _prompt_rows(prompt, tok, vocab)
    capacity = _capacity(model, rows, max_new_tokens, context)
    return _run(
        model,
        rows,
        max_new_tokens,
        temperature,
        top_k,
        top_p,
        repetition_penalty,
        stops,
        stop_ids,
        eos,
        seed,
        tok,
        use_cache,
        context,
        capacity,
    )


def _run(
    model,
    rows,
    max_new_tokens,
    temperature,
    top_k,
    top_p,
    penalty,
    stops,
    stop_ids,
    eos,
    seed,
    tok,
    use_cache,
    context,
    capacity,
) -> Iterator[GeneratedToken]:
    param = next(model.parameters())
    device = param.device
    B = len(rows)
    pad = min(eos) if eos else 0
    generator = None
    if seed is not None and temperature > 0:
        generator = torch.Generator(device=device).manual_seed(seed)
    tails = [_TextTail(tok, r) for r in rows] if tok is not None else None
    longest_stop = max((len(s) for s in stops), default=0)
    generated: list[list[int]] = [[] for _ in range(B)]
    live = [True] * B
    was_training = model.training
    model.eval()
    skinny = _skinny_linears(model, pack=B == 1 and max_new_tokens >= _PACK_MIN_TOKENS)
    skinny.__enter__()
    try:
        with torch.inference_mode():
            batch = _Batch([r[-capacity:] for r in rows], capacity, device, pad)
            dec = _Decoder(model, batch, use_cache)
            seen = None
            if penalty != 1.0:
                seen = torch.zeros(B, model.config.vocab_size, dtype=torch.bool, device=device)
                for i, r in enumerate(rows):  # (B, V): True for ids already in the row
                    seen[i, torch.tensor(r, dtype=torch.long, device=device)] = True
            logits = dec.prefill()  # (B, V)
        for step in range(max_new_tokens):
            with torch.inference_mode():
                if seen is not None:
                    logits = apply_repetition_penalty(logits, seen, penalty)
                nxt = choose_tokens(logits, temperature, top_k, top_p, generator)  # (B,)
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
                elif stop_ids and any(
                    len(q) <= len(generated[i]) and tuple(generated[i][-len(q) :]) == q
                    for q in stop_ids
                ):
                    live[i] = False
                elif stops:
                    tail = tails[i].text[-(longest_stop + len(text)) :]
                    if any(s in tail for s in stops):
                        live[i] = False
            yield from events
            if not any(live) or step == max_new_tokens - 1:
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
        skinny.__exit__(None, None, None)
        model.train(was_training)


# Decoding a few rows at a time is a skinny matrix product: x (M, K) with M = batch size
# against each weight W (N, K). For 2 <= M <= 32 on CPU, MKL's x @ W^T packs the whole weight
# before using it, about twice the memory traffic of W @ x^T (weights streamed as they are,
# only the small x packed): measured here with GPT-2 124M at batch 8, the LM head took 40 ms
# as x @ W^T and 21 ms as W @ x^T, the 48 block linears 54 ms and 44 ms. The sums run in a
# different order, so results match F.linear to float rounding, not bit for bit.
_SKINNY_MAX_ROWS = 32
# One row at a time (batch 1) is a matrix-vector product. MKL's packed GEMM (the weight
# reordered once for one row, as Inductor does for frozen linears) streams it faster than
# sgemv: measured here, a 3072x768 weight at 14.5 GB/s packed against 8.4 GB/s, the 49
# linears of GPT-2 124M in 54 ms per token against 58-67 ms. Packing costs a copy of the
# weights and about 0.4 s for GPT-2 124M, so it is done for batch-1 decoding of at least
# _PACK_MIN_TOKENS tokens, and the copies are dropped when generation ends.
_PACK_MIN_TOKENS = 16
# Both are beaten by attnkit's own kernel (attnkit.native, built with the system C compiler
# on first use) for 1-24 rows: it streams each weight once with prefetching. Measured here on
# 40 3072x768 weights: 1 row 14.7 ms against 25.6 ms for W @ x^T, 8 rows 17.7 against 33.2,
# 24 rows 43.3 against 55.6; at 32 rows the two are even. Without the kernel the paths above
# are used.
_NATIVE_MAX_ROWS = 24
# bfloat16 weights use the kernel for longer inputs too (prompts), in blocks of this many rows:
# measured here on GPT-2 124M, a 32-token prompt took 265 ms through PyTorch's bfloat16 addmm.
_NATIVE_PREFILL_ROWS = 64


def _native_product(native: kernels.SkinnyLinear, x: torch.Tensor, rows: int) -> torch.Tensor:
    """x (..., K) through the native kernel, _NATIVE_PREFILL_ROWS rows per call; returns
    (..., M) in x's dtype."""
    x2 = x.reshape(rows, x.shape[-1])
    if rows <= _NATIVE_PREFILL_ROWS:
        y = native(x2)
    else:
        y = torch.cat(
            [native(x2[i : i + _NATIVE_PREFILL_ROWS]) for i in range(0, rows, _NATIVE_PREFILL_ROWS)]
        )
    return y.to(x.dtype).view(*x.shape[:-1], native.M)


def _can_pack() -> bool:
    return bool(getattr(torch._C, "has_mkl", False)) and hasattr(torch.ops.mkl, "_mkl_linear")


def _skinny_forward(
    module: torch.nn.Linear,
    packed: torch.Tensor | None = None,
    native: kernels.SkinnyLinear | None = None,
):
    plain = torch.nn.Linear.forward

    def forward(x: torch.Tensor) -> torch.Tensor:
        w = module.weight
        rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
        if x.device.type != "cpu" or x.dtype != w.dtype:
            return plain(module, x)
        # float32 or bfloat16 weights; with bfloat16 also prompts (prefill): where the CPU has no
        # bfloat16 arithmetic PyTorch's product is emulated, and the kernel is faster
        if native is not None and rows and (rows <= _NATIVE_MAX_ROWS or w.dtype == torch.bfloat16):
            return _native_product(native, x, rows)
        if w.dtype != torch.float32:
            return plain(module, x)
        if rows == 1 and packed is not None:
            y = torch.ops.mkl._mkl_linear(x.reshape(1, x.shape[-1]), packed, w, module.bias, 1)
            return y.view(*x.shape[:-1], w.shape[0])
        if not (2 <= rows <= _SKINNY_MAX_ROWS):
            return plain(module, x)
        x2 = x.reshape(rows, x.shape[-1])  # (M, K)
        if module.bias is None:
            y = torch.mm(w, x2.t())  # (N, M)
        else:
            y = torch.addmm(module.bias[:, None], w, x2.t())  # (N, M)
        return y.t().contiguous().view(*x.shape[:-1], w.shape[0])  # (..., N)

    return forward


@contextlib.contextmanager
def _skinny_linears(model, pack: bool = False):
    """Route the plain ``nn.Linear`` layers of ``model`` through the skinny product while
    decoding (with ``pack``, one-row products through MKL's packed GEMM); the layers are
    restored on exit."""
    patched = [
        m for m in model.modules() if type(m) is torch.nn.Linear and "forward" not in vars(m)
    ]
    pack = pack and _can_pack()
    for m in patched:
        packed = None
        native = kernels.SkinnyLinear.create(m.weight, m.bias)
        if (
            native is None
            and pack
            and m.weight.device.type == "cpu"
            and m.weight.dtype == torch.float32
        ):
            with torch.no_grad():
                packed = torch.ops.mkl._mkl_reorder_linear_weight(m.weight.detach(), 1)
        m.forward = _skinny_forward(m, packed, native)
    try:
        yield
    finally:
        for m in patched:
            del m.forward


def _slide(batch: _Batch, rows, generated, pad) -> None:
    """Keep the newest half of every row's tokens (prompt and generated), left-padded."""
    keep = max(1, batch.capacity // 2)
    kept = [(rows[i] + generated[i])[-keep:] for i in range(len(rows))]
    fresh = _Batch(kept, batch.capacity, batch.ids.device, pad)
    batch.__dict__.update(fresh.__dict__)


def generate(
    model,
    prompt,
    max_new_tokens: int = 64,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    stop: str | Sequence[Any] | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    seed: int | None = None,
    tokenizer: Any = None,
    callback: Callable[[GeneratedToken], Any] | None = None,
    use_cache: bool = True,
    context: str = "error",
) -> list[int] | list[list[int]]:
    """Continue ``prompt`` with up to ``max_new_tokens`` tokens from a GPT ``model``.

    prompt: text (needs ``tokenizer`` or ``model.tokenizer``), token ids (list or 1-D tensor),
        or a batch: a list of texts, a list of id lists (any lengths) or a (B, T) tensor.
    temperature: 0 for greedy decoding; top_k, top_p, repetition_penalty, stop, eos_token_id
        and seed as described in the module docstring.
    callback: called with each :class:`GeneratedToken` as soon as it is chosen (streaming).
    use_cache: False recomputes the whole sequence every step (the reference for the cache).
    context: "error" or "slide" (see the module docstring).

    Returns the prompt's token ids followed by the new ones: a ``list[int]`` for one prompt, a
    list of them (one per prompt, without padding) for a batch.
    """
    if callback is not None and not callable(callback):
        raise ValueError(f"callback must be callable, got {callback!r}")
    _check_model(model)
    tok = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    rows, batched = _prompt_rows(prompt, tok, model.config.vocab_size)
    out = [list(r) for r in rows]
    for event in stream(
        model,
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


# --------------------------------------------------------------------------------------------
# int8 weight-only linears
# --------------------------------------------------------------------------------------------
class Int8Linear(torch.nn.Module):
    """A linear layer with int8 weights: one symmetric scale per output row, w ~ q * scale.

    ``forward`` computes x W^T (+ bias) and returns the input's dtype. On CPU, up to
    ``_NATIVE_MAX_ROWS`` rows at a time (decoding) go through attnkit's native kernel
    (:mod:`attnkit.native`: float32 activations and scales, sums in float32); other calls use
    ``torch._weight_int8pack_mm`` in bfloat16 (activations and scales rounded to bfloat16).
    Weights take a quarter of their float32 memory, which is what a decoding step mostly reads.
    """

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        w = linear.weight.detach().float()  # (N, K)
        if w.shape[1] % 8:
            raise ValueError(f"Int8Linear needs in_features divisible by 8, got {w.shape[1]}")
        scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0  # (N,)
        q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
        self.in_features, self.out_features = w.shape[1], w.shape[0]
        self.register_buffer("weight", q.to(linear.weight.device))
        self.register_buffer("scale", scale.to(torch.bfloat16).to(linear.weight.device))
        self.register_buffer("scale_f32", scale.to(linear.weight.device), persistent=False)
        bias = linear.bias
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.in_features
        if (
            x.device.type == "cpu"
            and 1 <= rows <= _NATIVE_MAX_ROWS
            and not (torch.is_grad_enabled() and x.requires_grad)
        ):
            native = self._native()
            if native is not None:
                return _native_product(native, x, rows)
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16)  # (M, K)
        y = torch._weight_int8pack_mm(flat, self.weight, self.scale).to(x.dtype)  # (M, N)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*x.shape[:-1], self.out_features)

    def __getstate__(self):  # the native plan holds raw pointers: never copied or pickled
        state = self.__dict__.copy()
        state.pop("_native_cache", None)
        return state

    def _native(self) -> kernels.SkinnyLinear | None:
        """The native product for the current tensors (rebuilt when they were moved)."""
        key = (
            self.weight.data_ptr(),
            self.scale_f32.data_ptr(),
            None if self.bias is None else self.bias.data_ptr(),
        )
        cached = self.__dict__.get("_native_cache")
        if cached is None or cached[0] != key:
            cached = (key, kernels.SkinnyLinear.create(self.weight, self.bias, self.scale_f32))
            self.__dict__["_native_cache"] = cached
        return cached[1]

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """Replace, in place, the linear layers of ``model``'s blocks and its LM head by
    :class:`Int8Linear` (weight-only int8, per-row scales); returns ``model``. Embeddings,
    norms and the KV cache keep their dtype; a tied LM head gets its own int8 copy.
    Linears whose input width is not a multiple of 8 stay as they are."""
    if not hasattr(torch, "_weight_int8pack_mm"):
        raise RuntimeError(
            f"int8 decoding needs torch._weight_int8pack_mm, which torch {torch.__version__} lacks"
        )
    targets = [
        (name, mod)
        for name, mod in model.named_modules()
        if isinstance(mod, torch.nn.Linear)
        and mod.in_features % 8 == 0
        and (name.startswith("blocks.") or name.startswith("lm_head."))
    ]
    if not targets:
        raise ValueError(
            f"{type(model).__name__} has no linear layers to quantize in blocks.* or lm_head.*"
        )
    for name, mod in targets:
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name), attr, Int8Linear(mod))
    return model
