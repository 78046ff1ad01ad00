"""Input embeddings: token ids -> the vectors the first block reads."""

from __future__ import annotations

import torch
from torch import nn

from attnkit.models.config import ModelConfig
from attnkit.models.layers import make_norm
from attnkit.positional import LearnedPositionalEmbedding, SinusoidalPositionalEmbedding

__all__ = ["Embeddings"]


class Embeddings(nn.Module):
    """ids (B, T) -> (B, T, C): tokens + absolute positions + segments, then norm and dropout.

    RoPE and ALiBi models add no position vector here; their positions act inside attention.

    Examples:
        >>> Embeddings(get_preset("tiny"))(torch.randint(0, 256, (2, 16))).shape  # (2, 16, 64)
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        C = cfg.d_model
        self.tok = nn.Embedding(cfg.vocab_size, C)
        self.pos: nn.Module | None = None
        if cfg.positional == "learned":
            self.pos = LearnedPositionalEmbedding(cfg.max_seq_len, C)
        elif cfg.positional == "sinusoidal":
            self.pos = SinusoidalPositionalEmbedding(cfg.max_seq_len, C)
        self.types = nn.Embedding(cfg.type_vocab_size, C) if cfg.type_vocab_size else None
        self.norm = make_norm(cfg.norm, C, cfg.norm_eps) if cfg.embed_norm else None
        self.drop = nn.Dropout(cfg.dropout)

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        offset: int = 0,
    ) -> torch.Tensor:
        """input_ids (B, T) -> (B, T, C) input vectors.

        Args:
            input_ids: (B, T) token ids.
            position_ids: (B, T) or (T,) positions for learned or sinusoidal embeddings;
                default ``offset + 0..T-1``.
            token_type_ids: (B, T) segment ids; default segment 0 when the model has
                segment embeddings.
            offset: the first position when ``position_ids`` is None (tokens already cached).

        Raises:
            ValueError: ``token_type_ids`` given to a model with ``type_vocab_size=0``.

        Examples:
            >>> embed(torch.randint(0, 256, (2, 16)), offset=8).shape  # (2, 16, d_model)
        """
        x = self.tok(input_ids)  # (B, T, C)
        if self.pos is not None:
            if position_ids is None:
                x = x + self.pos(input_ids.shape[1], offset=offset)  # (T, C) broadcast
            else:
                x = x + self.pos(position_ids)  # (B, T, C) or (T, C)
        if self.types is not None:
            if token_type_ids is None:
                x = x + self.types.weight[0]  # every token in segment 0
            else:
                x = x + self.types(token_type_ids)
        elif token_type_ids is not None:
            raise ValueError(
                "token_type_ids were given but this model has type_vocab_size=0; "
                "expected no token_type_ids"
            )
        if self.norm is not None:
            x = self.norm(x)
        return self.drop(x)
