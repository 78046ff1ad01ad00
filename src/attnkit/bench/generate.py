"""``attnkit bench generate``: KV-cached greedy decoding, attnkit next to HF transformers, and
each side against the machine's memory-bandwidth limit.

Both sides hold the same weights: a ``transformers.GPT2LMHeadModel`` is built from a
``GPT2Config`` (GPT-2 124M shape unless ``--quick``) with its random initialisation, and its
state dict is converted into an attnkit GPT. Each case decodes the same random prompts greedily
(HF: ``generate(do_sample=False)``; attnkit: ``attnkit.generate(temperature=0)``), always the
full number of new tokens, every side in turns (``--rounds``, the best round of each counts;
the time includes the prompt). Cases:

* ``b1-fp32``: batch 1, 256 new tokens, float32 on both sides. Target: >= 0.95x HF.
* ``b1-bf16``: batch 1, attnkit with bfloat16 weights, against HF in float32. Target: >= 1.8x.
  HF in bfloat16 is timed too (the baseline in the same precision).
* ``b8-fp32``: batch 8, 128 new tokens, float32. Target: >= 2x HF's tokens/s.
* ``b1-int8``: batch 1, attnkit with int8 weight-only linears, against HF float32. Targets:
  >= 3x, and its top-1 token equal to float32's on >= 99% of the steps of the float32 greedy
  sequence (teacher-forced: the int8 model reads the float32 output and predicts each token).
  Two other weight-only int8 linears run in the same attnkit model and decoding loop beside
  it, so that only the linear differs: torchao's ``quantize_(model, Int8WeightOnlyConfig())``
  (skipped, saying why, where torchao is not installed or fails) and a minimal linear over
  ``torch._weight_int8pack_mm`` (bfloat16 activations, the same per-row int8 codes). (HF's
  GPT-2 holds its block weights in ``Conv1D`` layers, which torchao's default filter, plain
  ``nn.Linear``, passes over: in HF's model only the LM head would be quantized.)

The limit: this machine's memory read bandwidth is measured before and after the cases with
the benchmark's threads (:func:`attnkit.bench.bandwidth.measure_read_bandwidth`; the higher
of the two counts). A decoding step reads every weight once, in its storage dtype, and the KV
cache (:func:`~attnkit.bench.bandwidth.decode_weight_bytes`,
:func:`~attnkit.bench.bandwidth.kv_cache_bytes`): all block weights, the final norm, the whole
LM head (tied to the token embedding in GPT-2: the head's product reads all of it) and one row
of each embedding per batch row; the cache at the mean context ``prompt + (new - 1) / 2``
(float32 for attnkit on the CPU, which keeps a bfloat16 model's cache in float32; the model's
dtype for HF). The limit is ``batch x bandwidth / bytes per step`` tokens/s; each side reports
its share of it. Targets: the batch-1 float32, bfloat16 and int8 attnkit rows at >= 70%.

Greedy agreement is the share of new tokens where a side's output equals HF float32's (float32
cases must agree on every token). Prints the tables and the targets, and writes
``generate.json`` in ``--out``.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from attnkit.bench import bandwidth as bw
from attnkit.bench.harness import environment, in_turns, load_text, short_error, timed
from attnkit.bench.report import Check, Report, Table, fmt_bytes, write_json
from attnkit.models.gpt import GPT

logger = logging.getLogger(__name__)

CASES: dict[
    str, tuple[int, int, str, float]
] = {  # name: (batch, new tokens, attnkit weights, target speed-up over HF float32)
    "b1-fp32": (1, 256, "float32", 0.95),
    "b1-bf16": (1, 256, "bfloat16", 1.8),
    "b8-fp32": (8, 128, "float32", 2.0),
    "b1-int8": (1, 256, "int8", 3.0),
}
# the sides timed beyond attnkit and HF float32: the baselines in the case's own precision
EXTRA_SIDES: dict[str, tuple[str, ...]] = {
    "b1-bf16": ("hf-bf16",),
    "b1-int8": ("torchao-int8", "int8pack-mm"),
}
SIDES: dict[str, tuple[str, str]] = {  # side: (what runs, weights; "" = the case's)
    "attnkit": ("attnkit", ""),
    "hf-fp32": ("transformers", "float32"),
    "hf-bf16": ("transformers", "bfloat16"),
    "torchao-int8": ("torchao Int8WeightOnlyConfig in attnkit's GPT", "int8"),
    "int8pack-mm": ("torch._weight_int8pack_mm in attnkit's GPT", "int8"),
}
QUICK: dict[str, Any] = dict(n_layer=2, n_head=4, n_embd=64, vocab_size=512, n_positions=128)
INT8_AGREEMENT = 0.99
LIMIT_FRACTION = 0.70  # of the bandwidth limit, for the cases in LIMIT_CASES
LIMIT_CASES = ("b1-fp32", "b1-bf16", "b1-int8")
QUICK_BANDWIDTH_BYTES = 32 * 1024**2  # --quick: a small probe (the tiny model is cached anyway)


@dataclass(frozen=True)
class GenerateSettings:
    """One run of ``attnkit bench generate``.

    ``bandwidth_bytes``: the read-bandwidth probe's buffer (None: twice the last-level cache,
    at least 1 GiB; 32 MiB with ``quick``); ``bandwidth_passes``: its timed passes per kernel.

    Examples:
        >>> report = run(GenerateSettings(quick=True, out=Path("/tmp/gen")))
    """

    quick: bool = False
    cases: list[str] = field(default_factory=lambda: list(CASES))
    prompt_len: int = 32
    new_tokens: int | None = None  # None: each case's own (8 with quick)
    rounds: int = 2
    seed: int = 0
    out: Path = Path("bench_out")
    bandwidth_bytes: int | None = None
    bandwidth_passes: int = 7

    def __post_init__(self) -> None:
        bad = [c for c in self.cases if c not in CASES]
        if bad or not self.cases:
            raise ValueError(
                f"--cases must be a comma-separated subset of {list(CASES)}, got {self.cases!r}"
            )
        b = self.bandwidth_bytes
        if b is not None and (isinstance(b, bool) or not isinstance(b, int)):
            raise TypeError(f"bandwidth_bytes must be an int or None, got {b!r}")
        if b is not None and b < bw.MIN_BUFFER_BYTES:
            raise ValueError(f"bandwidth_bytes must be >= {bw.MIN_BUFFER_BYTES}, got {b!r}")
        p = self.bandwidth_passes
        if isinstance(p, bool) or not isinstance(p, int) or p < 1:
            raise ValueError(f"bandwidth_passes must be an int >= 1, got {p!r}")


def _hf_generate(hf: Any, ids: torch.Tensor, n: int) -> list[list[int]]:
    with torch.inference_mode():
        out = hf.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=n,
            do_sample=False,
            pad_token_id=0,
        )
    return out[:, ids.shape[1] :].tolist()


def _agreement(a: list[list[int]], b: list[list[int]]) -> float:
    pairs = [(x, y) for ra, rb in zip(a, b) for x, y in zip(ra, rb)]
    return sum(x == y for x, y in pairs) / max(1, len(pairs))


def _teacher_forced_agreement(model: GPT, prompt: torch.Tensor, new: list[list[int]]) -> float:
    """Share of steps where ``model``'s arg-max equals the reference next token, reading the
    reference sequence (prompt + new) in one forward pass."""
    seq = torch.cat([prompt, torch.tensor(new, dtype=torch.long)], dim=1)  # (B, P + N)
    with torch.inference_mode():
        logits = model(seq[:, :-1]).logits[:, prompt.shape[1] - 1 :]  # (B, N, V)
    return (logits.argmax(-1) == seq[:, prompt.shape[1] :]).float().mean().item()


# --------------------------------------------------------------------------------------------
# the other int8 linears
# --------------------------------------------------------------------------------------------


class _SubclassWeightLinear(nn.Module):
    """``F.linear(x, weight, bias)`` for a weight that is a tensor subclass (torchao's
    ``Int8Tensor``), whose ``__torch_function__`` computes the product. Held as a module of its
    own so that attnkit's :func:`~attnkit.native.linear.decoding_linears`, which wraps plain
    ``nn.Linear`` layers, leaves it alone: its native kernel takes such a weight for float32
    (the subclass reports its original dtype) and would read the wrapper, not the int8 codes.
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.weight = linear.weight
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in_features) -> (..., out_features)."""
        return F.linear(x, self.weight, self.bias)


class _Int8PackLinear(nn.Module):
    """A minimal weight-only int8 linear over ``torch._weight_int8pack_mm``: the same per-row
    symmetric codes as :class:`~attnkit.native.int8.Int8Linear` (w ~ q * scale, |q| <= 127),
    activations and scales in bfloat16 (the op's fast CPU path; in float32 it took 10x longer
    for a 3072x768 weight), the result in the input's dtype."""

    weight: torch.Tensor
    scales: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        w = linear.weight.detach().float()  # (N, K)
        scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0  # (N,)
        q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)  # (N, K)
        self.in_features, self.out_features = w.shape[1], w.shape[0]
        self.register_buffer("weight", q)
        self.register_buffer("scales", scale.to(torch.bfloat16))
        bias = linear.bias
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in_features) -> x W^T + bias (..., out_features), in x's dtype."""
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16)  # (M, K)
        y = torch._weight_int8pack_mm(flat, self.weight, self.scales).to(x.dtype)  # (M, N)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*x.shape[:-1], self.out_features)


