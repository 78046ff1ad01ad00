"""What GPT and BERT share: block construction from a config, masks and id checks, counts."""

from __future__ import annotations

import math

import torch
from torch import nn

from attnkit._util.env import debug
from attnkit.attention.module import MultiHeadAttention
from attnkit.models.config import ModelConfig
from attnkit.models.embeddings import Embeddings
from attnkit.models.layers import TransformerBlock, make_mlp, make_norm
from attnkit.models.meta import ModelMeta


def make_block(cfg: ModelConfig) -> TransformerBlock:
    """One freshly initialised transformer block as ``cfg`` describes it: its attention (RoPE
    or ALiBi inside it, the variant of ``cfg.attention``), MLP, norms and norm placement.

    Examples:
        >>> make_block(get_preset("tiny")).placement
        'pre'
    """
    positional = cfg.positional if cfg.positional in ("rope", "alibi") else None
    variant = None if cfg.attention == "exact" else cfg.attention
    attn = MultiHeadAttention(
        cfg.d_model,
        cfg.n_heads,
        cfg.n_kv_heads,
        causal=cfg.causal,
        window=cfg.window,
        positional=positional,
        dropout=cfg.attn_dropout,
        bias=cfg.bias,
        backend=cfg.backend,
        rope_base=cfg.rope_base,
        variant=variant,
        variant_params=dict(cfg.attention_params) if variant else None,
    )
    mlp = make_mlp(cfg.mlp, cfg.d_model, cfg.d_ff, bias=cfg.bias)
    norm1 = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps, bias=cfg.bias)
    norm2 = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps, bias=cfg.bias)
    return TransformerBlock(
        attn, mlp, norm1, norm2, placement=cfg.norm_placement, dropout=cfg.dropout
    )


