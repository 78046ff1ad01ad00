"""A conversation with a GPT that keeps its KV cache between turns: :class:`ChatSession`.

    >>> chat = ChatSession(model, max_new_tokens=64, temperature=0)
    >>> reply = chat.send("ROMEO:\\n")           # Reply(dropped=0, tokens=<iterator>)
    >>> for t in reply.tokens:
    ...     print(t.text, end="")
    >>> chat.send("JULIET:\\n")                  # runs only the new tokens through the model

Each turn appends its tokens to those already in the cache; only the tokens the cache does
not hold yet (the new turn, and the last token of the previous reply, which was chosen but
never fed) go through the model, then one token per step. Tokens are chosen as
:func:`~attnkit.generation.stream` chooses them (:func:`~attnkit.generation.choose_tokens`),
so a greedy turn gives the tokens that a cold, uncached run over the whole conversation gives.

The context is the model's ``max_seq_len``. A turn that would not fit with its
``max_new_tokens`` slides the window: the oldest tokens are dropped (the system text stays
when it is short), the rest is encoded again into an emptied cache, and ``Reply.dropped``
says how many went. :meth:`ChatSession.reset` empties the conversation (back to the system
text).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tokenizers import Tokenizer

from attnkit.generation.checks import check_model, check_options
from attnkit.generation.decode import GeneratedToken
from attnkit.generation.detok import TextTail, hits_stop_ids, hits_stop_string
from attnkit.generation.sampling import choose_tokens
from attnkit.models.gpt import GPT

__all__ = ["ChatSession", "Reply"]


@dataclass
class Reply:
    """One turn's answer: ``dropped`` oldest tokens left the context to make room (0 when it
    fitted); ``tokens`` yields the new tokens as they are chosen.

    Examples:
        >>> "".join(t.text for t in session.send("You: hello\\n").tokens)
    """

    dropped: int
    tokens: Iterator[GeneratedToken]


class ChatSession:
    """Turns of text in, streamed replies out, over one KV cache (see the module docstring).

    ``system``: text that opens the conversation (and stays when the context slides, if it
    takes less than half of it). Sampling options as in :func:`~attnkit.generation.generate`
    (``seed`` seeds one generator for the whole conversation); ``stop`` strings or id lists
    and ``eos_token_id`` end a reply early.

    Examples:
        >>> session = ChatSession(attnkit.load("runs/char"), system="A play.\\n", top_k=40, seed=0)
    """

    def __init__(
        self,
        model: GPT,
        tokenizer: Tokenizer | None = None,
        *,
        system: str | None = None,
        max_new_tokens: int = 128,
        temperature: float = 0.8,
        top_k: int | None = None,
        top_p: float | None = None,
        stop: str | Sequence[Any] | None = None,
        eos_token_id: int | Sequence[int] | None = None,
        seed: int | None = None,
    ) -> None:
        gpt = check_model(model)
        tok = tokenizer if tokenizer is not None else gpt.meta.tokenizer
        if tok is None:
            raise ValueError(
                "a chat needs a tokenizer: the model has none (model.meta.tokenizer) and no "
                "tokenizer= was given"
            )
        cfg = gpt.config
        self.options = check_options(
            cfg.vocab_size,
            max_new_tokens,
            temperature,
            top_k,
            top_p,
            1.0,
            stop,
            eos_token_id,
            seed,
            True,
            "slide",
        )
        self.limit = cfg.max_seq_len
        if max_new_tokens >= self.limit:
            raise ValueError(
                f"max_new_tokens={max_new_tokens} leaves no room for the conversation in the "
                f"model's context of {self.limit} tokens (max_seq_len); expected fewer"
            )
        self.model = gpt
        self.tokenizer = tok
        param = next(gpt.parameters())
        self.device = param.device
        # a half-precision model on the CPU keeps its cache in float32 (as stream() does)
        half_on_cpu = param.device.type == "cpu" and param.dtype in (torch.bfloat16, torch.float16)
        self.cache = gpt.new_cache(max_len=self.limit, dtype=torch.float32 if half_on_cpu else None)
        self.generator: torch.Generator | None = None
        if seed is not None and temperature > 0:
            self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.system_ids = self._encode(system) if system else []
        self.tokens: list[int] = []  # the conversation so far; the cache holds its first `cached`
        self.reset()

    # ---------------------------------------------------------------------------------------
    @property
    def cached(self) -> int:
        """Tokens of the conversation whose keys and values are in the cache.

        Examples:
            >>> session.cached  # tokens in the KV cache
        """
        return self.cache[0].length

    def reset(self) -> None:
        """Forget the conversation: an empty cache and only the system text.

        Examples:
            >>> session.reset()
        """
        for c in self.cache:
            c.reset()
        self.tokens = list(self.system_ids)

    def _repair(self) -> None:
        """After a reply stopped inside a forward pass (Ctrl-C), some layers' caches may hold
        one step more than others: cut them all to what every layer holds."""
        length = min(min(c.length for c in self.cache), len(self.tokens))
        for c in self.cache:
            if c.length != length:
                c.truncate(length)

    def _encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise ValueError(f"a turn must be a string, got {type(text).__name__}")
        try:
            return list(self.tokenizer.encode(text).ids)
        except Exception as e:  # the tokenizers library raises a bare Exception
            raise ValueError(f"the turn {text!r} cannot be tokenised: {e}") from None

    def _fit(self, ids: list[int]) -> int:
        """Append ``ids``; if the conversation and a full reply would overflow the context,
        keep its newest tokens (and a short system text) in an emptied cache. Returns the
        count of tokens dropped."""
        history = self.tokens + ids
        room = self.limit - self.options.max_new_tokens  # tokens the conversation may hold
        if len(history) <= room:
            self.tokens = history
            return 0
        pinned = self.system_ids if len(self.system_ids) < room // 2 else []
        kept = pinned + history[len(pinned) :][-(room - len(pinned)) :]
        for c in self.cache:
            c.reset()
        self.tokens = kept
        return len(history) - len(kept)

    def _feed(self, ids: list[int]) -> torch.Tensor:
        """Run ``ids`` (the tokens after the cached ones) through the model: logits (1, V)
        after the last."""
        x = torch.tensor([ids], dtype=torch.long, device=self.device)  # (1, T)
        h = self.model.hidden_states(x, cache=self.cache)  # (1, T, C)
        assert self.model.lm_head is not None  # check_model made sure
        return self.model.lm_head(h[:, -1]).float()  # (1, V)

    def send(self, text: str) -> Reply:
        """Add the turn ``text`` (as it should appear in the model's context, separators
        included) and return the reply; its tokens are made as they are read.

        Examples:
            >>> for token in session.send("ROMEO: Hello.\\nJULIET:").tokens: print(token.text, end="")
        """
        self._repair()
        ids = self._encode(text)
        if not ids and len(self.tokens) == self.cached:
            raise ValueError(f"the turn {text!r} gives no tokens and there is nothing to continue")
        dropped = self._fit(ids)
        return Reply(dropped, self._reply())

    def _reply(self) -> Iterator[GeneratedToken]:
        o = self.options
        tail = TextTail(self.tokenizer, self.tokens)
        longest_stop = max((len(s) for s in o.stops), default=0)
        generated: list[int] = []
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                logits = self._feed(self.tokens[self.cached :])  # (1, V)
            for step in range(o.max_new_tokens):
                with torch.inference_mode():
                    token = int(
                        choose_tokens(logits, o.temperature, o.top_k, o.top_p, self.generator)
                    )
                self.tokens.append(token)  # chosen, not fed yet: the next step (or turn) feeds it
                generated.append(token)
                text = tail.push(token)
                yield GeneratedToken(0, step, token, text)
                if token in o.eos or (o.stop_ids and hits_stop_ids(generated, o.stop_ids)):
                    return
                if o.stops and hits_stop_string(tail, text, o.stops, longest_stop):
                    return
                if step == o.max_new_tokens - 1:
                    return
                with torch.inference_mode():
                    logits = self._feed([token])
        finally:
            self.model.train(was_training)
