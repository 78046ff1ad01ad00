"""Text generation with a KV cache: greedy, temperature, top-k, top-p, repetition penalty,
stop strings and streaming.

    >>> import attnkit
    >>> model = attnkit.load("runs/char")
    >>> ids = attnkit.generate(model, "ROMEO:", max_new_tokens=100, temperature=0.8, top_k=50,
    ...                        seed=0)                     # prompt ids + new ids, list[int]
    >>> print(model.meta.tokenizer.decode(ids))
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

The package by job: :mod:`~attnkit.generation.sampling` (choosing tokens),
:mod:`~attnkit.generation.checks` (argument checks), :mod:`~attnkit.generation.detok`
(streaming text, stop strings), :mod:`~attnkit.generation.decode` (the decoding loop),
:mod:`~attnkit.generation.seq2seq` and :mod:`~attnkit.generation.beam` (encoder-decoder models:
greedy, sampling and beam search; ``generate`` hands them an ``EncoderDecoder``). The
linears used while decoding and the int8 layers are in :mod:`attnkit.native`.
"""

from __future__ import annotations

from attnkit.generation.chat import ChatSession
from attnkit.generation.checks import CONTEXT_MODES
from attnkit.generation.decode import GeneratedToken, generate, stream
from attnkit.generation.sampling import apply_repetition_penalty, choose_tokens, filter_logits
from attnkit.generation.seq2seq import generate_seq2seq
from attnkit.native.int8 import Int8Linear, quantize_int8

__all__ = [
    "CONTEXT_MODES",
    "ChatSession",
    "GeneratedToken",
    "Int8Linear",
    "apply_repetition_penalty",
    "choose_tokens",
    "filter_logits",
    "generate",
    "generate_seq2seq",
    "quantize_int8",
    "stream",
]