def positions_from_documents(document_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) document ids -> (B, T) positions that restart at 0 where each document starts.

    Examples:
        >>> positions_from_documents(torch.tensor([[0, 0, 1, 1, 1]]))
        tensor([[0, 1, 0, 1, 2]])
    """
    T = document_ids.shape[1]
    idx = torch.arange(T, device=document_ids.device).expand_as(document_ids)  # (B, T)
    start = torch.ones_like(document_ids, dtype=torch.bool)
    start[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
    first = torch.where(start, idx, torch.zeros_like(idx)).cummax(dim=1).values  # (B, T)
    return idx - first


def document_positions(
    position_ids: torch.Tensor | None, document_ids: torch.Tensor | None, shape: tuple[int, int]
) -> torch.Tensor | None:
    """The positions a forward uses: ``position_ids`` when given, else with ``document_ids``
    (B, T) = ``shape`` positions that restart at each document (B, T), else None.

    Raises:
        ValueError: ``document_ids`` is not of shape ``shape``.

    Examples:
        >>> document_positions(None, torch.tensor([[0, 0, 1]]), (1, 3))
        tensor([[0, 1, 0]])
    """
    if position_ids is not None or document_ids is None:
        return position_ids
    if tuple(document_ids.shape) != shape:
        raise ValueError(
            f"document_ids must have shape (B, T) = {shape}, got {tuple(document_ids.shape)}"
        )
    return positions_from_documents(document_ids)  # (B, T)


def valid_key_mask_from(
    attention_mask: torch.Tensor | None, shape: tuple[int, int]
) -> torch.Tensor | None:
    """attention_mask (B, Tk), 1 = real token -> bool mask (True = real token), or None.

    The shape is always checked. Only with ``ATTNKIT_DEBUG=1`` (:func:`attnkit._util.env.debug`)
    is a mask of real tokens only turned into None (that needs a host sync); otherwise callers
    that know a batch has no padding pass no mask.

    Raises:
        ValueError: ``attention_mask`` is not of shape ``shape`` (B, Tk).

    Examples:
        >>> valid_key_mask_from(torch.tensor([[1, 1, 0]]), (1, 3))
        tensor([[ True,  True, False]])
    """
    if attention_mask is None:
        return None
    if attention_mask.dim() != 2 or tuple(attention_mask.shape) != shape:
        raise ValueError(
            f"attention_mask must have shape (B, Tk) = {shape}, got {tuple(attention_mask.shape)}"
        )
    mask = attention_mask.bool()  # (B, Tk)
    if debug() and bool(mask.all()):
        return None
    return mask


def check_ids(name: str, ids: torch.Tensor, limit: int) -> None:
    """``ids`` is an integer (B, T) tensor; with ``ATTNKIT_DEBUG=1``
    (:func:`attnkit._util.env.debug`) also that every id is in ``[0, limit)`` (a host sync;
    without it an id out of range fails in the embedding).

    Raises:
        ValueError: ``ids`` is not an integer (B, T) tensor, or (debug) holds an id out of
            range; the message starts with ``name``.

    Examples:
        >>> check_ids("input_ids", torch.randint(0, 256, (2, 16)), 256)  # None: they are fine
    """
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.dtype.is_floating_point:
        what = (
            f"shape {tuple(ids.shape)} dtype {ids.dtype}"
            if isinstance(ids, torch.Tensor)
            else type(ids).__name__
        )
        raise ValueError(f"{name} must be an integer tensor of shape (B, T), got {what}")
    if debug() and ids.numel():
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= limit:
            raise ValueError(f"{name} holds {lo if lo < 0 else hi}, outside [0, {limit})")


class ModelBase(nn.Module):
    """Counting and initialisation shared by the models.

    ``config`` is the architecture (frozen); ``meta`` what the model carries besides it
    (tokenizer, source, swaps, ...; see :mod:`attnkit.models.meta`), set by the loader and
    replaced whole by code that makes a new model from an old one.

    Examples:
        >>> isinstance(build_model("tiny"), ModelBase)
        True
    """

    config: ModelConfig
    meta: ModelMeta = ModelMeta()
    embed: Embeddings
    blocks: nn.ModuleList
    norm: nn.Module

    def _build_trunk(self, config: ModelConfig, arch: str) -> None:
        """Check ``config.arch`` and make what every model has, in this order (the order of
        the state dict and of initialisation): ``embed``, ``blocks``, ``norm`` (the final norm,
        an identity without ``config.final_norm``: post-norm blocks end normalised)."""
        if config.arch != arch:
            raise ValueError(
                f"{type(self).__name__} needs config.arch={arch!r}, got {config.arch!r}"
            )
        self.config = config
        self.embed = Embeddings(config)
        self.blocks = nn.ModuleList(make_block(config) for _ in range(config.n_layer))
        self.norm = (
            make_norm(config.norm, config.d_model, config.norm_eps, bias=config.bias)
            if config.final_norm
            else nn.Identity()
        )

    def tied_keys(self) -> list[str]:
        """state_dict keys that alias another key (not stored in checkpoints); none here.

        Examples:
            >>> build_model("tiny", tie_embeddings=False).tied_keys()
            []
        """
        return []

    def init_weights(self) -> None:
        """Normal(0, initializer_range) weights, zero biases, unit norms; residual output
        projections scaled by 1/sqrt(2 * n_layer) (GPT-2).

        Linear and embedding weights are drawn afresh, in place; norms are left as they are
        built (ones and zeros).

        Examples:
            >>> model.init_weights()  # re-draws every linear and embedding weight
        """
        std = self.config.initializer_range
        for name, mod in self.named_modules():
            if isinstance(mod, (nn.Linear, nn.Embedding)):
                s = (
                    std / math.sqrt(2 * self.config.n_layer)
                    if name.endswith(("attn.out_proj", "mlp.down"))
                    else std
                )
                nn.init.normal_(mod.weight, 0.0, s)
                if isinstance(mod, nn.Linear) and mod.bias is not None:
                    nn.init.zeros_(mod.bias)

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Distinct parameters (tied ones counted once); optionally without the embeddings.

        Examples:
            >>> build_model("tiny").num_parameters(exclude_embeddings=True)  # blocks and norms
        """
        seen: set[int] = set()
        total = 0
        skip = set()
        if exclude_embeddings:
            skip = {id(p) for p in self.embed.parameters()}
        for p in self.parameters():
            if id(p) in seen or id(p) in skip:
                continue
            seen.add(id(p))
            total += p.numel()
        return total

    def flops_per_token(self, seq_len: int | None = None, training: bool = False) -> float:
        """Estimated FLOPs per token of a forward pass (x3 with ``training``).

        2 FLOPs per multiply-accumulate of every weight matrix a token passes through (not the
        embedding look-ups), plus the attention scores and weighted sums: 4 * T * d per layer
        for T keys (half that, on average, with a causal mask).

        Args:
            seq_len: the sequence length T; default ``config.max_seq_len``.
            training: count the backward pass too (twice the forward).

        Examples:
            >>> build_model("tiny").flops_per_token(seq_len=128, training=True)
        """
        cfg = self.config
        T = cfg.max_seq_len if seq_len is None else seq_len
        matmul = 0
        for name, mod in self.named_modules():
            if isinstance(mod, nn.Linear) and not name.startswith("embed"):
                matmul += mod.weight.numel()
        keys = T / 2 if cfg.causal else T
        if cfg.window is not None:
            keys = min(keys, cfg.window)
        attn = 4 * keys * cfg.n_heads * cfg.head_dim * cfg.n_layer
        fwd = 2 * matmul + attn
        return float(3 * fwd if training else fwd)