def _decoding_linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """The linears :func:`~attnkit.native.int8.quantize_int8` turns into int8: blocks and head."""
    return [
        (name, mod)
        for name, mod in model.named_modules()
        if isinstance(mod, nn.Linear)
        and (name.startswith("blocks.") or name.startswith("lm_head."))
    ]


def int8pack_model(model: GPT) -> GPT:
    """``model`` with its block and LM-head linears replaced, in place, by weight-only int8
    linears over ``torch._weight_int8pack_mm`` (a tied head gets its own int8 copy).

    Raises:
        RuntimeError: this torch has no ``torch._weight_int8pack_mm``.

    Examples:
        >>> m = int8pack_model(gpt)  # then attnkit.generate(m, ids (1, T), 16, temperature=0)
    """
    if not hasattr(torch, "_weight_int8pack_mm"):
        raise RuntimeError(f"torch {torch.__version__} has no torch._weight_int8pack_mm")
    for name, mod in _decoding_linears(model):
        model.set_submodule(name, _Int8PackLinear(mod))
    return model


@contextlib.contextmanager
def _quiet_torchao() -> Iterator[None]:
    """Within the block, torchao's log lines and warnings (and torch's notes on its enums,
    logged when torchao registers them) are not shown."""
    names = ("torchao", "torch.utils._pytree")
    levels = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for n, level in levels.items():
            logging.getLogger(n).setLevel(level)


