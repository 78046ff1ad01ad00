"""EncoderDecoder: the translation / summarisation transformer (Vaswani et al. 2017; Marian,
BART and T5 are configurations of it, see :mod:`attnkit.models.encdec_config`).

    source (B, S) -> embeddings -> N bidirectional blocks (padding masked) -> memory (B, S, C)
    target (B, T) -> embeddings -> M blocks [causal self-attention, cross-attention to the
                     memory, MLP] -> LM head -> logits (B, T, V)

Every attention call goes through ``attnkit.attention.attention``: the self-attention layers are
:class:`~attnkit.attention.module.MultiHeadAttention` (so variants, capture and the KV cache
work as in GPT and BERT), cross-attention is
:class:`~attnkit.models.encdec_layers.CrossAttention`.

The calls follow Hugging Face's habits::

    out = model(input_ids=src, attention_mask=src_mask, labels=tgt)   # decoder inputs made
    out.loss, out.logits                                              # by shifting labels right

Decoding encodes once and feeds the decoder a token (or a few) at a time; the cross-attention
keys and values of the memory are computed once per source, in :meth:`EncoderDecoder.new_cache`::

    memory = model.encode(src, src_mask)
    cache = model.new_cache(memory, src_mask)
    logits = model.decode_step(start_ids, cache)      # (B, 1, V); cache grows by one token

One job, the model, in one module past the usual 400 lines: its forward pass, its decoding
steps and its loss read the same stacks and belong together; the decoding cache it hands out
(:class:`~attnkit.models.encdec_cache.DecoderCache`), the layers and the config are in modules
of their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnkit.attention.kv_cache import KVCache
from attnkit.attention.module import MultiHeadAttention
from attnkit.models.common import ModelBase, check_ids, valid_key_mask_from
from attnkit.models.encdec_cache import DecoderCache
from attnkit.models.encdec_config import EncDecConfig
from attnkit.models.encdec_layers import (
    CrossAttention,
    DecoderBlock,
    RelativePositionBias,
    StackEmbeddings,
    make_kernel,
)
from attnkit.models.heads import LMHead
from attnkit.models.layers import TransformerBlock, make_mlp, make_norm
from attnkit.models.losses import linear_cross_entropy
from attnkit.models.outputs import IGNORE_INDEX, ModelOutput

__all__ = ["DecoderCache", "EncoderDecoder", "Seq2SeqOutput", "seq2seq_loss", "shift_right"]


@dataclass
class Seq2SeqOutput(ModelOutput):
    """:class:`~attnkit.models.outputs.ModelOutput` (loss, logits (B, T, V), the decoder's final
    hidden states (B, T, C)) plus the encoder's output (B, S, C).

    Examples:
        >>> out = model(input_ids=src, labels=tgt)  # src (B, S), tgt (B, T)
        >>> out.encoder_hidden_states.shape  # (B, S, d_model)
    """

    encoder_hidden_states: Tensor | None = None


def seq2seq_loss(logits: Tensor, labels: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy of each position's logits (B, T, V) against its label (B, T) (the target
    token, not shifted; IGNORE_INDEX (-100) takes no part): the mean over counted positions.

    Args:
        logits: (B, T, V) decoder logits.
        labels: (B, T) integer target ids, -100 where ignored.
        label_smoothing: as ``F.cross_entropy``'s.

    Returns:
        A float32 scalar.

    Raises:
        ValueError: ``labels`` is not an integer tensor of shape (B, T).

    Examples:
        >>> seq2seq_loss(torch.randn(2, 8, 512), torch.randint(0, 512, (2, 8)), label_smoothing=0.1)
    """
    B, T, V = logits.shape
    if not isinstance(labels, Tensor) or labels.dtype.is_floating_point:
        got = labels.dtype if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"labels must be an integer tensor (B, T), got {got}")
    if tuple(labels.shape) != (B, T):
        raise ValueError(
            f"labels must have the decoder's shape (B, T) = {(B, T)}, got {tuple(labels.shape)}"
        )
    return F.cross_entropy(
        logits.reshape(-1, V).float(),
        labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        label_smoothing=label_smoothing,
    )


