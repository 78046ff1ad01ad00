"""GPT: a decoder-only transformer with a causal language-model head.

    tokens (B, T) -> embeddings (+ learned/sinusoidal positions) -> N causal blocks
    -> final norm -> LM head (sharing the token embedding matrix) -> logits (B, T, V)

``model(ids)`` returns a :class:`~attnkit.models.outputs.ModelOutput`; with ``labels=ids`` its
``loss`` is the next-token cross-entropy (shifted inside, -100 ignored).

Generation passes a list of :class:`~attnkit.attention.kv_cache.KVCache`, one per block
(``model.new_cache()``); each call then feeds only the new tokens.
"""

from __future__ import annotations

import torch

from attnkit.attention.kv_cache import KVCache
from attnkit.models.common import ModelBase, check_ids, document_positions, valid_key_mask_from
from attnkit.models.config import ModelConfig
from attnkit.models.heads import LMHead
from attnkit.models.outputs import ModelOutput, lm_loss


class GPT(ModelBase):
    """A decoder-only transformer language model: token ids (B, T) -> logits (B, T, V).

    Examples:
        >>> logits = GPT(get_preset("tiny"))(torch.randint(0, 256, (2, 16))).logits  # (2, 16, vocab_size)
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self._build_trunk(config, "gpt")
        self.lm_head = LMHead(config.d_model, config.vocab_size) if config.head == "lm" else None
        self.init_weights()
        if self.lm_head is not None and config.tie_embeddings:
            self.lm_head.proj.weight = self.embed.tok.weight  # (V, C), shared

    def new_cache(
        self, max_len: int | None = None, dtype: torch.dtype | None = None
    ) -> list[KVCache]:
        """One empty KV cache per block, for incremental decoding (``dtype``: storage dtype,
        default the model's).

        Examples:
            >>> caches = model.new_cache(max_len=512)
        """
        return KVCache.for_layers(self.config.n_layer, max_len, dtype)

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        document_ids: torch.Tensor | None = None,
        cache: list[KVCache] | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """input_ids (B, T) -> final hidden states (B, T, C), after the final norm.

        attention_mask (B, Tk) 1 = real token, Tk = tokens already cached + T; position_ids
        (B, T) (default: cache length + 0..T-1, or restarting per document); document_ids
        (B, T) packs several documents in one row, attention stays inside each.

        Examples:
            >>> model.hidden_states(torch.randint(0, 256, (2, 16))).shape  # (2, 16, d_model)
        """
        cfg = self.config
        check_ids("input_ids", input_ids, cfg.vocab_size)
        B, T = input_ids.shape
        past = 0
        if cache is not None:
            if len(cache) != cfg.n_layer or not all(isinstance(c, KVCache) for c in cache):
                raise ValueError(
                    f"cache must be a list of {cfg.n_layer} KVCache (one per block; "
                    f"model.new_cache()), got {type(cache).__name__} of "
                    f"{len(cache) if isinstance(cache, (list, tuple)) else '?'}"
                )
            if document_ids is not None:
                raise ValueError("document_ids cannot be combined with a KV cache")
            past = cache[0].length
        position_ids = document_positions(position_ids, document_ids, (B, T))  # (B, T) or None
        if past + T > cfg.max_seq_len and cfg.positional in ("learned", "sinusoidal"):
            raise ValueError(
                f"sequence of {past + T} tokens (cached {past} + new {T}) exceeds "
                f"max_seq_len={cfg.max_seq_len}"
            )
        vkm = valid_key_mask_from(attention_mask, (B, past + T))
        x = self.embed(
            input_ids, position_ids=position_ids, token_type_ids=token_type_ids, offset=past
        )  # (B, T, C)
        rope_pos = position_ids if cfg.positional == "rope" else None
        for i, block in enumerate(self.blocks):
            x = block(
                x,
                valid_key_mask=vkm,
                document_ids=document_ids,
                positions=rope_pos,
                cache=None if cache is None else cache[i],
            )  # (B, T, C)
        return self.norm(x)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        document_ids: torch.Tensor | None = None,
        cache: list[KVCache] | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> ModelOutput:
        """Logits (B, T, V) for head='lm' (None for head='none'), the final hidden states
        (B, T, C), and with ``labels`` (B, T) (the input ids; -100 ignored) the next-token
        loss.

        Examples:
            >>> out = model(ids, labels=ids)  # ids (B, T); out.loss, out.logits (B, T, V)
        """
        h = self.hidden_states(
            input_ids, attention_mask, position_ids, document_ids, cache, token_type_ids
        )  # (B, T, C)
        if self.lm_head is None:
            if labels is not None:
                raise ValueError("labels need a head; this GPT has head='none', expected 'lm'")
            return ModelOutput(hidden_states=h)
        logits = self.lm_head(h)  # (B, T, V)
        loss = None if labels is None else lm_loss(logits, labels)
        return ModelOutput(loss=loss, logits=logits, hidden_states=h)

    def tied_keys(self) -> list[str]:
        """state_dict keys that alias another key (not stored in checkpoints).

        Examples:
            >>> model.tied_keys()
        """
        if self.lm_head is not None and self.lm_head.proj.weight is self.embed.tok.weight:
            return ["lm_head.proj.weight"]
        return []
