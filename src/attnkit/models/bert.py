"""BERT: a bidirectional encoder with segment embeddings, a pooler and task heads.

    tokens (B, T) + segments -> embeddings -> LayerNorm -> N post-norm blocks -> hidden (B, T, C)

``forward`` returns a :class:`~attnkit.models.outputs.ModelOutput` whose ``logits`` depend
on ``config.head``:

* ``"none"``: no logits; ``hidden_states`` (B, T, C) (see :meth:`Bert.pool` for sentence
  vectors),
* ``"mlm"``: masked-token logits (B, T, V); ``labels`` (B, T) hold the original ids at masked
  positions and -100 elsewhere,
* ``"classification"``: class logits (B, num_labels) from the pooled first token; ``labels``
  (B,) are class ids.
"""

from __future__ import annotations

import torch

from attnkit.attention.unpad import TokenIndex
from attnkit.models.common import ModelBase, check_ids, document_positions, valid_key_mask_from
from attnkit.models.config import ModelConfig
from attnkit.models.heads import POOLERS, ClassificationHead, MLMHead, Pooler
from attnkit.models.outputs import ModelOutput, classification_loss, mlm_loss


class Bert(ModelBase):
    """A bidirectional (BERT-family) encoder: token ids (B, T) -> hidden states (B, T, C) and heads.

    Examples:
        >>> Bert(get_preset("tiny-bert")).hidden_states(torch.randint(0, 100, (2, 16))).shape  # (2, 16, C)
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self._build_trunk(config, "bert")  # post-norm blocks end normalised: no final norm
        self.pooler = Pooler(config.d_model) if config.pooler else None
        self.mlm = (
            MLMHead(config.d_model, config.vocab_size, config.norm_eps, config.mlp)
            if config.head == "mlm"
            else None
        )
        self.classifier = (
            ClassificationHead(config.d_model, config.num_labels, config.dropout)
            if config.head == "classification"
            else None
        )
        self.init_weights()
        if self.mlm is not None and config.tie_embeddings:
            self.mlm.decoder.weight = self.embed.tok.weight  # (V, C), shared

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        document_ids: torch.Tensor | None = None,
        unpad: bool = False,
    ) -> torch.Tensor:
        """input_ids (B, T) -> last hidden states (B, T, C).

        attention_mask (B, T) 1 = real token; document_ids (B, T) packs several sequences into
        one row (positions restart at each, attention stays inside each).

        unpad: with an attention_mask, the blocks run their linears, norms and MLPs on the
        real tokens only (:class:`~attnkit.attention.unpad.TokenIndex`; attention still sees
        each row apart): the same values on real tokens, zeros at the padding, and no work
        spent on it. For inference on batches of mixed lengths.

        Examples:
            >>> model.hidden_states(ids, attention_mask=mask)  # ids, mask (B, T) -> (B, T, C)
        """
        cfg = self.config
        check_ids("input_ids", input_ids, cfg.vocab_size)
        B, T = input_ids.shape
        if T > cfg.max_seq_len and cfg.positional in ("learned", "sinusoidal"):
            raise ValueError(f"sequence of {T} tokens exceeds max_seq_len={cfg.max_seq_len}")
        if token_type_ids is not None:
            check_ids("token_type_ids", token_type_ids, max(cfg.type_vocab_size, 1))
        position_ids = document_positions(position_ids, document_ids, (B, T))  # (B, T) or None
        vkm = valid_key_mask_from(attention_mask, (B, T))
        x = self.embed(
            input_ids, position_ids=position_ids, token_type_ids=token_type_ids
        )  # (B, T, C)
        rope_pos = position_ids if cfg.positional == "rope" else None
        if unpad and vkm is not None and document_ids is None:
            tokens = TokenIndex.from_mask(vkm)
            h = tokens.pack(x)  # (N, C)
            for block in self.blocks:
                h = block(h, tokens=tokens, positions=rope_pos)
            return tokens.unpack(self.norm(h))  # (B, T, C), zeros at the padding
        for block in self.blocks:
            x = block(x, valid_key_mask=vkm, document_ids=document_ids, positions=rope_pos)
        return self.norm(x)  # (B, T, C)

    def pool(
        self,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pooling: str | None = None,
    ) -> torch.Tensor:
        """(B, T, C) -> (B, C) by ``pooling`` ("mean" or "cls"; default config.pooling).

        Examples:
            >>> model.pool(model.hidden_states(ids, mask), mask, pooling="mean")  # (B, C)
        """
        pooling = pooling or self.config.pooling
        if pooling not in POOLERS:
            raise ValueError(f"pooling must be one of {sorted(POOLERS)}, got {pooling!r}")
        return POOLERS[pooling](hidden, attention_mask)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        document_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> ModelOutput:
        """Token ids (B, T) -> a ModelOutput: hidden states (B, T, C), MLM logits (B, T, V) if the model has an MLM head, and the loss when ``labels`` (B, T) are given (-100 = ignored).

        Examples:
            >>> out = model(ids, attention_mask=mask)  # ids, mask (B, T); out.hidden_states (B, T, C)
        """
        h = self.hidden_states(
            input_ids, attention_mask, token_type_ids, position_ids, document_ids
        )  # (B, T, C)
        if self.mlm is not None:
            logits = self.mlm(h)  # (B, T, V)
            loss = None if labels is None else mlm_loss(logits, labels)
            return ModelOutput(loss=loss, logits=logits, hidden_states=h)
        if self.classifier is not None:
            pooled = self.pooler(h) if self.pooler is not None else self.pool(h, attention_mask)
            logits = self.classifier(pooled)  # (B, num_labels)
            loss = None if labels is None else classification_loss(logits, labels)
            return ModelOutput(loss=loss, logits=logits, hidden_states=h)
        if labels is not None:
            raise ValueError(
                "labels need a head; this model has head='none', expected 'mlm' or 'classification'"
            )
        return ModelOutput(hidden_states=h)

    def tied_keys(self) -> list[str]:
        """state_dict keys that alias another key (not stored in checkpoints): the MLM decoder tied to the token embedding.

        Examples:
            >>> model.tied_keys()
        """
        if self.mlm is not None and self.mlm.decoder.weight is self.embed.tok.weight:
            return ["mlm.decoder.weight"]
        return []
