"""The genre demo's recipe search, on its validation plays only (never the held-out plays).

    OMP_WAIT_POLICY=PASSIVE python benchmarks/genre_recipe.py [--full] [--words 60]

Builds the demo's data set (``attnkit genre`` defaults: 60-word passages, 20 per play, a
quarter of each genre's plays held out, a quarter of the training plays for validation), then
prints macro-F1 on the validation plays of TF-IDF + logistic regression and of MiniLM with a
head trained on its frozen encoder at several learning rates (the vectors are computed once
and shared by every row). ``--full`` adds full fine-tuning (the old demo recipe, 2 epochs at
lr 1e-4, 96 tokens) and a frozen-head probe followed by fine-tuning (probe_epochs): minutes
each on 2 cores.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time

import torch

from attnkit.tasks.classification import LabelledTexts, finetune
from attnkit.tasks.classification import head as head_module
from attnkit.tasks.classification.baseline import tfidf_baseline
from attnkit.text.genre import GENRES, build_genre_dataset

FROZEN = [
    {"lr": lr, "epochs": 200, "patience": 20, "max_length": 128} for lr in (1e-3, 3e-3, 1e-2, 3e-2)
] + [
    {"lr": 1e-2, "epochs": 200, "patience": 20, "max_length": 96},
    {"lr": 1e-2, "epochs": 200, "patience": 20, "max_length": 128, "batch_size": 64},
    {"lr": 1e-2, "epochs": 200, "patience": 20, "max_length": 128, "pooling": "cls"},
]
FULL = [
    {"lr": 1e-4, "epochs": 2, "patience": 2, "max_length": 96},
    {"lr": 3e-5, "epochs": 2, "patience": 2, "max_length": 128, "probe_epochs": 200},
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="also full fine-tuning (slow)")
    parser.add_argument("--words", type=int, default=60)
    args = parser.parse_args()
    data = build_genre_dataset(words=args.words, val_fraction=0.25)
    train = LabelledTexts([p.text for p in data.train], [p.label for p in data.train], "train")
    val = LabelledTexts([p.text for p in data.val], [p.label for p in data.val], "val")
    labels = list(GENRES)
    tfidf = tfidf_baseline(
        train.texts,
        [labels.index(y) for y in train.labels],
        val.texts,
        [labels.index(y) for y in val.labels],
        labels,
    )
    print(
        f"{len(train)} training passages ({len(data.train_plays)} plays), {len(val)} "
        f"validation passages ({len(data.val_plays)} plays); TF-IDF + LR validation macro-F1 "
        f"{tfidf['macro_f1']:.4f}",
        flush=True,
    )
    cache: dict[str, torch.Tensor] = {}
    compute = head_module.pooled_vectors

    def shared(net, ids_list, *rest, **kw):  # the same texts, pooling and length: once
        key = hashlib.sha1(
            json.dumps([list(ids_list), net.config.pooling, net.pooler is None]).encode()
        ).hexdigest()
        if key not in cache:
            cache[key] = compute(net, ids_list, *rest, **kw)
        return cache[key]

    head_module.pooled_vectors = shared  # type: ignore[assignment]
    rows = [{"freeze_encoder": True, **c} for c in FROZEN] + (FULL if args.full else [])
    print(f"{'recipe':108s} {'val macro-F1':>12s} {'- TF-IDF':>9s} {'epochs':>7s} {'s':>6s}")
    for recipe in rows:
        t0 = time.perf_counter()
        result = finetune("minilm", train, val, **recipe)
        f1 = result.best["macro_f1"]
        print(
            f"{json.dumps(recipe):108s} {f1:12.4f} {100 * (f1 - tfidf['macro_f1']):+9.1f} "
            f"{result.epochs:7g} {time.perf_counter() - t0:6.0f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
