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
    prompt: str | list[str]
    echo: bool = False


class ChatMessage(_Request):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
