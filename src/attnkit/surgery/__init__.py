"""Attention surgery: put an attention variant into a trained model and measure what it changes.

    >>> model = attnkit.load("minilm")
    >>> lsh = swap_attention(model, "lsh", n_hashes=4)      # a copy; ``model`` is untouched
    >>> report = compare(model, lsh, texts)                  # speed and output drift
    >>> print(report.format())

Every model block holds a :class:`~attnkit.attention.module.MultiHeadAttention`, which runs an
approximate kernel from :mod:`attnkit.attention.variants` in place of exact attention when its
``variant_attn`` is set. Swapping sets it (one fresh variant module per layer), keeping the
projections, positions and weights as they are; ``"exact"`` puts exact attention back.

:func:`compare` runs the original and the swapped model on the same token batches and reports

* speed: texts per second of each, timed in alternating rounds (the fastest round of each);
* the cosine similarity of every layer's hidden states (per token, real tokens only), mean and
  minimum over tokens;
* the cosine similarity of the sentence embeddings (pooled as the model pools: mean over real
  tokens for MiniLM), mean and minimum over texts.

:func:`capture_qkv` records the queries, keys and values every attention layer sees on a
batch (after positions are applied), for measuring a kernel on real activations.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from attnkit.attention.module import MultiHeadAttention

EXACT = "exact"


# --------------------------------------------------------------------------------------------
# variant names, parameters and layers
# --------------------------------------------------------------------------------------------
def variant_names() -> list[str]:
    """Everything :func:`swap_attention` accepts: ``"exact"`` and the registered variants."""
    from attnkit.attention import variants

    return [EXACT, *variants.names()]


def parse_value(text: str) -> Any:
    """A parameter value from text: ``none`` -> None, ``true``/``false`` -> bool, then int,
    then float; anything else stays a string."""
    low = text.strip().lower()
    if low in ("none", "null"):
        return None
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text.strip())
        except ValueError:
            pass
    return text


def parse_params(items: Sequence[str]) -> dict[str, Any]:
    """``["n_hashes=4", "seed=1"]`` -> ``{"n_hashes": 4, "seed": 1}`` (values typed by
    :func:`parse_value`); a malformed or repeated item is a ValueError naming it."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = str(item).partition("=")
        key = key.strip()
        if not sep or not key.isidentifier() or not value.strip():
            raise ValueError(
                f"a variant parameter must look like NAME=VALUE (e.g. n_hashes=4), got {item!r}"
            )
        if key in out:
            raise ValueError(
                f"variant parameter {key!r} given twice ({key}={out[key]!r} and {item!r}); "
                f"expected each parameter once"
            )
        out[key] = parse_value(value)
    return out


def resolve_params(variant: str, params: dict[str, Any]) -> dict[str, Any]:
    """Check ``variant`` and ``params`` and return every parameter with its value (the defaults
    filled in). Errors are ValueErrors naming the bad name or value and the valid ones."""
    from attnkit.attention import variants

    if variant not in variant_names():
        raise ValueError(
            f"unknown attention variant {variant!r}; expected one of {variant_names()}"
        )
    if variant == EXACT:
        if params:
            raise ValueError(f"exact attention takes no parameters, got {sorted(params)}")
        return {}
    valid = variants.params(variant)
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {unknown} for attention variant {variant!r}; "
            f"valid parameters: {sorted(valid)}"
        )
    _build(variant, params)  # a bad value fails here, before any model is touched
    return {**valid, **params}


def _build(variant: str, params: dict[str, Any]) -> nn.Module:
    from attnkit.attention import variants

    try:
        return variants.get(variant, **params)
    except TypeError as e:  # a value of the wrong type: report it like any bad value
        raise ValueError(f"attention variant {variant!r}: {e}") from None


def attention_layers(model: nn.Module) -> list[MultiHeadAttention]:
    """The attention module of every block of an attnkit model, in order."""
    blocks = getattr(model, "blocks", None)
    layers = [getattr(b, "attn", None) for b in blocks] if isinstance(blocks, nn.ModuleList) else []
    if not layers or not all(isinstance(a, MultiHeadAttention) for a in layers):
        raise ValueError(
            f"expected an attnkit GPT or BERT model (blocks with MultiHeadAttention), "
            f"got {type(model).__name__}"
        )
    return layers