def shift_right(labels: Tensor, decoder_start_token_id: int, pad_token_id: int) -> Tensor:
    """Decoder inputs for teacher forcing: the start token, then the labels but the last;
    IGNORE_INDEX labels become the pad token (as HF's ``shift_tokens_right``).

    Args:
        labels: (B, T) integer target ids, -100 where ignored.
        decoder_start_token_id: the first decoder input of every row.
        pad_token_id: what an ignored label becomes.

    Returns:
        (B, T) decoder input ids.

    Raises:
        ValueError: ``labels`` is not an integer tensor of shape (B, T).

    Examples:
        >>> shift_right(torch.tensor([[5, -100, 7]]), decoder_start_token_id=0, pad_token_id=1)
        tensor([[0, 5, 1]])
    """
    if not isinstance(labels, Tensor) or labels.dim() != 2 or labels.dtype.is_floating_point:
        got = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"labels must be an integer tensor of shape (B, T), got {got}")
    out = labels.new_full(labels.shape, decoder_start_token_id)  # (B, T)
    out[:, 1:] = labels[:, :-1]
    return out.masked_fill_(out == IGNORE_INDEX, pad_token_id)


def _self_attention(cfg: EncDecConfig, causal: bool, relative, variant: str | None):
    return MultiHeadAttention(
        cfg.d_model,
        cfg.n_heads,
        causal=causal,
        dropout=cfg.attn_dropout,
        bias=cfg.bias,
        backend=cfg.backend,
        head_dim=cfg.head_dim,
        variant=variant,
        variant_params=dict(cfg.encoder_attention_params) if variant else None,
        kernel=None if variant else make_kernel(cfg, relative),
    )


def _norm(cfg: EncDecConfig) -> nn.Module:
    return make_norm(cfg.norm, cfg.d_model, cfg.norm_eps, bias=cfg.bias)


def _relative(cfg: EncDecConfig, bidirectional: bool) -> RelativePositionBias | None:
    if cfg.positional != "relative":
        return None
    return RelativePositionBias(
        cfg.n_heads, cfg.relative_buckets, cfg.relative_max_distance, bidirectional
    )


class Encoder(nn.Module):
    """Embeddings, bidirectional blocks (:class:`TransformerBlock`), the final norm."""

    def __init__(self, cfg: EncDecConfig):
        super().__init__()
        self.embed = StackEmbeddings(cfg)
        self.rel_bias = _relative(cfg, bidirectional=True)
        variant = None if cfg.encoder_attention == "exact" else cfg.encoder_attention
        self.blocks = nn.ModuleList(
            TransformerBlock(
                _self_attention(cfg, False, self.rel_bias, variant),
                make_mlp(cfg.mlp, cfg.d_model, cfg.d_ff, bias=cfg.bias),
                _norm(cfg),
                _norm(cfg),
                placement=cfg.norm_placement,
                dropout=cfg.dropout,
            )
            for _ in range(cfg.n_encoder_layers)
        )
        self.norm = _norm(cfg) if cfg.final_norm else nn.Identity()
        self.drop = nn.Dropout(cfg.dropout) if cfg.final_norm else nn.Identity()

    def forward(self, input_ids: Tensor, valid_key_mask: Tensor | None) -> Tensor:
        x = self.embed(input_ids)  # (B, S, C)
        for block in self.blocks:
            x = block(x, valid_key_mask=valid_key_mask)  # (B, S, C)
        return self.drop(self.norm(x))