def import_torchao() -> tuple[Any | None, str | None]:
    """``torchao.quantization``, or None and why not ("torchao not installed", or the import
    error). The import's log lines (CUDA-only extensions that do not load on a CPU machine,
    torch's notes on torchao's enums) are kept off the console.

    Examples:
        >>> tq, why = import_torchao()  # (module, None) or (None, "torchao not installed")
    """
    try:
        with _quiet_torchao():
            import torchao.quantization as tq
    except ImportError:
        return None, "torchao not installed"
    except Exception as e:  # a torchao built for another torch
        return None, f"torchao does not import with torch {torch.__version__}: {short_error(e)}"
    return tq, None


def torchao_int8_model(model: GPT) -> tuple[GPT | None, str | None]:
    """``model`` with torchao's int8 weight-only quantization of every linear (in place:
    ``quantize_(model, Int8WeightOnlyConfig())``, per-row scales, the tied head quantized
    apart from the embedding), ready for attnkit's decoding loop; or None and why not.

    Examples:
        >>> m, why = torchao_int8_model(gpt)  # m decodes ids (1, T) like gpt, in int8
    """
    tq, why = import_torchao()
    if tq is None:
        return None, why
    try:
        with _quiet_torchao():
            tq.quantize_(model, tq.Int8WeightOnlyConfig())
    except Exception as e:
        return None, f"torchao's quantize_ failed: {short_error(e)}"
    for name, mod in _decoding_linears(model):
        if type(mod.weight) is not nn.Parameter or type(mod.weight.data) is not torch.Tensor:
            model.set_submodule(name, _SubclassWeightLinear(mod))
    return model, None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


# --------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------


@dataclass
class _Side:
    """One timed side of a case: its model (None when skipped) and how to decode with it."""

    name: str
    weights: str
    model: nn.Module | None  # an attnkit GPT, or a transformers model with ``hf``
    kv_itemsize: int  # bytes per number of its KV cache
    hf: bool = False
    skipped: str | None = None
    teacher: GPT | None = None  # an attnkit model whose top-1 is compared with float32's
    best: float = float("inf")
    out: list[list[int]] = field(default_factory=list)