def check_layers(layers: Sequence[int] | None, n_layer: int) -> list[int]:
    """Sorted distinct layer indices, each in [0, n_layer) (negative ones count from the end);
    None means every layer."""
    if layers is None:
        return list(range(n_layer))
    out = set()
    for i in layers:
        if isinstance(i, bool) or not isinstance(i, int) or not -n_layer <= i < n_layer:
            raise ValueError(
                f"layer {i!r} does not exist; expected indices in 0..{n_layer - 1} "
                f"(this model has {n_layer} layers)"
            )
        out.add(i % n_layer)
    if not out:
        raise ValueError(f"layers is empty; expected indices in 0..{n_layer - 1}, or None for all")
    return sorted(out)


def parse_layers(text: str, n_layer: int) -> list[int]:
    """``"0,2,4-5"`` -> ``[0, 2, 4, 5]``, checked against ``n_layer``."""
    picked: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        lo, dash, hi = part.partition("-")
        try:
            picked += list(range(int(lo), int(hi) + 1)) if dash and lo else [int(part)]
        except ValueError:
            raise ValueError(
                f"bad layer {part!r} in {text!r}; expected indices or ranges such as "
                f"0,2,4-5 within 0..{n_layer - 1}"
            ) from None
    return check_layers(picked, n_layer)


