"""``attnkit bench ...``: the benchmarks' options, and their runs.

Each benchmark is a pair, ``<name>_arguments(parser)`` and ``<name>_command(args)``: the
command turns the parsed options into the benchmark's settings (a frozen dataclass of
:mod:`attnkit.bench`), runs it and prints its report. What is measured, and how, is in
:mod:`attnkit.bench`; process-wide settings (torch threads, environment variables, glibc's
malloc: :func:`keep_freed_memory`) are made here, before a run. One area, every benchmark's
options, so the module stays whole past 400 lines.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import platform
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attnkit.bench.harness import resolve_device
from attnkit.bench.report import Report
from attnkit.cli.types import positive_int, set_threads, size_list, threads_argument

if TYPE_CHECKING:  # pragma: no cover - for static tools only
    from attnkit.bench.variants import VariantsSettings
    from attnkit.bench.viewer import ViewerSettings

__all__ = [
    "attention_arguments",
    "attention_command",
    "embed_arguments",
    "embed_command",
    "generate_arguments",
    "generate_command",
    "keep_freed_memory",
    "seq2seq_arguments",
    "seq2seq_command",
    "train_arguments",
    "train_command",
    "variants_arguments",
    "variants_command",
    "viewer_arguments",
    "viewer_command",
]


# --------------------------------------------------------------------------------------------
# shared
# --------------------------------------------------------------------------------------------


def keep_freed_memory() -> str | None:
    """Make glibc's malloc keep freed memory for reuse in this process; returns what was set,
    or None where that is not possible (no glibc).

    By default glibc serves a block above its mmap threshold (32 MiB at most) with a fresh
    mmap, and every page of that is faulted in, zeroed, when first written; a smaller block comes
    from the heap, reused with no page faults if a free block fits. A CPU tensor of 32 MiB or
    more is therefore sometimes free to allocate and sometimes costs a page fault per 4 KiB,
    depending on what the process freed before; in one benchmark process a 128 MiB tensor paid
    the faults on every call while 32 MiB ones did not. With mmap off (M_MMAP_MAX = 0) and no
    trimming of the heap (M_TRIM_THRESHOLD = -1), every freed block stays in the heap for the
    next call, as in a caching allocator (jemalloc, tcmalloc, PyTorch's CUDA allocator), and the
    time of an operation is its compute and memory traffic. Memory is not given back to the
    system until the process ends: for timing processes only
    (:func:`attnkit.bench.memory.peak_memory` measures in fresh processes whose glibc thresholds
    are fixed so that large blocks go back on free).
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    if mallopt(M_MMAP_MAX, 0) != 1 or mallopt(M_TRIM_THRESHOLD, -1) != 1:
        return None
    return "glibc malloc keeps freed blocks (M_MMAP_MAX=0, M_TRIM_THRESHOLD=-1)"


def _names(allowed: tuple[str, ...] | Callable[[], list[str]]) -> Callable[[str], list[str]]:
    """An argparse type: a comma-separated subset of ``allowed`` (or of what it returns)."""

    def parse(text: str) -> list[str]:
        options = tuple(allowed() if callable(allowed) else allowed)
        names = [x.strip() for x in text.split(",") if x.strip()]
        bad = [x for x in names if x not in options]
        if bad or not names:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated subset of {','.join(options)}; got {text!r}"
            )
        return names

    return parse


def _preset_help(full: Mapping[str, Any], quick: Mapping[str, Any]) -> Callable[[str], str]:
    """``"(default X; --quick: Y)"`` for an option whose default depends on --quick."""

    def show(v: Any) -> str:
        if isinstance(v, list):
            return ",".join(map(str, v))
        return "none" if v is None else str(v)

    return lambda key: f"(default {show(full[key])}; --quick: {show(quick[key])})"


def _given(args: argparse.Namespace, preset: Mapping[str, Any]) -> dict[str, Any]:
    """Every preset option: the value given, else the preset's."""
    return {
        key: getattr(args, key) if getattr(args, key) is not None else value
        for key, value in preset.items()
    }


def _finish(report: Report, strict: bool = False) -> int:
    print(report.text, flush=True)
    return 1 if strict and report.missed else 0


def _out_argument(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("bench_out"),
        metavar="DIR",
        help=f"where {what} go (default: bench_out)",
    )