def _decode(side: _Side, prompt: torch.Tensor, n: int) -> list[list[int]]:
    """The ``n`` new tokens of each row that ``side`` decodes greedily from ``prompt`` (B, P)."""
    from attnkit.generation import generate

    if side.hf:
        return _hf_generate(side.model, prompt, n)
    seqs = cast(list[list[int]], generate(cast(GPT, side.model), prompt, n, temperature=0))
    return [r[prompt.shape[1] :] for r in seqs]


def _measure_bandwidth(args: GenerateSettings) -> bw.ReadBandwidth:
    size = args.bandwidth_bytes or (QUICK_BANDWIDTH_BYTES if args.quick else None)
    passes = min(args.bandwidth_passes, 3) if args.quick else args.bandwidth_passes
    return bw.measure_read_bandwidth(size, passes=passes)


def run(args: GenerateSettings) -> Report:
    """Every case of the module docstring, every side in turns; writes generate.json.

    Examples:
        >>> print(run(GenerateSettings(quick=True, cases=["b1-int8"])).text)
    """
    names = args.cases
    import transformers

    from attnkit.checkpoints.hf import convert_from_hf
    from attnkit.generation import quantize_int8

    torch.manual_seed(args.seed)
    shape = QUICK if args.quick else {}
    hf_cfg = transformers.GPT2Config(**shape)
    with _quiet_torchao():  # where torchao is installed, the first HF model imports it
        hf = transformers.GPT2LMHeadModel(hf_cfg).eval()
    hf.generation_config.eos_token_id = None  # always the full number of new tokens

    def fresh() -> GPT:
        m = convert_from_hf(hf.state_dict(), hf_cfg.to_dict()).eval()
        assert isinstance(m, GPT)
        return m

    ours = fresh()
    variants: dict[str, GPT] = {"float32": ours}
    hf_bf16: Any = None
    vocab = hf_cfg.vocab_size
    g = torch.Generator().manual_seed(args.seed + 1)
    prompts: dict[int, torch.Tensor] = {}
    rows: list[dict[str, Any]] = []
    bandwidth_before = _measure_bandwidth(args)
    load_before = os.getloadavg()
    for name in names:
        batch, n, weights, target = CASES[name]
        n = args.new_tokens or (8 if args.quick else n)
        if weights not in variants:
            m = fresh()
            if weights == "bfloat16":
                m = m.to(torch.bfloat16)
            else:
                quantize_int8(m)  # in place
            variants[weights] = m
        model = variants[weights]
        if batch not in prompts:
            prompts[batch] = torch.randint(0, vocab, (batch, args.prompt_len), generator=g)
        prompt = prompts[batch]

        sides = [
            _Side("attnkit", weights, model, 4, teacher=None if weights == "float32" else model)
        ]
        sides.append(_Side("hf-fp32", "float32", hf, 4, hf=True))
        for extra in EXTRA_SIDES.get(name, ()):
            if extra == "hf-bf16":
                if hf_bf16 is None:
                    hf_bf16 = copy.deepcopy(hf).to(torch.bfloat16)
                sides.append(_Side(extra, "bfloat16", hf_bf16, 2, hf=True))
                continue
            why: str | None = None
            if extra == "torchao-int8":
                m8, why = torchao_int8_model(fresh())
            else:
                try:
                    m8 = int8pack_model(fresh())
                except RuntimeError as e:
                    m8, why = None, short_error(e)
            sides.append(_Side(extra, "int8", m8, 4, skipped=why, teacher=m8))
        live = [s for s in sides if s.model is not None]
        for s in live:  # warm-up: two tokens
            _decode(s, prompt, 2)
        for r in range(args.rounds):  # in turns, so load from elsewhere hits every side alike
            for s in in_turns(live, r):
                t, s.out = timed(functools.partial(_decode, s, prompt, n))
                s.best = min(s.best, t)
        ours_side, hf_side = sides[0], sides[1]
        ours_rate, hf_rate = batch * n / ours_side.best, batch * n / hf_side.best
        row: dict[str, Any] = dict(
            case=name,
            batch=batch,
            new_tokens=n,
            dtype=weights,
            attnkit_tokens_per_s=ours_rate,
            hf_fp32_tokens_per_s=hf_rate,
            ratio=ours_rate / hf_rate,
            greedy_agreement=_agreement(ours_side.out, hf_side.out),
            target=target,
        )
        met = row["ratio"] >= target
        if weights == "float32":
            met = met and row["greedy_agreement"] == 1.0
        else:  # the float32 greedy output, read by this model and by attnkit float32
            row["top1_vs_fp32"] = _teacher_forced_agreement(model, prompt, hf_side.out)
            row["fp32_top1_vs_hf"] = _teacher_forced_agreement(ours, prompt, hf_side.out)
            if weights == "int8":
                met = met and row["top1_vs_fp32"] >= INT8_AGREEMENT
        row["met"] = bool(met)
        context = bw.mean_context(args.prompt_len, n)
        row["mean_context"] = context
        row["sides"] = []
        for s in sides:
            rec: dict[str, Any] = dict(
                side=s.name, runs=SIDES[s.name][0], weights=s.weights, skipped=s.skipped
            )
            if s.model is not None:
                rec["tokens_per_s"] = batch * n / s.best
                rec["seconds"] = s.best
                rec["weight_bytes_per_step"] = bw.decode_weight_bytes(s.model, batch)
                rec["kv_dtype"] = {4: "float32", 2: "bfloat16"}[s.kv_itemsize]
                rec["kv_bytes_per_step"] = bw.kv_cache_bytes(
                    hf_cfg.n_layer, hf_cfg.n_embd, batch, context, s.kv_itemsize
                )
                step = rec["weight_bytes_per_step"] + rec["kv_bytes_per_step"]
                rec["bytes_per_token"] = step / batch
                rec["greedy_vs_hf_fp32"] = _agreement(s.out, hf_side.out)
                rec["attnkit_vs_this"] = ours_rate / rec["tokens_per_s"]
                if s.teacher is not None:
                    rec["top1_vs_fp32"] = (
                        row["top1_vs_fp32"]
                        if s.name == "attnkit"
                        else _teacher_forced_agreement(s.teacher, prompt, hf_side.out)
                    )
                logger.info(f"{name} {s.name}: {rec['tokens_per_s']:.1f} tokens/s")
            row["sides"].append(rec)
        same = [r for r in row["sides"][2:] if r.get("tokens_per_s")]
        if same:
            row["ratio_same_precision"] = {r["side"]: r["attnkit_vs_this"] for r in same}
        rows.append(row)
        logger.info(
            f"{name}: attnkit {ours_rate:.1f} tokens/s, HF float32 {hf_rate:.1f} tokens/s, "
            f"{row['ratio']:.2f}x"
        )
    load_after = os.getloadavg()
    bandwidth_after = _measure_bandwidth(args)
    measured = max(bandwidth_before, bandwidth_after, key=lambda b: b.bytes_per_s)
    add_limits(rows, measured.bytes_per_s)
    checks = evaluate_checks(rows)

    threads = torch.get_num_threads()
    title = (
        f"greedy decoding, GPT-2 {'tiny (--quick)' if args.quick else '124M'} shape, "
        f"random weights shared by both sides, prompt {args.prompt_len} tokens, "
        f"{threads} thread{'' if threads == 1 else 's'}, best of {args.rounds} round(s)"
    )
    versions = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torchao": _version("torchao"),
    }
    out = Path(args.out)
    path = write_json(
        out / "generate.json",
        {
            "rows": rows,
            "targets": checks,
            "bandwidth": {
                **measured.to_json(),
                "counted": "the higher of the measurements before and after the cases",
                "before": bandwidth_before.to_json(),
                "after": bandwidth_after.to_json(),
            },
            "limit": (
                "batch x bandwidth / bytes a step reads: every parameter and buffer in its "
                "storage dtype (one row per batch row of each embedding, the whole LM head), "
                "plus the KV cache at the mean context prompt + (new - 1) / 2"
            ),
            "versions": versions,
            "threads": threads,
            "environment": environment(),
            "quick": bool(args.quick),
            "prompt_len": args.prompt_len,
            "rounds": args.rounds,
            "config": hf_cfg.to_dict(),
            "load_before": load_before,
            "load_after": load_after,
        },
    )
    text = "\n\n".join(
        [
            render_cases(rows, title),
            render_limits(rows, measured, bandwidth_before, bandwidth_after),
            render_checks(checks),
            "\n".join([load_text(load_before, load_after), f"wrote {path}"]),
        ]
    )
    return Report(text, (path,), missed=any(c.passed is False for c in checks))


