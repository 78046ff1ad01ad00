"""The request bodies of the OpenAI routes (pydantic models; FastAPI checks them, and a
wrong type or a missing field is a 422 naming the field). Fields the routes do not use are
ignored, as the OpenAI clients send some (``user``); options attnkit cannot honour are
refused by the routes with a 400 naming them."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ChatMessage", "ChatRequest", "CompletionRequest", "EmbeddingRequest"]

Stop = str | list[str] | None


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class EmbeddingRequest(_Request):
    """The body of ``POST /v1/embeddings``: ``model``, ``input`` (a text or a list of texts;
    token ids pass the schema but are refused by the route), ``encoding_format``
    (``"float"`` or ``"base64"``) and ``dimensions`` (must equal the encoder's).

    Examples:
        >>> EmbeddingRequest(model="minilm", input=["a text", "another"]).encoding_format
        'float'
    """

    model: str
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)


class _Sampling(_Request):
    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1)
    stop: Stop = None
    seed: int | None = Field(default=None, ge=0)
    stream: bool = False


class CompletionRequest(_Sampling):
    """The body of ``POST /v1/completions``: ``model``, ``prompt`` (a text or a list of
    them), ``echo`` (only false is served) and the sampling options ``max_tokens``,
    ``temperature`` (0..2), ``top_p`` (in (0, 1]), ``n`` (only 1 is served), ``stop``,
    ``seed`` and ``stream``.

    Examples:
        >>> CompletionRequest(model="char", prompt="ROMEO:", max_tokens=8).temperature
        1.0
    """

    prompt: str | list[str]
    echo: bool = False


class ChatMessage(_Request):
    """One message of a chat: ``role`` (``"system"``, ``"user"`` or ``"assistant"``) and its
    ``content``.

    Examples:
        >>> ChatMessage(role="user", content="Hello").role
        'user'
    """

    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(_Sampling):
    """The body of ``POST /v1/chat/completions``: ``model``, ``messages`` (at least one),
    ``max_completion_tokens`` (preferred over ``max_tokens`` when both are given) and the
    sampling options of :class:`CompletionRequest`.

    Examples:
        >>> ChatRequest(model="char", messages=[{"role": "user", "content": "Hi"}]).n
        1
    """

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
