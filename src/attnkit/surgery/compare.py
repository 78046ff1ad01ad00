"""Attention surgery, the measurement: what a swap changes, and what attention sees.

    >>> report = compare(model, lsh, texts)                  # speed and output drift
    >>> print(report.format())

:func:`compare` runs the original and the swapped model on the same token batches and reports

* speed: texts per second of each, timed in alternating rounds (the fastest round of each);
* the cosine similarity of every layer's hidden states (per token, real tokens only), mean and
  minimum over tokens;
* the cosine similarity of the sentence embeddings (pooled as the model pools: mean over real
  tokens for MiniLM), mean and minimum over texts.

:func:`capture_qkv` records the queries, keys and values every attention layer sees on a
batch (after positions are applied), for measuring a kernel on real activations; it uses the
one kernel recorder, :mod:`attnkit.attention.recording`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from attnkit._util.checks import choice, int_in, positive_int
from attnkit.attention.kernel import ExactKernel
from attnkit.attention.recording import AttentionCall, attention_layers, recording
from attnkit.models.bert import Bert
from attnkit.models.gpt import GPT
from attnkit.models.heads import POOLERS
from attnkit.surgery.swap import EXACT, check_swappable
from attnkit.text.batching import padded_batches
from attnkit.text.pooling import resolve_pooling

# the models compare and capture_qkv run: both have blocks and hidden_states
Model = GPT | Bert

__all__ = [
    "LayerDrift",
    "LayerQKV",
    "SwapReport",
    "capture_qkv",
    "compare",
    "default_max_length",
    "sentence_pooling",
]


# --------------------------------------------------------------------------------------------
# capturing q, k, v
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class LayerQKV:
    """The inputs of one attention call: q, k, v (B, H, T, D) after positions (k and v with
    as many heads as q), the valid-key mask (B, T) bool (True = real token) or None, and
    whether the layer is causal.

    Examples:
        >>> calls = capture_qkv(model, ids, mask); calls[0].q.shape  # (B, H, T, D)
    """

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    valid_key_mask: torch.Tensor | None
    causal: bool


def _layer_qkv(call: AttentionCall) -> LayerQKV:
    rep = call.q.shape[1] // call.k.shape[1]
    k, v = call.k.detach(), call.v.detach()
    if rep > 1:  # query head h reads key/value head h // rep
        k = k.repeat_interleave(rep, dim=1)  # (B, H, T, D)
        v = v.repeat_interleave(rep, dim=1)  # (B, H, T, D)
    mask = call.valid_key_mask
    return LayerQKV(call.q.detach(), k, v, None if mask is None else mask.detach(), call.causal)


@torch.no_grad()
def capture_qkv(
    model: Model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> list[LayerQKV]:
    """Run ``model.hidden_states(input_ids, attention_mask)`` once and return what every
    attention layer received, in layer order. The layers attend exactly while recording, so
    each layer sees the activations of the unmodified model; the model is restored afterwards.
    Layers with ALiBi or a sliding window cannot be recorded (ValueError).

    Examples:
        >>> calls = capture_qkv(model, ids, mask)  # ids, mask (B, T); one LayerQKV per layer
    """
    attns = attention_layers(model)
    check_swappable(attns, range(len(attns)))
    store: list[LayerQKV] = []
    exact = [ExactKernel(a.backend) for a in attns]
    before = [a.set_kernel(kernel) for a, kernel in zip(attns, exact)]
    try:
        with recording(attns, lambda i, call: store.append(_layer_qkv(call))):
            model.hidden_states(input_ids, attention_mask=attention_mask)
    finally:
        for a, kernel in zip(attns, before):
            a.set_kernel(kernel)
    return store


# --------------------------------------------------------------------------------------------
# comparing
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class LayerDrift:
    """Cosine similarity of one layer's hidden states (swapped vs original), over real tokens.

    Examples:
        >>> [d.cos_min for d in report.layers]  # one LayerDrift per layer
    """

    layer: int
    swapped: bool
    cos_mean: float
    cos_min: float


@dataclasses.dataclass
class SwapReport:
    """What :func:`compare` measured. Speeds are texts per second, the fastest of ``rounds``
    timed passes over all texts; cosines compare the swapped model against the original.

    Examples:
        >>> print(compare(model, swap_attention(model, "lsh"), texts).format())
    """

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
        """How many times faster the swapped model ran: its texts per second over the original's.

        Examples:
            >>> report.speedup  # swapped texts/s over original texts/s
        """
        return self.swapped_texts_per_s / self.original_texts_per_s

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready values (what ``attnkit swap --json`` prints).

        Examples:
            >>> json.dumps(report.to_dict())
        """
        return {**dataclasses.asdict(self), "speedup": self.speedup}

    def format(self, title: str | None = None) -> str:
        """The report as text: a summary and one line per layer.

        Examples:
            >>> print(report.format("minilm, lsh"))
        """
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