# --------------------------------------------------------------------------------------------
# limits, targets and tables
# --------------------------------------------------------------------------------------------


def add_limits(rows: Sequence[dict[str, Any]], bytes_per_s: float) -> None:
    """Put the bandwidth limit and each measured side's fraction of it into ``rows`` (in
    place): per side ``limit_tokens_per_s`` and ``fraction_of_limit``; per case the attnkit
    side's, as ``limit_tokens_per_s``, ``fraction_of_limit`` and ``bytes_per_token``, and HF
    float32's ``hf_fp32_fraction_of_limit``.

    Examples:
        >>> add_limits(rows, 15e9)  # rows from run(); rows[0]["fraction_of_limit"] -> 0.8
    """
    for row in rows:
        for s in row["sides"]:
            if s.get("tokens_per_s") is None:
                continue
            step = s["weight_bytes_per_step"] + s["kv_bytes_per_step"]
            s["limit_tokens_per_s"] = bw.limit_tokens_per_s(bytes_per_s, step, row["batch"])
            s["fraction_of_limit"] = bw.fraction_of_limit(
                s["tokens_per_s"], s["limit_tokens_per_s"]
            )
        ours, hf = row["sides"][0], row["sides"][1]
        row["weight_bytes_per_step"] = ours["weight_bytes_per_step"]
        row["kv_bytes_per_step"] = ours["kv_bytes_per_step"]
        row["bytes_per_token"] = ours["bytes_per_token"]
        row["limit_tokens_per_s"] = ours["limit_tokens_per_s"]
        row["fraction_of_limit"] = ours["fraction_of_limit"]
        row["hf_fp32_fraction_of_limit"] = hf["fraction_of_limit"]