@dataclasses.dataclass(frozen=True)
class SwapRecord:
    """What :func:`swap_attention` did: the variant, its full parameters and the layers."""

    variant: str
    params: dict[str, Any]
    layers: tuple[int, ...]

    def describe(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{self.variant}({args})" if args else self.variant


# --------------------------------------------------------------------------------------------
# swapping
# --------------------------------------------------------------------------------------------
def _install(
    model: nn.Module,
    layers: list[int],
    make: Callable[[], nn.Module | None],
    name: str | None,
) -> list[tuple[str | None, nn.Module | None]]:
    """Put ``make()`` into the chosen layers; returns what was there before, for undoing."""
    attns = attention_layers(model)
    if name is not None:
        for i in layers:
            a = attns[i]
            if a.positional == "alibi" or a.window is not None:
                what = "positional='alibi'" if a.positional == "alibi" else f"window={a.window}"
                raise ValueError(
                    f"layer {i} uses {what}, which attention variants cannot take; "
                    f"expected a layer without a score bias or sliding window"
                )
    device = next(model.parameters()).device
    before = []
    for i in layers:
        a = attns[i]
        before.append((a.variant, a.variant_attn))
        mod = make()
        a.variant = name
        a.variant_attn = None if mod is None else mod.to(device)
    return before


def _undo(model: nn.Module, layers: list[int], before) -> None:
    attns = attention_layers(model)
    for i, (name, mod) in zip(layers, before):
        attns[i].variant = name
        attns[i].variant_attn = mod


def _record_config(model: nn.Module, record: SwapRecord) -> None:
    """Keep the model's config truthful: with every layer swapped, config.attention names the
    variant (a saved model then reloads with it); otherwise the config is left alone and the
    per-layer choice lives only in ``model.attention_swap``."""
    cfg = getattr(model, "config", None)
    if cfg is not None and len(record.layers) == cfg.n_layer:
        given = {k: v for k, v in record.params.items()}
        model.config = cfg.replace(attention=record.variant, attention_params=given)
    model.attention_swap = record


def swap_attention(
    model: nn.Module,
    variant: str,
    *,
    layers: Sequence[int] | None = None,
    in_place: bool = False,
    **params: Any,
) -> nn.Module:
    """A model whose attention in ``layers`` (default all) is ``variant`` with ``params``.

    ``variant`` is a name from :func:`variant_names` (``"exact"`` restores exact attention).
    By default the model is copied (weights included) and the original is not modified; with
    ``in_place=True`` the given model is changed and returned. Each swapped layer gets its own
    variant module. Unknown names, unknown parameters and bad values raise ValueError naming
    them and the valid ones.
    """
    full = resolve_params(variant, params)
    chosen = check_layers(layers, len(attention_layers(model)))
    target = model if in_place else _copy(model)
    name = None if variant == EXACT else variant
    _install(
        target, chosen, (lambda: None) if name is None else (lambda: _build(variant, params)), name
    )
    _record_config(target, SwapRecord(variant, full, tuple(chosen)))
    return target


def _copy(model: nn.Module) -> nn.Module:
    """A deep copy sharing only the tokenizer (it holds no weights and is never modified)."""
    memo: dict[int, Any] = {}
    tok = getattr(model, "tokenizer", None)
    if tok is not None:
        memo[id(tok)] = tok
    return copy.deepcopy(model, memo)


@contextlib.contextmanager
def swapped(
    model: nn.Module, variant: str, *, layers: Sequence[int] | None = None, **params: Any
) -> Iterator[nn.Module]:
    """Swap ``model``'s attention in place for the ``with`` block, then put it back (the
    config too); no copy is made.

        >>> with swapped(model, "performer", nb_features=128) as m:
        ...     h = m.hidden_states(ids)
    """
    full = resolve_params(variant, params)
    chosen = check_layers(layers, len(attention_layers(model)))
    name = None if variant == EXACT else variant
    config, record = getattr(model, "config", None), getattr(model, "attention_swap", None)
    before = _install(
        model, chosen, (lambda: None) if name is None else (lambda: _build(variant, params)), name
    )
    try:
        _record_config(model, SwapRecord(variant, full, tuple(chosen)))
        yield model
    finally:
        _undo(model, chosen, before)
        if config is not None:
            model.config = config
        if record is None:
            model.__dict__.pop("attention_swap", None)
        else:
            model.attention_swap = record


# --------------------------------------------------------------------------------------------
# capturing q, k, v
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class LayerQKV:
    """The inputs of one attention call: q, k, v (B, H, T, D) after positions (k and v with
    as many heads as q), the key padding mask (B, T) bool (True = real token) or None, and
    whether the layer is causal."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    key_padding_mask: torch.Tensor | None
    causal: bool


class _Recorder(nn.Module):
    """Stands in for a variant: records its inputs and returns exact attention."""

    def __init__(self, store: list[LayerQKV]):
        super().__init__()
        self.store = store

    def forward(self, q, k, v, *, causal=False, key_padding_mask=None):
        from attnkit.attention import attention

        self.store.append(
            LayerQKV(
                q.detach(),
                k.detach(),
                v.detach(),
                None if key_padding_mask is None else key_padding_mask.detach(),
                causal,
            )
        )
        return attention(q, k, v, causal=causal, key_padding_mask=key_padding_mask)


@torch.no_grad()
def capture_qkv(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> list[LayerQKV]:
    """Run ``model.hidden_states(input_ids, attention_mask)`` once and return what every
    attention layer received, in layer order. The layers attend exactly while recording, so
    each layer sees the activations of the unmodified model; the model is restored afterwards.
    Layers with ALiBi or a sliding window cannot be recorded (ValueError)."""
    attns = attention_layers(model)
    store: list[LayerQKV] = []
    layers = list(range(len(attns)))
    before = _install(model, layers, lambda: _Recorder(store), "capture")
    try:
        model.hidden_states(input_ids, attention_mask=attention_mask)
    finally:
        _undo(model, layers, before)
    return store


# --------------------------------------------------------------------------------------------
# comparing
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class LayerDrift:
    """Cosine similarity of one layer's hidden states (swapped vs original), over real tokens."""

    layer: int
    swapped: bool
    cos_mean: float
    cos_min: float


@dataclasses.dataclass
class SwapReport:
    """What :func:`compare` measured. Speeds are texts per second, the fastest of ``rounds``
    timed passes over all texts; cosines compare the swapped model against the original."""

    attention: str  # e.g. "lsh(n_hashes=4, ...)"
    layers_swapped: list[int]
    n_layer: int
    n_texts: int
    n_tokens: int
    longest: int
    truncated: int  # texts cut at max_length
    max_length: int
    batch_size: int
    pooling: str
    device: str
    rounds: int
    original_texts_per_s: float
    swapped_texts_per_s: float
    embedding_cos_mean: float
    embedding_cos_min: float
    layers: list[LayerDrift]

    @property
    def speedup(self) -> float:
        return self.swapped_texts_per_s / self.original_texts_per_s

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "speedup": self.speedup}

    def format(self, title: str | None = None) -> str:
        """The report as text: a summary and one line per layer."""
        lines = [title] if title else []
        swapped = ",".join(map(str, self.layers_swapped))
        lines += [
            f"attention: {self.attention} in layers {swapped} of {self.n_layer}",
            f"texts: {self.n_texts} ({self.n_tokens} tokens, longest {self.longest}, "
            f"{self.truncated} truncated at {self.max_length}), batch size {self.batch_size}, {self.device}",
            f"speed: original {self.original_texts_per_s:.1f} texts/s, swapped "
            f"{self.swapped_texts_per_s:.1f} texts/s ({self.speedup:.2f}x; fastest of {self.rounds} "
            f"round{'s' if self.rounds != 1 else ''})",
            f"sentence embedding cosine ({self.pooling} pooling): mean {self.embedding_cos_mean:.6f}, "
            f"min {self.embedding_cos_min:.6f}",
            "hidden-state cosine per layer (over real tokens):",
            f"  {'layer':>5}  {'swapped':<7}  {'mean':>8}  {'min':>8}",
        ]
        for d in self.layers:
            lines.append(
                f"  {d.layer:>5}  {'yes' if d.swapped else 'no':<7}  {d.cos_mean:>8.6f}  {d.cos_min:>8.6f}"
            )
        return "\n".join(lines)