def _device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device", default="auto", help="cpu, cuda or auto (default: cuda if available)"
    )


def _shape_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch", type=positive_int, default=1, metavar="B")
    parser.add_argument("--heads", type=positive_int, default=8, metavar="H")
    parser.add_argument("--head-dim", type=positive_int, default=64, metavar="D")


# --------------------------------------------------------------------------------------------
# bench attention
# --------------------------------------------------------------------------------------------


def attention_arguments(parser: argparse.ArgumentParser) -> None:
    from attnkit.bench import attention as bench

    default = _preset_help(bench.FULL, bench.QUICK)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a small run that still reaches every target's N: a few minutes on a CPU",
    )
    parser.add_argument(
        "--sizes",
        type=size_list,
        metavar="N,N,...",
        help=f"dense section sequence lengths, e.g. 1k,2k,4k {default('sizes')}",
    )
    parser.add_argument(
        "--window-sizes",
        type=size_list,
        metavar="N,N,...",
        help="sliding-window section lengths (default: --sizes; --quick: 16k,64k)",
    )
    _out_argument(parser, "attention.json and attention.png")
    _device_argument(parser)
    parser.add_argument("--dtype", default="float32", choices=tuple(bench.DTYPES))
    parser.add_argument(
        "--causal",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="causal masking in the dense section (default: causal)",
    )
    parser.add_argument(
        "--window",
        type=positive_int,
        default=512,
        metavar="W",
        help="window of the sliding-window section (default 512)",
    )
    parser.add_argument(
        "--backends",
        type=_names(bench.DENSE_BACKENDS),
        help=f"dense section, each next to raw SDPA {default('backends')}",
    )
    parser.add_argument(
        "--window-backends",
        type=_names(bench.WINDOW_BACKENDS),
        help=f"window section, each next to dense causal SDPA {default('window_backends')}",
    )
    parser.add_argument(
        "--dense-max",
        type=positive_int,
        metavar="N",
        help=f"longest N at which the window section runs dense SDPA {default('dense_max')}",
    )
    parser.add_argument(
        "--reference-max",
        type=positive_int,
        metavar="N",
        help="longest N for the slow N x N references, naive and math; they are also "
        f"skipped where their scores would not fit in memory {default('reference_max')}",
    )
    _shape_arguments(parser)
    parser.add_argument(
        "--repeat", type=positive_int, help=f"timed rounds per measurement {default('repeat')}"
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=0,
        help="untimed calls before timing, besides the first call that checks the output "
        "(default 0)",
    )
    parser.add_argument(
        "--min-seconds",
        type=float,
        help=f"keep timing a measurement at least this long {default('min_seconds')}",
    )
    parser.add_argument(
        "--max-seconds",
        type=float,
        help="stop timing a measurement after this long; there is always one timed "
        f"round besides the first, checking call {default('max_seconds')}",
    )
    parser.add_argument(
        "--no-memory", dest="memory", action="store_false", help="skip peak-memory probes"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")


def attention_command(args: argparse.Namespace) -> int:
    from attnkit.bench import attention as bench

    opt = _given(args, bench.preset(args.quick))
    if args.window_sizes is None and (args.sizes is not None or not args.quick):
        opt["window_sizes"] = opt["sizes"]
    settings = bench.AttentionSettings(
        **opt,
        batch=args.batch,
        heads=args.heads,
        head_dim=args.head_dim,
        dtype=args.dtype,
        device=resolve_device(args.device),
        causal=args.causal,
        window=args.window,
        warmup=args.warmup,
        memory=args.memory,
        seed=args.seed,
        quick=args.quick,
        out=args.out,
    )
    return _finish(bench.run(settings), args.strict)


# --------------------------------------------------------------------------------------------
# bench variants
# --------------------------------------------------------------------------------------------


def variants_arguments(parser: argparse.ArgumentParser) -> None:
    from attnkit.attention import variants as V
    from attnkit.bench import variants as bench

    default = _preset_help(bench.FULL, bench.QUICK)
    parser.add_argument("--quick", action="store_true", help="small sizes, a few minutes on a CPU")
    parser.add_argument(
        "--sizes", type=size_list, metavar="N,N,...", help=f"sequence lengths {default('sizes')}"
    )
    parser.add_argument(
        "--variants",
        type=_names(V.names),
        metavar="NAME,...",
        help=f"variants to run (default: all of {','.join(V.names())})",
    )
    parser.add_argument(
        "--param",
        action="append",
        metavar="VARIANT.NAME=VALUE",
        help="a variant parameter, e.g. --param lsh.n_hashes=4 (repeatable)",
    )
    parser.add_argument(
        "--causal",
        choices=("both", "yes", "no"),
        default="both",
        help="causal, bidirectional or both (default both)",
    )
    parser.add_argument(
        "--exact-max",
        type=positive_int,
        metavar="N",
        help=f"longest N at which exact SDPA is timed {default('exact_max')}",
    )
    parser.add_argument(
        "--error-n",
        type=positive_int,
        default=2048,
        metavar="N",
        help="sequence length of the error measurement (default 2048)",
    )
    parser.add_argument(
        "--minilm-windows",
        type=int,
        metavar="N",
        help=f"windows of up to {bench.MINILM_T} tokens for the error on MiniLM activations, "
        f"0 to skip {default('minilm_windows')}",
    )
    parser.add_argument(
        "--minilm-text",
        default=bench.MINILM_TEXT,
        metavar="NAME|FILE",
        help=f"text for the MiniLM windows: a corpus name or a file (default {bench.MINILM_TEXT})",
    )
    parser.add_argument(
        "--no-sweep",
        dest="sweep",
        action="store_false",
        default=None,
        help="skip the error-versus-cost sweep (skipped by --quick)",
    )
    _out_argument(parser, "variants.json and the plots")
    _device_argument(parser)
    parser.add_argument("--dtype", default="float32", choices=bench.DTYPE_CHOICES)
    _shape_arguments(parser)
    parser.add_argument(
        "--repeat", type=positive_int, help=f"timed rounds per measurement {default('repeat')}"
    )
    parser.add_argument(
        "--max-seconds",
        type=float,
        help=f"no new timing round once this many seconds per N have been spent "
        f"{default('max_seconds')}",
    )
    parser.add_argument(
        "--no-memory", dest="memory", action="store_false", help="skip the peak-memory probes"
    )
    parser.add_argument(
        "--system-malloc",
        action="store_true",
        help="time with glibc's default malloc settings; by default the timing process keeps "
        "freed memory for reuse (keep_freed_memory in attnkit.cli.bench), so a large "
        "tensor costs the same whatever the process freed before",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--strict", action="store_true", help="exit 1 when a measured target is missed"
    )


def variants_settings(args: argparse.Namespace) -> VariantsSettings:
    """The :class:`~attnkit.bench.variants.VariantsSettings` of parsed options."""
    from attnkit.attention import variants as V
    from attnkit.bench import variants as bench

    opt = _given(args, bench.preset(args.quick))
    return bench.VariantsSettings(
        sizes=opt["sizes"],
        names=args.variants or V.names(),
        params=bench.parse_params(args.param),
        shape=(args.batch, args.heads, args.head_dim),
        dtype=args.dtype,
        device=resolve_device(args.device),
        causal_modes={"both": [True, False], "yes": [True], "no": [False]}[args.causal],
        exact_max=opt["exact_max"],
        error_n=args.error_n,
        repeat=opt["repeat"],
        max_seconds=opt["max_seconds"],
        memory=args.memory,
        sweep=opt["sweep"],
        seed=args.seed,
        minilm_windows=opt["minilm_windows"],
        minilm_text=args.minilm_text,
        out=args.out,
    )


def variants_command(args: argparse.Namespace) -> int:
    from attnkit.bench import variants as bench

    settings = variants_settings(args)
    malloc = None
    if settings.device.type == "cpu" and not args.system_malloc:
        malloc = keep_freed_memory()  # this process only: it times, it does not probe
    return _finish(bench.run(settings, malloc), args.strict)


# --------------------------------------------------------------------------------------------
# bench train
# --------------------------------------------------------------------------------------------


def train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", default="gpt-shakespeare-char", help="run config (name or TOML file)"
    )
    parser.add_argument(
        "--vocab", type=int, default=65, help="vocabulary size (default 65, the char set)"
    )
    parser.add_argument("--iters", type=int, default=40, help="timed optimizer steps (default 40)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (default 5)")
    parser.add_argument(
        "--dtype", choices=("float32", "bfloat16", "float16"), help="default: the config's"
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    threads_argument(parser)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument(
        "--peak-tflops", type=float, help="device peak in TFLOP/s (default: measured)"
    )
    _out_argument(parser, "train.json")


def train_command(args: argparse.Namespace) -> int:
    from attnkit.bench import train as bench

    settings = bench.TrainSettings(
        config=args.config,
        vocab=args.vocab,
        iters=args.iters,
        warmup=args.warmup,
        dtype=args.dtype,
        compile=args.compile,
        device=resolve_device(args.device),
        peak_tflops=args.peak_tflops,
        out=args.out,
    )
    set_threads(args.threads)
    return _finish(bench.run(settings))


# --------------------------------------------------------------------------------------------
# bench generate
# --------------------------------------------------------------------------------------------


def generate_arguments(parser: argparse.ArgumentParser) -> None:
    from attnkit.bench import generate as bench

    parser.add_argument(
        "--quick",
        action="store_true",
        help="a tiny GPT-2 and few tokens (a test of the benchmark itself)",
    )
    parser.add_argument(
        "--cases",
        type=_names(tuple(bench.CASES)),
        default=list(bench.CASES),
        help=f"comma-separated cases (default all: {','.join(bench.CASES)})",
    )
    parser.add_argument("--prompt-len", type=positive_int, default=32, help="prompt tokens (32)")
    parser.add_argument(
        "--new-tokens",
        type=positive_int,
        help="new tokens for every case (default: 256 at batch 1, 128 at batch 8)",
    )
    parser.add_argument(
        "--rounds",
        type=positive_int,
        default=2,
        help="timed runs per side, alternating; the best counts (default 2)",
    )
    threads_argument(parser)
    parser.add_argument("--seed", type=int, default=0, help="seed for weights and prompts")
    _out_argument(parser, "generate.json")


def _quiet_transformers() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # the benchmark names the missing package itself
        return
    hf_logging.set_verbosity_error()


def generate_command(args: argparse.Namespace) -> int:
    from attnkit.bench import generate as bench

    settings = bench.GenerateSettings(
        quick=args.quick,
        cases=args.cases,
        prompt_len=args.prompt_len,
        new_tokens=args.new_tokens,
        rounds=args.rounds,
        seed=args.seed,
        out=args.out,
    )
    _quiet_transformers()
    set_threads(args.threads)
    return _finish(bench.run(settings))


# --------------------------------------------------------------------------------------------
# bench embed
# --------------------------------------------------------------------------------------------


def embed_arguments(parser: argparse.ArgumentParser) -> None:
    from attnkit.bench.embed import CORPUS_NAME

    parser.add_argument(
        "--lines", type=positive_int, default=4096, help="sentences to embed (default 4096)"
    )
    parser.add_argument(
        "--min-chars", type=int, default=20, help="use lines longer than this (default 20)"
    )
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--corpus", help=f"text file (default: ../shared/data/{CORPUS_NAME})")
    parser.add_argument(
        "--model", default="minilm", help="model name or directory (default minilm)"
    )
    parser.add_argument(
        "--rounds", type=positive_int, default=1, help="timed rounds per side (best counts)"
    )
    parser.add_argument(
        "--interleave",
        type=positive_int,
        default=1,
        help="slices embedded by both sides back to back, against load noise (default 1: "
        "one call per side with all lines, as a user would make)",
    )
    parser.add_argument(
        "--bf16",
        choices=("auto", "on", "off"),
        default="auto",
        help="measure bf16 autocast: on, off, or auto (on; fewer lines without native bf16)",
    )
    parser.add_argument(
        "--bf16-lines",
        type=positive_int,
        help="lines for the bf16 run (default: --lines with native bf16, else 512)",
    )
    parser.add_argument(
        "--paired-model",
        action="store_true",
        help="also time attnkit's model and transformers' BertModel on the same "
        "length-sorted batches, batch by batch (model cost alone, robust to load)",
    )
    parser.add_argument(
        "--passages",
        type=int,
        default=128,
        help="also embed this many passages of 100-256 tokens from the corpus (default 128; 0: none)",
    )
    parser.add_argument(
        "--no-onnx",
        action="store_true",
        help="leave out the ONNX Runtime float32 and int8 rows",
    )
    parser.add_argument("--no-int8", action="store_true", help="leave out attnkit's int8 row")
    threads_argument(parser)
    _out_argument(parser, "embed.json")


def embed_command(args: argparse.Namespace) -> int:
    from attnkit.bench import embed as bench

    settings = bench.EmbedSettings(
        lines=args.lines,
        min_chars=args.min_chars,
        batch_size=args.batch_size,
        corpus=Path(args.corpus) if args.corpus else None,
        model=args.model,
        rounds=args.rounds,
        interleave=args.interleave,
        bf16=args.bf16,
        bf16_lines=args.bf16_lines,
        paired_model=args.paired_model,
        passages=args.passages,
        onnx=not args.no_onnx,
        int8=not args.no_int8,
        out=args.out,
    )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    _quiet_transformers()
    set_threads(args.threads)
    return _finish(bench.run(settings))


# --------------------------------------------------------------------------------------------
# bench viewer
# --------------------------------------------------------------------------------------------


def viewer_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tokens", type=positive_int, default=512, help="input length (default 512)"
    )
    parser.add_argument("--layers", type=positive_int, default=12, help="layers (default 12)")
    parser.add_argument(
        "--heads", type=positive_int, default=12, help="heads per layer (default 12)"
    )
    parser.add_argument(
        "--switches", type=positive_int, default=20, help="timed head switches (default 20)"
    )
    parser.add_argument(
        "--loads", type=positive_int, default=3, help="page loads timed (default 3)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a small check: 64 tokens, 2 layers x 4 heads, 5 switches, 1 load",
    )
    parser.add_argument("--chromium", help="Chromium executable (default: chromium on PATH)")
    _out_argument(parser, "viewer.html and viewer.json")