def evaluate_checks(rows: Sequence[dict[str, Any]]) -> list[Check]:
    """The targets of the module docstring against case rows (as in generate.json): per case
    the speed-up over HF float32, greedy agreement (float32) or top-1 agreement (int8), and
    for :data:`LIMIT_CASES` attnkit's fraction of the bandwidth limit. A case not in
    ``rows`` gives checks that are not measured (``passed`` None).

    Examples:
        >>> [c.mark for c in evaluate_checks(rows)]  # e.g. ['PASS', 'PASS', ..., 'FAIL']
    """
    by_case = {r["case"]: r for r in rows}
    checks: list[Check] = []
    for case, (_batch, _n, weights, target) in CASES.items():
        row = by_case.get(case)
        keys = [(f"{case}-speed", f"{case}: attnkit >= {target}x HF float32 tokens/s")]
        if weights == "float32":
            keys.append((f"{case}-greedy", f"{case}: every greedy token = HF's"))
        if weights == "int8":
            keys.append(
                (f"{case}-top1", f"{case}: top-1 = float32's on >= {INT8_AGREEMENT:.0%} of steps")
            )
        if case in LIMIT_CASES:
            keys.append(
                (f"{case}-limit", f"{case}: attnkit >= {LIMIT_FRACTION:.0%} of the bandwidth limit")
            )
        if row is None:
            checks += [Check(k, t, "-", None, note="case not run") for k, t in keys]
            continue
        ours, ref = row["attnkit_tokens_per_s"], row["hf_fp32_tokens_per_s"]
        for key, text in keys:
            if key.endswith("-speed"):
                checks.append(
                    Check(
                        key,
                        text,
                        f"{row['ratio']:.2f}x",
                        row["ratio"] >= target,
                        attnkit=f"{ours:.1f} tokens/s",
                        reference=f"{ref:.1f} tokens/s",
                    )
                )
            elif key.endswith("-greedy"):
                a = row["greedy_agreement"]
                checks.append(Check(key, text, f"{100 * a:.1f}%", a == 1.0))
            elif key.endswith("-top1"):
                a = row.get("top1_vs_fp32")
                if a is None:
                    checks.append(Check(key, text, "-", None, note="not measured"))
                else:
                    checks.append(Check(key, text, f"{100 * a:.1f}%", a >= INT8_AGREEMENT))
            else:
                f, limit = row.get("fraction_of_limit"), row.get("limit_tokens_per_s")
                if f is None or limit is None:
                    checks.append(Check(key, text, "-", None, note="no bandwidth limit"))
                else:
                    checks.append(
                        Check(
                            key,
                            text,
                            f"{100 * f:.1f}%",
                            f >= LIMIT_FRACTION,
                            attnkit=f"{ours:.1f} tokens/s",
                            reference=f"limit {limit:.1f} tokens/s",
                        )
                    )
    return checks