def sentence_pooling(model: nn.Module) -> str:
    """How the model makes sentence vectors: its sentence-transformers setting, else the
    config's pooling for an encoder, else mean pooling."""
    sentence = (getattr(model, "extra_config", None) or {}).get("sentence", {})
    if sentence.get("pooling"):
        return sentence["pooling"]
    cfg = model.config
    return cfg.pooling if cfg.arch == "bert" else "mean"


def default_max_length(model: nn.Module) -> int:
    sentence = (getattr(model, "extra_config", None) or {}).get("sentence", {})
    limit = model.config.max_seq_len
    return min(sentence.get("max_seq_length") or limit, limit)


def _batches(ids_list: list[list[int]], batch_size: int, device: torch.device):
    """Right-padded (ids (B, T), mask (B, T) or None) batches in order of falling length."""
    order = sorted(range(len(ids_list)), key=lambda i: -len(ids_list[i]))
    out = []
    for start in range(0, len(order), batch_size):
        seqs = [ids_list[i] for i in order[start : start + batch_size]]
        T = len(seqs[0])
        ids = torch.zeros(len(seqs), T, dtype=torch.long)
        mask = torch.zeros(len(seqs), T, dtype=torch.long)
        for b, s in enumerate(seqs):
            ids[b, : len(s)] = torch.tensor(s)
            mask[b, : len(s)] = 1
        out.append((ids.to(device), None if bool(mask.all()) else mask.to(device)))
    return out


def _run_with_layers(model: nn.Module, ids, mask) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Every block's output (B, T, C) and the final hidden states (B, T, C)."""
    outs: list[torch.Tensor] = []
    hooks = [b.register_forward_hook(lambda m, i, o: outs.append(o)) for b in model.blocks]
    try:
        final = model.hidden_states(ids, attention_mask=mask)
    finally:
        for h in hooks:
            h.remove()
    return outs, final


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _check_models(original: nn.Module, swapped: nn.Module) -> None:
    a, b = attention_layers(original), attention_layers(swapped)
    if len(a) != len(b) or original.config.d_model != swapped.config.d_model:
        raise ValueError(
            f"the swapped model must have the original's shape: {len(a)} layers of width "
            f"{original.config.d_model}, got {len(b)} layers of width {swapped.config.d_model}"
        )
    if original is swapped:
        raise ValueError(
            "compare needs two models, got the same one twice; swap_attention(..., "
            "in_place=False) gives a copy to compare against"
        )