def sentence_pooling(model: Model) -> str:
    """How the model makes sentence vectors: an encoder's declared pooling
    (``config.pooling``, via :func:`attnkit.text.pooling.resolve_pooling`), mean pooling for a
    decoder.

    Examples:
        >>> sentence_pooling(attnkit.load("minilm"))  # 'mean'
    """
    return resolve_pooling(model) if model.config.arch == "bert" else "mean"


def default_max_length(model: Model) -> int:
    """The longest input the model's tokenizer keeps (``meta.max_length``), within its
    positions.

    Examples:
        >>> default_max_length(attnkit.load("minilm"))
    """
    limit = model.config.max_seq_len
    return min(model.meta.max_length or limit, limit)


def _batches(
    ids_list: list[list[int]], batch_size: int, device: torch.device
) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """Right-padded (ids (B, T), mask (B, T) or None) batches in order of falling length."""
    out = []
    for b in padded_batches(ids_list, batch_size, pad_id=0):
        b = b.to(device)
        out.append((b.ids, b.attention_mask))
    return out


def _run_with_layers(
    model: Model, ids: torch.Tensor, mask: torch.Tensor | None
) -> tuple[list[torch.Tensor], torch.Tensor]:
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


def _check_models(original: Model, swapped: Model) -> None:
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
    original: Model,
    swapped: Model,
    texts: Sequence[str],
    *,
    batch_size: int = 32,
    max_length: int | None = None,
    rounds: int = 3,
    tokenizer: Tokenizer | None = None,
    pooling: str | None = None,
) -> SwapReport:
    """Run ``original`` and ``swapped`` on ``texts`` and report speed and output drift.

    Texts are tokenised once by ``tokenizer`` (default the original model's), cut at
    ``max_length`` tokens (default the model's sentence length, else its max_seq_len), sorted
    by length and batched with right padding, as an embedding model is run. Both models run in
    eval mode (their modes are restored afterwards). One untimed pass collects the hidden
    states of every block of both; then ``rounds`` timed passes alternate original and swapped.

    Examples:
        >>> report = compare(model, swap_attention(model, "lsh", n_hashes=4), ["a text", "another"])
    """
    _check_models(original, swapped)
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if not texts:
        raise ValueError("no texts to compare on; expected at least one text")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
    if bad:
        raise ValueError(f"text {bad[0]} is {texts[bad[0]]!r}; expected non-empty strings")
    positive_int("batch_size", batch_size)
    positive_int("rounds", rounds)
    limit = original.config.max_seq_len
    max_length = default_max_length(original) if max_length is None else max_length
    int_in("max_length", max_length, 1, limit, f"an int in 1..{limit} (the model's positions)")
    pooling = pooling or sentence_pooling(original)
    choice("pooling", pooling, sorted(POOLERS))
    tok = tokenizer if tokenizer is not None else original.meta.tokenizer
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

    before = [a.kernel.name for a in attention_layers(original)]
    after = [a.kernel.name for a in attention_layers(swapped)]
    changed = [i for i in range(n_layer) if before[i] != after[i]]
    if swapped.meta.swaps:
        record = swapped.meta.swaps[-1]
        changed = sorted(set(changed) | set(record.layers))
        attention = record.describe()
    else:
        attention = ", ".join(sorted({after[i] for i in changed})) or EXACT
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