class Decoder(nn.Module):
    """Embeddings, :class:`DecoderBlock` s, the final norm."""

    def __init__(self, cfg: EncDecConfig):
        super().__init__()
        self.embed = StackEmbeddings(cfg)
        self.rel_bias = _relative(cfg, bidirectional=False)
        self.blocks = nn.ModuleList(
            DecoderBlock(
                _self_attention(cfg, True, self.rel_bias, None),
                CrossAttention(
                    cfg.d_model,
                    cfg.n_heads,
                    cfg.head_dim,
                    make_kernel(cfg, None),
                    dropout=cfg.attn_dropout,
                    bias=cfg.bias,
                ),
                make_mlp(cfg.mlp, cfg.d_model, cfg.d_ff, bias=cfg.bias),
                (_norm(cfg), _norm(cfg), _norm(cfg)),
                placement=cfg.norm_placement,
                dropout=cfg.dropout,
            )
            for _ in range(cfg.n_decoder_layers)
        )
        self.norm = _norm(cfg) if cfg.final_norm else nn.Identity()
        self.drop = nn.Dropout(cfg.dropout) if cfg.final_norm else nn.Identity()

    def memory(self, states: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Each block's cross-attention keys and values of the encoder output (B, S, C)."""
        return [cast(DecoderBlock, blk).cross_attn.memory(states) for blk in self.blocks]

    def forward(
        self,
        ids: Tensor,
        memory: list[tuple[Tensor, Tensor]],
        source_valid_mask: Tensor | None,
        valid_key_mask: Tensor | None,
        caches: list[KVCache] | None,
        past: int,
    ) -> Tensor:
        x = self.embed(ids, past=past)  # (B, T, C)
        for i, block in enumerate(self.blocks):
            x = block(
                x,
                memory[i],
                source_valid_mask=source_valid_mask,
                valid_key_mask=valid_key_mask,
                cache=None if caches is None else caches[i],
            )  # (B, T, C)
        return self.drop(self.norm(x))


class EncoderDecoder(ModelBase):
    """An encoder-decoder transformer built from an :class:`EncDecConfig` (module docstring).

    Source ids (B, S) and target ids (B, T) -> logits (B, T, V).

    Raises:
        TypeError: ``config`` is not an :class:`EncDecConfig`.

    Examples:
        >>> model = EncoderDecoder(get_encdec_preset("tiny-t5"))
        >>> src, tgt = torch.randint(0, 512, (2, 12)), torch.randint(0, 512, (2, 8))
        >>> model(input_ids=src, labels=tgt).logits.shape  # (2, 8, 512)
    """

    config: EncDecConfig  # type: ignore[assignment]

    def __init__(self, config: EncDecConfig):
        super().__init__()
        if not isinstance(config, EncDecConfig):
            raise TypeError(f"EncoderDecoder needs an EncDecConfig, got {type(config).__name__}")
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.lm_head = LMHead(config.d_model, config.vocab_size)
        self.logits_bias = (
            nn.Parameter(torch.zeros(1, config.vocab_size)) if config.logits_bias else None
        )  # (1, V), HF's final_logits_bias
        self.init_weights()
        if config.share_embeddings:
            self.decoder.embed.tok.weight = self.encoder.embed.tok.weight  # (V, C), shared
        if config.tie_embeddings:
            self.lm_head.proj.weight = self.decoder.embed.tok.weight  # (V, C), shared

    # ---------------------------------------------------------------------------------------
    def init_weights(self) -> None:
        """ModelBase's initialisation (normal weights, residual projections scaled), normal
        relative position tables, a zero logits bias.

        (The logits bias is zero as built; this method does not reset it.)

        Examples:
            >>> model.init_weights()  # re-draws the linear, embedding and relative tables
        """
        super().init_weights()
        for stack in (self.encoder, self.decoder):
            if stack.rel_bias is not None:
                nn.init.normal_(stack.rel_bias.weight, 0.0, self.config.initializer_range)

    def tied_keys(self) -> list[str]:
        """state_dict keys that alias another key (not stored in checkpoints).

        Examples:
            >>> EncoderDecoder(get_encdec_preset("tiny-t5")).tied_keys()
            ['decoder.embed.tok.weight', 'lm_head.proj.weight']
        """
        out = []
        if self.decoder.embed.tok.weight is self.encoder.embed.tok.weight:
            out.append("decoder.embed.tok.weight")
        if self.lm_head.proj.weight is self.decoder.embed.tok.weight:
            out.append("lm_head.proj.weight")
        return out

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Distinct parameters (tied ones counted once); optionally without the token and
        position embeddings.

        Examples:
            >>> model.num_parameters(exclude_embeddings=True)  # the blocks, norms and head
        """
        skip: set[int] = set()
        if exclude_embeddings:
            skip = {id(p) for s in (self.encoder, self.decoder) for p in s.embed.parameters()}
        seen: dict[int, int] = {}
        for p in self.parameters():
            if id(p) not in skip:
                seen[id(p)] = p.numel()
        return sum(seen.values())

    def flops_per_token(self, seq_len: int | None = None, training: bool = False) -> float:
        """Estimated FLOPs of a forward pass per (source token, target token) pair, both
        sequences ``seq_len`` long (default max_seq_len); x3 with ``training``. 2 FLOPs per
        multiply-accumulate of every weight matrix (not the embedding look-ups), plus 4 * keys
        * H * D per attention layer (the decoder's self-attention sees T/2 keys on average).

        Examples:
            >>> model.flops_per_token(seq_len=128, training=True)
        """
        cfg = self.config
        T = cfg.max_seq_len if seq_len is None else seq_len
        matmul = sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))
        width = cfg.n_heads * cfg.head_dim
        attn = 4 * width * (T * cfg.n_encoder_layers + (T / 2 + T) * cfg.n_decoder_layers)
        fwd = 2 * matmul + attn
        return float(3 * fwd if training else fwd)

    # ---------------------------------------------------------------------------------------
    def encode(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Source ids (B, S) -> the encoder's output (B, S, C). attention_mask (B, S), 1 = real
        token (padded positions' outputs are not meaningful; nothing attends to them).

        Raises:
            ValueError: ``input_ids`` is not an integer (B, S) tensor, the mask's shape is not
                (B, S), or S exceeds ``max_seq_len`` with absolute positions.

        Examples:
            >>> memory = model.encode(src, src_mask)  # src, src_mask (B, S) -> (B, S, d_model)
        """
        cfg = self.config
        check_ids("input_ids", input_ids, cfg.vocab_size)
        B, S = input_ids.shape
        self._check_length("source", S)
        return self.encoder(input_ids, valid_key_mask_from(attention_mask, (B, S)))

    def new_cache(
        self,
        encoder_states: Tensor,
        attention_mask: Tensor | None = None,
        max_len: int | None = None,
        dtype: torch.dtype | None = None,
    ) -> DecoderCache:
        """An empty decoding cache for the memory ``encoder_states`` (B, S, C) of sources with
        ``attention_mask`` (B, S): each decoder block's cross-attention keys and values are
        computed here, once. ``max_len`` and ``dtype`` are the self-attention caches'.

        Raises:
            ValueError: ``encoder_states`` is not (B, S, d_model) or the mask not (B, S).

        Examples:
            >>> cache = model.new_cache(model.encode(src, src_mask), src_mask, max_len=64)
        """
        B, S = self._check_memory(encoder_states)
        return DecoderCache(
            self_attn=KVCache.for_layers(self.config.n_decoder_layers, max_len, dtype),
            cross=self.decoder.memory(encoder_states),
            source_valid_mask=valid_key_mask_from(attention_mask, (B, S)),
        )

    def decode(
        self,
        decoder_input_ids: Tensor,
        encoder_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        *,
        decoder_attention_mask: Tensor | None = None,
        cache: DecoderCache | None = None,
    ) -> Tensor:
        """Decoder ids (B, T) -> the decoder's final hidden states (B, T, C).

        Without a cache, ``encoder_states`` (B, S, C) and the source ``attention_mask`` (B, S)
        are attended to; with one (:meth:`new_cache`), its memory is, the ids continue the
        cached tokens and are added to the cache. ``decoder_attention_mask`` (B, Tk), 1 = real
        token, covers the cached tokens too (Tk = cache.length + T).

        Raises:
            ValueError: neither ``encoder_states`` nor ``cache`` given, a batch size that is
                not the memory's, a bad shape, or a target longer than ``max_seq_len``.
            TypeError: ``cache`` is not a :class:`DecoderCache`.

        Examples:
            >>> h = model.decode(tgt_in, memory, src_mask)  # tgt_in (B, T) -> (B, T, d_model)
        """
        cfg = self.config
        check_ids("decoder_input_ids", decoder_input_ids, cfg.vocab_size)
        B, T = decoder_input_ids.shape
        if cache is None:
            if encoder_states is None:
                raise ValueError("decode needs encoder_states (B, S, C) or a cache; got neither")
            _, S = self._check_memory(encoder_states)
            memory = self.decoder.memory(encoder_states)
            source_valid_mask = valid_key_mask_from(attention_mask, (encoder_states.shape[0], S))
            caches, past = None, 0
        else:
            if not isinstance(cache, DecoderCache):
                raise TypeError(
                    f"cache must be a DecoderCache (model.new_cache()), got {type(cache).__name__}"
                )
            memory, source_valid_mask = cache.cross, cache.source_valid_mask
            caches, past = cache.self_attn, cache.length
        rows = memory[0][0].shape[0] * (1 if cache is None else cache.group)
        if rows != B:
            raise ValueError(
                f"decoder_input_ids have batch size {B} but the memory has {rows}; "
                f"expected the same"
            )
        self._check_length("target", past + T)
        vkm = valid_key_mask_from(decoder_attention_mask, (B, past + T))
        return self.decoder(decoder_input_ids, memory, source_valid_mask, vkm, caches, past)

    def logits(self, hidden: Tensor) -> Tensor:
        """The decoder's final hidden states (B, T, C) -> logits (B, T, V).

        Scaled by d_model^-0.5 first with ``scale_decoder_output``; plus the logits bias
        when the config has one.

        Examples:
            >>> model.logits(model.decode(tgt_in, memory)).shape  # (B, T, vocab_size)
        """
        if self.config.scale_decoder_output:
            hidden = hidden * self.config.d_model**-0.5
        out = self.lm_head(hidden)  # (B, T, V)
        if self.logits_bias is None:
            return out
        if torch.is_grad_enabled():
            return out + self.logits_bias
        return out.add_(self.logits_bias)  # decoding: no second (B, T, V) tensor

    def decode_step(
        self,
        decoder_input_ids: Tensor,
        cache: DecoderCache,
        decoder_attention_mask: Tensor | None = None,
    ) -> Tensor:
        """The next tokens (B, T) (T = 1 in greedy decoding) -> their logits (B, T, V); the
        cache grows by T tokens.

        Examples:
            >>> logits = model.decode_step(torch.zeros(2, 1, dtype=torch.long), cache)  # (2, 1, V)
        """
        h = self.decode(
            decoder_input_ids, cache=cache, decoder_attention_mask=decoder_attention_mask
        )
        return self.logits(h)

    def shift_right(self, labels: Tensor) -> Tensor:
        """Decoder inputs for ``labels`` (B, T): :func:`shift_right` with this config's start
        and pad tokens.

        Examples:
            >>> model.shift_right(torch.tensor([[5, 6, 7]]))  # tiny-t5: start token 0
            tensor([[0, 5, 6]])
        """
        cfg = self.config
        return shift_right(labels, cfg.decoder_start_token_id, cfg.pad_token_id)

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        decoder_input_ids: Tensor | None = None,
        decoder_attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        encoder_states: Tensor | None = None,
    ) -> Seq2SeqOutput:
        """Teacher-forced logits (B, T, V) and, with ``labels`` (B, T) (the target ids, -100
        ignored), the mean cross-entropy. Without ``decoder_input_ids`` they are the labels
        shifted right behind ``decoder_start_token_id``. ``encoder_states`` (B, S, C) replace
        the encoding of ``input_ids`` (encode once, decode several targets).

        Args:
            input_ids: (B, S) source ids (not needed with ``encoder_states``).
            attention_mask: (B, S) source mask, 1 = real token.
            decoder_input_ids: (B, T) decoder inputs; default the labels shifted right.
            decoder_attention_mask: (B, T) target mask, 1 = real token.
            labels: (B, T) target ids, -100 ignored.
            encoder_states: (B, S, C) an encoding made before by :meth:`encode`.

        Raises:
            ValueError: neither ``input_ids`` nor ``encoder_states``, or neither
                ``decoder_input_ids`` nor ``labels``, given.

        Examples:
            >>> out = model(input_ids=src, attention_mask=src_mask, labels=tgt)  # out.loss
        """
        if encoder_states is None:
            if input_ids is None:
                raise ValueError("give input_ids (B, S) or encoder_states (B, S, C); got neither")
            encoder_states = self.encode(input_ids, attention_mask)
        if decoder_input_ids is None:
            if labels is None:
                raise ValueError(
                    "give decoder_input_ids (B, T) or labels (B, T) to make them from; got neither"
                )
            decoder_input_ids = self.shift_right(labels)
        h = self.decode(
            decoder_input_ids,
            encoder_states,
            attention_mask,
            decoder_attention_mask=decoder_attention_mask,
        )  # (B, T, C)
        logits = self.logits(h)  # (B, T, V)
        loss = None if labels is None else seq2seq_loss(logits, labels)
        return Seq2SeqOutput(
            loss=loss, logits=logits, hidden_states=h, encoder_hidden_states=encoder_states
        )

    def loss(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None,
        labels: Tensor,
        *,
        label_smoothing: float = 0.0,
    ) -> Tensor:
        """The training objective: the mean cross-entropy of ``labels`` (B, T) (-100 takes no
        part) under teacher forcing, with ``label_smoothing`` as ``F.cross_entropy``'s; equal
        to :func:`seq2seq_loss` of :meth:`forward`'s logits, but the LM head runs on the
        counted positions only ((N, V) logits, not (B, T, V): padded targets cost nothing
        there), fused with the cross-entropy and computed a chunk of positions at a time
        (:func:`~attnkit.models.losses.linear_cross_entropy`), so those logits are not kept
        either.

        Args:
            input_ids: (B, S) source ids.
            attention_mask: (B, S) source mask, 1 = real token, or None.
            labels: (B, T) target ids, -100 ignored.
            label_smoothing: as ``F.cross_entropy``'s.

        Examples:
            >>> model.loss(src, src_mask, tgt, label_smoothing=0.1).backward()
        """
        memory = self.encode(input_ids, attention_mask)  # (B, S, C)
        h = self.decode(self.shift_right(labels), memory, attention_mask)  # (B, T, C)
        flat = labels.reshape(-1)
        rows = (flat != IGNORE_INDEX).nonzero()[:, 0]  # (N,) the counted positions
        cfg = self.config
        return linear_cross_entropy(
            h.reshape(-1, h.shape[-1]),
            self.lm_head.proj.weight,
            rows,
            flat[rows],
            bias=self.logits_bias,
            scale=cfg.d_model**-0.5 if cfg.scale_decoder_output else 1.0,
            label_smoothing=label_smoothing,
        )

    # ---------------------------------------------------------------------------------------
    def _check_length(self, what: str, n: int) -> None:
        cfg = self.config
        if n > cfg.max_seq_len and cfg.positional in ("learned", "sinusoidal"):
            raise ValueError(
                f"{what} of {n} tokens exceeds max_seq_len={cfg.max_seq_len} "
                f"(positional={cfg.positional!r})"
            )

    def _check_memory(self, states: Tensor) -> tuple[int, int]:
        C = self.config.d_model
        if not isinstance(states, Tensor) or states.dim() != 3 or states.shape[-1] != C:
            got = tuple(states.shape) if isinstance(states, Tensor) else type(states).__name__
            raise ValueError(f"encoder_states must be (B, S, d_model={C}), got {got}")
        return states.shape[0], states.shape[1]