def viewer_settings(args: argparse.Namespace) -> ViewerSettings:
    """The :class:`~attnkit.bench.viewer.ViewerSettings` of parsed options."""
    from attnkit.bench.viewer import ViewerSettings

    return ViewerSettings(
        tokens=args.tokens,
        layers=args.layers,
        heads=args.heads,
        switches=args.switches,
        loads=args.loads,
        seed=args.seed,
        quick=args.quick,
        chromium=args.chromium,
        out=args.out,
    )


def viewer_command(args: argparse.Namespace) -> int:
    from attnkit.bench import viewer as bench

    return _finish(bench.run(viewer_settings(args)))


# --------------------------------------------------------------------------------------------
# bench seq2seq
# --------------------------------------------------------------------------------------------


def seq2seq_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a tiny model, few pairs and sentences (a test of the benchmark itself)",
    )
    parser.add_argument(
        "--data",
        default="bible:en-es",
        metavar="SPEC",
        help="bible:SRC-TGT or a .tsv/.jsonl file of pairs (default bible:en-es)",
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=300.0,
        metavar="N",
        help="training seconds per side (default 300)",
    )
    parser.add_argument("--rounds", type=positive_int, help="alternating training rounds")
    parser.add_argument(
        "--decode-rounds", type=positive_int, default=3, help="alternating decoding rounds (3)"
    )
    parser.add_argument("--sentences", type=positive_int, help="held-out sentences decoded")
    parser.add_argument("--beams", type=positive_int, default=4, help="beams (default 4)")
    parser.add_argument(
        "--no-repeat-ngram", type=int, default=0, metavar="N", help="n-gram ban in decoding (0)"
    )
    parser.add_argument(
        "--no-ctranslate2", action="store_true", help="leave the CTranslate2 reference out"
    )
    threads_argument(parser)
    parser.add_argument("--seed", type=int, default=0, help="seed for weights and batches")
    _out_argument(parser, "seq2seq.json")


def seq2seq_command(args: argparse.Namespace) -> int:
    from attnkit.bench import seq2seq as bench

    settings = bench.Seq2SeqSettings(
        quick=args.quick,
        data=args.data,
        budget_s=args.budget_s,
        rounds=args.rounds,
        decode_rounds=args.decode_rounds,
        sentences=args.sentences,
        beams=args.beams,
        no_repeat_ngram=args.no_repeat_ngram,
        ctranslate2=not args.no_ctranslate2,
        seed=args.seed,
        out=args.out,
    )
    _quiet_transformers()
    set_threads(args.threads)
    return _finish(bench.run(settings), strict=True)
