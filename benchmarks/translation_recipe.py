"""The translation recipe, measured: the default translate-bible-en-es config against copying
the source, and against itself at one tenth of the budget, on the held-out test books.

    python benchmarks/translation_recipe.py [--out runs/translation-recipe] [--threads 2]
    python benchmarks/translation_recipe.py --quick          # minutes: the whole path, tiny

In one run it prints:

1. copy-the-source: BLEU and chrF of each test source taken as its own translation;
2. the model trained with one tenth of the config's budget (``train.max_iters`` and
   ``train.budget_seconds`` divided by 10, the schedule shortened with them);
3. the model trained with the whole budget (at most 30 minutes, evaluations included);

each scored on every test pair (4 beams and no repeated trigram by default; ``--beams 1
--no-repeat-ngram-size 0`` for plain greedy decoding), with its training wall time, steps,
and the machine's load average (``os.getloadavg``) before and after, so a figure taken on a
busy machine says so. The aim (issue 16): the full model's chrF at least 10 points above the
copy baseline's, in at most 30 minutes on 2 cores.

Resumable: each run lives in ``--out/tenth`` and ``--out/full``. A finished run (its
``summary.json`` written) is not trained again and its test scores are read from
``test_scores.json``; a run that was stopped continues from its latest checkpoint
(``attnkit pretrain --resume``); ``--fresh`` starts both over. Everything is also written to
``--out/recipe.json``.

``--quick`` runs the same path on a model of width 32 for a few steps, scoring 16 test
sentences (the test suite runs it on a small pairs file with ``--data``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

QUICK = [
    ("model.n_encoder_layers", 1),
    ("model.n_decoder_layers", 1),
    ("model.d_model", 32),
    ("model.n_heads", 2),
    ("model.d_ff", 64),
    ("data.vocab_size", 400),
    ("train.batch_tokens", 512),
    ("train.max_iters", 20),
    ("train.warmup_iters", 2),
    ("train.eval_interval", 10),
    ("train.eval_sentences", 4),
    ("train.budget_seconds", 600),
]


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def train(cfg, out: Path, fresh: bool) -> dict[str, Any]:
    from attnkit._util.fs import atomic_write_json
    from attnkit.training.loop import pretrain
    from attnkit.training.rundir import has_checkpoint

    summary_path, run_path = out / "summary.json", out / "recipe_run.json"
    if summary_path.is_file() and run_path.is_file() and not fresh:
        summary = json.loads(summary_path.read_text())
        if summary.get("stopped_by") in ("max_iters", "budget_seconds"):
            summary.update(json.loads(run_path.read_text()), reused=True)
            return summary
    before = load()
    t0 = time.perf_counter()
    resume = has_checkpoint(out) and not fresh
    summary = pretrain(cfg, out, resume=resume, overwrite=not resume and out.exists())
    run = dict(load_before=before, load_after=load(), run_seconds=time.perf_counter() - t0)
    atomic_write_json(run_path, run)
    summary.update(run)
    return summary


def score(
    out: Path, pairs, beams: int, no_repeat: int, limit: int | None, fresh: bool
) -> dict[str, Any]:
    import attnkit
    from attnkit.evaluation.translation import evaluate_translation

    path = out / "test_scores.json"
    if path.is_file() and not fresh:
        saved = json.loads(path.read_text())
        if (saved.get("beams"), saved.get("no_repeat_ngram_size"), saved.get("limit")) == (
            beams,
            no_repeat,
            limit,
        ):
            return saved
    model = attnkit.load(out)
    options = {"no_repeat_ngram_size": no_repeat} if no_repeat else {}
    scores = evaluate_translation(
        model, pairs, num_beams=beams, limit=limit, keep_outputs=True, **options
    )
    outputs = scores.pop("outputs")
    scores.update(
        beams=beams,
        no_repeat_ngram_size=no_repeat,
        limit=limit,
        load_after=load(),
        first_outputs=outputs[:3],
    )
    from attnkit._util.fs import atomic_write_json

    atomic_write_json(path, scores)
    return scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="translate-bible-en-es")
    parser.add_argument("--data", help="replaces data.corpus (e.g. a .tsv of pairs)")
    parser.add_argument("--out", default="runs/translation-recipe")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument(
        "--beams", type=int, default=4, help="beams for the test decoding (default 4; 1: greedy)"
    )
    parser.add_argument(
        "--no-repeat-ngram-size",
        type=int,
        default=3,
        help="no n-gram of this size twice in an output (default 3; 0: off)",
    )
    parser.add_argument("--sentences", type=int, help="score only the first N test pairs")
    parser.add_argument("--quick", action="store_true", help="tiny model, few steps")
    parser.add_argument("--fresh", action="store_true", help="train and score everything again")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="a config override"
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    from attnkit.evaluation.translation import copy_baseline
    from attnkit.text.parallel import load_pairs
    from attnkit.training import config as run_config

    torch.set_num_threads(args.threads)
    overrides: list[tuple[str, Any]] = list(QUICK) if args.quick else []
    overrides += [run_config.parse_override(item) for item in args.set]
    overrides += [("train.progress", False)]
    if args.data:
        overrides.append(("data.corpus", args.data))
    base = run_config.read_file(run_config.find_config(args.config))
    full = run_config.build(base, overrides)
    tc = full.train
    tenth = run_config.build(
        base,
        overrides
        + [
            ("train.max_iters", max(1, tc.max_iters // 10)),
            ("train.warmup_iters", tc.warmup_iters // 10),
            ("train.eval_interval", max(1, tc.eval_interval // 10)),
            ("train.budget_seconds", tc.budget_seconds / 10),
        ],
    )
    limit = args.sentences or (16 if args.quick else None)
    pairs = load_pairs(full.data.corpus).splits["test"]
    out = Path(args.out)
    result: dict[str, Any] = {
        "config": args.config,
        "data": full.data.corpus,
        "threads": args.threads,
        "cpus": os.cpu_count(),
        "beams": args.beams,
        "no_repeat_ngram_size": args.no_repeat_ngram_size,
        "load_at_start": load(),
    }
    result["copy"] = copy_baseline(pairs, limit)
    print(f"load average at start: {result['load_at_start']} ({os.cpu_count()} CPUs)")
    print(
        f"copy the source      : chrF {result['copy']['chrf']:6.2f}  BLEU "
        f"{result['copy']['bleu']:6.2f}  ({result['copy']['sentences']} test pairs)",
        flush=True,
    )
    for name, cfg in (("tenth", tenth), ("full", full)):
        summary = train(cfg, out / name, args.fresh)
        scores = score(out / name, pairs, args.beams, args.no_repeat_ngram_size, limit, args.fresh)
        result[name] = {"train": summary, "test": scores}
        label = f"model, {'1/10 budget' if name == 'tenth' else 'full budget'}"
        print(
            f"{label:21s}: chrF {scores['chrf']:6.2f}  BLEU {scores['bleu']:6.2f}  "
            f"{summary['iters']} steps in {summary['wall_seconds']:.0f} s "
            f"(stopped by {summary['stopped_by']}; load {summary.get('load_before', '?')} -> "
            f"{summary.get('load_after', '?')}{', reused' if summary.get('reused') else ''}); "
            f"decoding {scores['sentences_per_second']:.1f} sentences/s",
            flush=True,
        )
    gain = result["full"]["test"]["chrf"] - result["copy"]["chrf"]
    result["chrf_over_copy"] = gain
    print(f"full model chrF - copy chrF = {gain:+.2f} (aim: >= +10 within 30 minutes)")
    from attnkit._util.fs import atomic_write_json

    atomic_write_json(out / "recipe.json", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