def render_cases(rows: Sequence[dict[str, Any]], title: str) -> str:
    """The per-case table: attnkit against HF float32, and attnkit's share of the limit.

    Examples:
        >>> print(render_cases(rows, "greedy decoding"))
    """
    table = Table(
        [
            "case",
            "batch",
            "new",
            "attnkit weights",
            "attnkit tokens/s",
            "HF fp32 tokens/s",
            "ratio",
            "target",
            "greedy = HF",
            "top-1 = fp32",
            "of limit",
            "met",
        ],
        title=title,
    )
    for row in rows:
        f = row.get("fraction_of_limit")
        table.add_row(
            row["case"],
            row["batch"],
            row["new_tokens"],
            row["dtype"],
            f"{row['attnkit_tokens_per_s']:.1f}",
            f"{row['hf_fp32_tokens_per_s']:.1f}",
            f"{row['ratio']:.2f}x",
            f">= {row['target']}x",
            f"{100 * row['greedy_agreement']:.1f}%",
            f"{100 * row['top1_vs_fp32']:.1f}%" if "top1_vs_fp32" in row else "-",
            "-" if f is None else f"{100 * f:.1f}%",
            "yes" if row["met"] else "NO",
        )
    return table.render()


def render_limits(
    rows: Sequence[dict[str, Any]],
    measured: bw.ReadBandwidth,
    before: bw.ReadBandwidth,
    after: bw.ReadBandwidth,
) -> str:
    """The table of every side against the bandwidth limit, under a title saying how the
    bandwidth was measured and the limit counted.

    Examples:
        >>> print(render_limits(rows, bw_after, bw_before, bw_after))
    """
    title = (
        f"against the memory read bandwidth: {measured.gb_per_s:.1f} GB/s "
        f"(torch.{measured.kernel} over {fmt_bytes(measured.buffer_bytes)}, median of "
        f"{measured.passes} passes, {measured.threads} thread{'' if measured.threads == 1 else 's'}; "
        f"{before.gb_per_s:.1f} GB/s "
        f"before the cases, {after.gb_per_s:.1f} after, the higher counts)\n"
        "limit = batch x bandwidth / bytes a step reads (weights in their storage dtype, "
        "the KV cache at the mean context prompt + (new - 1) / 2)"
    )
    table = Table(
        [
            "case",
            "side",
            "weights",
            "tokens/s",
            "weights/step",
            "KV/step",
            "limit tokens/s",
            "of limit",
            "attnkit x",
            "top-1 = fp32",
            "greedy = HF fp32",
        ],
        title=title,
        align="llllrrrrrrr",
    )
    for row in rows:
        for s in row["sides"]:
            if s.get("tokens_per_s") is None:
                table.add_row(
                    row["case"], s["side"], s["weights"], f"skipped: {s['skipped']}",
                    *["-"] * 7,
                )  # fmt: skip
                continue
            top1 = s.get("top1_vs_fp32")
            table.add_row(
                row["case"],
                s["side"],
                s["weights"],
                f"{s['tokens_per_s']:.1f}",
                fmt_bytes(s["weight_bytes_per_step"]),
                fmt_bytes(s["kv_bytes_per_step"]),
                f"{s['limit_tokens_per_s']:.1f}",
                f"{100 * s['fraction_of_limit']:.1f}%",
                "-" if s["side"] == "attnkit" else f"{s['attnkit_vs_this']:.2f}x",
                "-" if top1 is None else f"{100 * top1:.1f}%",
                f"{100 * s['greedy_vs_hf_fp32']:.1f}%",
            )
    return table.render()


def render_checks(checks: Sequence[Check]) -> str:
    """The Targets table: each target, both sides, what was measured and the verdict.

    Examples:
        >>> print(render_checks(evaluate_checks(rows)))
    """
    t = Table(
        ["target", "attnkit", "reference", "measured", "result"], title="Targets", align="lrrrl"
    )
    for c in checks:
        t.add_row(
            c.target,
            c.attnkit,
            c.reference,
            c.measured,
            c.mark + (f" ({c.note})" if c.note else ""),
        )
    return t.render()
