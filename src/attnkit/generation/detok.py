"""Streaming detokenisation: a row's new token ids as text once it is printable, and stops."""

from __future__ import annotations

from collections.abc import Sequence

from tokenizers import Tokenizer

__all__ = ["TextTail", "hits_stop_ids", "hits_stop_string"]


class TextTail:
    """Turns a row's new token ids into text as it becomes printable. Decodes a short window
    of ids (not the whole row) per token; text ending in U+FFFD (an incomplete UTF-8 sequence
    of byte-level tokens) is held until the next token completes it.

    Args:
        tokenizer: the model's tokenizer.
        context: the row's prompt ids; the last 4 are decoded as left context.

    Examples:
        >>> tail = TextTail(tok, tok.encode("ROMEO:").ids)
        >>> tail.push(tok.token_to_id("a"))  # 'a'
    """

    def __init__(self, tokenizer: Tokenizer, context: Sequence[int]) -> None:
        self.tok = tokenizer
        self.ids = list(context[-4:])  # a little left context, for tokenizers that need it
        self.prefix = 0  # ids[prefix:read] is decoded as context for the next token
        self.read = len(self.ids)  # ids[:read] are already printed
        self.text = ""  # everything printed so far

    def push(self, token_id: int) -> str:
        """Add one token; returns the text it makes printable (may be ""), also added to
        ``self.text``.

        Args:
            token_id: the row's next token id.

        Examples:
            >>> "".join(tail.push(t) for t in new_ids)  # the new tokens' text
        """
        self.ids.append(token_id)
        before = self.tok.decode(self.ids[self.prefix : self.read])
        now = self.tok.decode(self.ids[self.prefix :])
        if len(now) > len(before) and not now.endswith("\ufffd"):
            new = now[len(before) :]
            self.prefix, self.read = self.read, len(self.ids)
            self.text += new
            return new
        return ""


def hits_stop_ids(generated: Sequence[int], stop_ids: Sequence[tuple[int, ...]]) -> bool:
    """Whether the new tokens end with one of the stop token-id sequences.

    Args:
        generated: the row's new token ids so far (the prompt left out).
        stop_ids: the stop sequences, each a tuple of ids.

    Examples:
        >>> hits_stop_ids([4, 1, 2], [(1, 2)])  # True
    """
    return any(len(q) <= len(generated) and tuple(generated[-len(q) :]) == q for q in stop_ids)


def hits_stop_string(tail: TextTail, new_text: str, stops: Sequence[str], longest: int) -> bool:
    """Whether the text printed so far first contains a stop string with ``new_text``: only
    the last ``longest + len(new_text)`` characters are searched.

    Args:
        tail: the row's :class:`TextTail`, after the push that returned ``new_text``.
        new_text: the text the latest token made printable.
        stops: the stop strings.
        longest: the length of the longest stop string.

    Examples:
        >>> hits_stop_string(tail, tail.push(token_id), ["\\n\\n"], 2)
    """
    window = tail.text[-(longest + len(new_text)) :]
    return any(s in window for s in stops)