@torch.no_grad()
def compare(
    original: nn.Module,
    swapped: nn.Module,
    texts: Sequence[str],
    *,
    batch_size: int = 32,
    max_length: int | None = None,
    rounds: int = 3,
    tokenizer: Any = None,
    pooling: str | None = None,
) -> SwapReport:
    """Run ``original`` and ``swapped`` on ``texts`` and report speed and output drift.

    Texts are tokenised once by ``tokenizer`` (default the original model's), cut at
    ``max_length`` tokens (default the model's sentence length, else its max_seq_len), sorted
    by length and batched with right padding, as an embedding model is run. Both models run in
    eval mode (their modes are restored afterwards). One untimed pass collects the hidden
    states of every block of both; then ``rounds`` timed passes alternate original and swapped.
    """
    from tokenizers import Tokenizer

    from attnkit.models.heads import POOLERS

    _check_models(original, swapped)
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if not texts:
        raise ValueError("no texts to compare on; expected at least one text")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
    if bad:
        raise ValueError(f"text {bad[0]} is {texts[bad[0]]!r}; expected non-empty strings")
    for name, value in (("batch_size", batch_size), ("rounds", rounds)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    limit = original.config.max_seq_len
    max_length = default_max_length(original) if max_length is None else max_length
    if (
        isinstance(max_length, bool)
        or not isinstance(max_length, int)
        or not 1 <= max_length <= limit
    ):
        raise ValueError(
            f"max_length must be an int in 1..{limit} (the model's positions), got {max_length!r}"
        )
    pooling = pooling or sentence_pooling(original)
    if pooling not in POOLERS:
        raise ValueError(f"pooling must be one of {sorted(POOLERS)}, got {pooling!r}")
    tok = tokenizer if tokenizer is not None else getattr(original, "tokenizer", None)
    if tok is None:
        raise ValueError(
            "the original model has no tokenizer; expected tokenizer=... (a tokenizers.Tokenizer)"
        )
    tok = Tokenizer.from_str(tok.to_str())  # a private copy: padding and truncation set here only
    tok.no_padding()
    tok.no_truncation()
    full = [e.ids for e in tok.encode_batch(texts)]
    tok.enable_truncation(max_length)
    ids_list = [e.ids for e in tok.encode_batch(texts)]
    truncated = sum(len(a) > len(b) for a, b in zip(full, ids_list))
    if any(len(s) == 0 for s in ids_list):
        raise ValueError(
            f"text {next(i for i, s in enumerate(ids_list) if not s)} gives no tokens; "
            f"expected texts the tokenizer can encode"
        )

    device = next(original.parameters()).device
    if next(swapped.parameters()).device != device:
        raise ValueError(
            f"both models must be on one device, got {device} and "
            f"{next(swapped.parameters()).device}"
        )
    batches = _batches(ids_list, batch_size, device)
    modes = (original.training, swapped.training)
    original.eval()
    swapped.eval()
    try:
        n_layer = len(attention_layers(original))
        sums = [0.0] * n_layer
        mins = [math.inf] * n_layer
        count = 0
        emb_cos: list[torch.Tensor] = []
        for ids, mask in batches:
            layers_a, final_a = _run_with_layers(original, ids, mask)
            layers_b, final_b = _run_with_layers(swapped, ids, mask)
            real = (
                torch.ones(ids.shape, dtype=torch.bool, device=device)
                if mask is None
                else mask.bool()
            )
            for i, (a, b) in enumerate(zip(layers_a, layers_b)):
                cos = F.cosine_similarity(a.double(), b.double(), dim=-1)[real]  # (real tokens,)
                sums[i] += float(cos.sum())
                mins[i] = min(mins[i], float(cos.min()))
            count += int(real.sum())
            pa = POOLERS[pooling](final_a.double(), mask)  # (B, C)
            pb = POOLERS[pooling](final_b.double(), mask)
            emb_cos.append(F.cosine_similarity(pa, pb, dim=-1))
        emb = torch.cat(emb_cos)

        times: dict[str, list[float]] = {"original": [], "swapped": []}
        for _ in range(rounds):
            for key, m in (("original", original), ("swapped", swapped)):
                _synchronize(device)
                start = time.perf_counter()
                for ids, mask in batches:
                    m.hidden_states(ids, attention_mask=mask)
                _synchronize(device)
                times[key].append(time.perf_counter() - start)
    finally:
        original.train(modes[0])
        swapped.train(modes[1])

    before = [a.variant for a in attention_layers(original)]
    after = [a.variant for a in attention_layers(swapped)]
    changed = [i for i in range(n_layer) if before[i] != after[i]]
    record = getattr(swapped, "attention_swap", None)
    if record is not None:
        changed = sorted(set(changed) | set(record.layers))
        attention = record.describe()
    else:
        attention = ", ".join(sorted({str(after[i] or EXACT) for i in changed})) or EXACT
    return SwapReport(
        attention=attention,
        layers_swapped=changed,
        n_layer=n_layer,
        n_texts=len(texts),
        n_tokens=sum(map(len, ids_list)),
        longest=max(map(len, ids_list)),
        truncated=truncated,
        max_length=max_length,
        batch_size=batch_size,
        pooling=pooling,
        device=str(device),
        rounds=rounds,
        original_texts_per_s=len(texts) / min(times["original"]),
        swapped_texts_per_s=len(texts) / min(times["swapped"]),
        embedding_cos_mean=float(emb.mean()),
        embedding_cos_min=float(emb.min()),
        layers=[LayerDrift(i, i in changed, sums[i] / count, mins[i]) for i in range(n_layer)],
    )
