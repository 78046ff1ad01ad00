"""Fine-tuning a BERT-family model for sequence classification, on the training package.

    >>> result = finetune("minilm", "train.csv", "eval.csv", out="runs/clf")
    >>> result.best["macro_f1"], result.baseline["macro_f1"]

* **Training**: AdamW with weight decay on matrices only (:mod:`attnkit.training.optim`), linear
  warm-up then linear (or cosine) decay to 0, gradient clipping, the forward pass under
  ``dtype`` autocast (:mod:`attnkit.training.precision`), cross-entropy with class weights
  ``w_c = N / (K * n_c)`` (:func:`class_weights`: N training rows, K classes, n_c rows of class
  c; 1 for every class of a balanced set, so the loss counts each class as much in total).
  Batches are length-sorted with dynamic padding (:mod:`attnkit.text.batching`): texts of
  about the same token count go together and are padded only to the longest of their batch.
* **Devices and processes**: ``device`` "auto", "cpu" or "cuda"; under ``torchrun`` each
  process joins the group (:mod:`attnkit.training.distributed`), the model is wrapped in DDP,
  every process draws the same global batch of ``batch_size`` texts and runs its share
  (every ``world_size``-th row); the loss is normalised by the whole batch's class weights,
  so N processes take the same steps as one. Evaluation is shared the same way and its logits
  summed, so every process makes the same early-stopping decision; only rank 0 writes.
* **Early stopping**: the eval set is scored after every epoch (or every ``eval_every``
  steps); the best state by ``metric`` (macro-F1, accuracy or eval loss) is kept, and training
  stops after ``patience`` evaluations without improvement.
* **Outputs** in ``out``: the best model as an attnkit checkpoint (``config.json`` holds the
  label names as ``id2label`` and the provenance as ``meta.finetune``), ``metrics.json``
  (every evaluation, the best scores, the majority-class and TF-IDF baselines, the class
  weights) and ``confusion.png`` (when matplotlib is installed); with ``logger`` naming
  ``tensorboard`` or ``wandb``, the evaluations also go there as they come
  (:mod:`attnkit.training.loggers`, files under ``out``).
* **Baselines**, on the same eval set: the majority class, and TF-IDF + logistic regression
  fitted on the same training texts (:mod:`~attnkit.tasks.classification.baseline`; left out
  with a warning without scikit-learn).
* **Frozen encoder** (``freeze_encoder=True``): only the head trains, on pooled vectors
  computed once (:mod:`~attnkit.tasks.classification.head`); many epochs cost little.

One job, kept whole (about 520 lines): the fine-tuning loop with its config and outputs (an
existing model in ``out`` is refused or set aside through :mod:`attnkit.training.rundir`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from attnkit._util import checks
from attnkit.models.bert import Bert
from attnkit.models.common import ModelBase
from attnkit.tasks.classification.baseline import tfidf_or_none
from attnkit.tasks.classification.data import LabelledTexts, as_examples, label_names
from attnkit.tasks.classification.head import train_head
from attnkit.tasks.classification.metrics import majority_baseline, plot_confusion, scores
from attnkit.tasks.classification.model import (
    class_logits,
    classifier_from,
    forward_logits,
)
from attnkit.text.batching import Batch, length_batches, pad_batch
from attnkit.text.pooling import CLASSIFIER_POOLINGS, resolve_pooling
from attnkit.text.tokenizers import encode_texts, pad_token_id
from attnkit.training import distributed, loggers, optim, precision, rundir

__all__ = [
    "METRICS",
    "FinetuneConfig",
    "FinetuneResult",
    "class_weights",
    "finetune",
    "save_result",
]

logger = logging.getLogger(__name__)

METRICS = ("macro_f1", "accuracy", "loss")
KEEPS = ("best", "last")
Data = LabelledTexts | str | os.PathLike[str] | tuple[Sequence[str], Sequence[object]]


def class_weights(y: Sequence[int], num_classes: int) -> torch.Tensor:
    """Weights ``w_c = N / (K * n_c)`` for the cross-entropy: N rows, K classes, n_c rows of
    class c. Every class of a balanced set gets 1; a class absent from ``y`` is an error.

    Args:
        y: the class index of each training row.
        num_classes: K.

    Returns:
        (K,) float32 tensor of weights.

    Raises:
        ValueError: a class of 0..K - 1 never occurs in ``y``, or ``y`` holds a larger one.

    Examples:
        >>> class_weights([0, 1, 1], num_classes=2)
        tensor([1.5000, 0.7500])
    """
    counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=num_classes)
    if len(counts) > num_classes or (counts == 0).any():
        raise ValueError(
            f"class counts {counts.tolist()} for {num_classes} classes; expected every "
            f"class in 0..{num_classes - 1} at least once"
        )
    return torch.tensor(len(y) / (num_classes * counts), dtype=torch.float32)


@dataclass(frozen=True)
class FinetuneConfig:
    """Hyper-parameters of :func:`finetune` (every one checked).

    Optimisation: ``epochs``, ``batch_size`` texts per step over all processes, AdamW at
    ``lr`` with ``weight_decay``, ``warmup_fraction`` of the steps of linear warm-up, then
    ``lr_decay`` ("linear" or "cosine") to 0, ``grad_clip`` (0: none), class-weighted loss
    (``use_class_weights``). Texts are cut at ``max_length`` tokens. Evaluation: every
    ``eval_every`` steps (0: after every epoch) in batches of ``eval_batch_size``; the kept
    state (``keep``: "best" by ``metric`` with early stopping after ``patience`` evaluations
    without one, or "last"). Model: ``pooling`` and ``dropout`` of the new head (None: the
    checkpoint's rule). ``freeze_encoder`` trains the head alone; ``probe_epochs`` > 0 first
    trains the head alone at ``probe_lr``, then the whole model. ``device``, ``dtype``,
    ``seed`` and ``logger`` (csv, tensorboard, wandb) as in training.

    Raises:
        ValueError: a field out of range or of the wrong type.

    Examples:
        >>> FinetuneConfig(epochs=5, lr=3e-5, metric="accuracy").epochs
        5
    """

    epochs: int = 3
    batch_size: int = 16  # texts per optimizer step, over all processes
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1
    lr_decay: str = "linear"  # linear | cosine, to 0 at the last step
    grad_clip: float = 1.0  # 0: no clipping
    max_length: int = 128
    use_class_weights: bool = True
    metric: str = "macro_f1"
    patience: int = 2
    eval_every: int = 0  # steps between evaluations; 0: after every epoch
    eval_batch_size: int = 64
    pooling: str | None = None
    dropout: float | None = None
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda (one GPU per process under torchrun)
    dtype: str = "float32"  # float32 | bfloat16 | float16 (CUDA)
    freeze_encoder: bool = False  # train the head only, on pooled vectors computed once
    probe_epochs: int = 0  # >0: first the head alone (as freeze_encoder, at probe_lr), then all
    probe_lr: float = 1e-2
    # "best": the state with the best eval ``metric`` (early stopping after ``patience``
    # evaluations without one); "last": the state after the last step, no early stopping (a
    # refit for a number of epochs chosen earlier, on an eval set that may be in the training)
    keep: str = "best"
    logger: str = "csv"  # also "tensorboard", "wandb" or a list (attnkit.training.loggers)

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "max_length", "patience", "eval_batch_size"):
            checks.positive_int(name, getattr(self, name))
        checks.non_negative_int("eval_every", self.eval_every)
        checks.non_negative_int("probe_epochs", self.probe_epochs)
        checks.positive_float("probe_lr", self.probe_lr)
        for name in ("lr", "weight_decay", "grad_clip"):
            checks.non_negative_float(name, getattr(self, name))
        checks.probability("warmup_fraction", self.warmup_fraction)
        checks.choice("lr_decay", self.lr_decay, optim.DECAYS)
        checks.flag("use_class_weights", self.use_class_weights)
        checks.flag("freeze_encoder", self.freeze_encoder)
        checks.choice("keep", self.keep, KEEPS)
        loggers.parse_loggers(self.logger, "logger")
        checks.choice("metric", self.metric, METRICS)
        if self.pooling is not None:
            checks.choice("pooling", self.pooling, CLASSIFIER_POOLINGS)
        if self.dropout is not None:
            checks.probability("dropout", self.dropout)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            checks.fail("seed", self.seed, "an int", wrong_type=True)
        checks.choice("dtype", self.dtype, tuple(precision.DTYPES))
        if not isinstance(self.device, str):
            checks.fail("device", self.device, "'auto', 'cpu' or 'cuda'", wrong_type=True)
        # a device or dtype this machine lacks is found when finetune() starts


@dataclass
class FinetuneResult:
    """What :func:`finetune` returns: the kept ``model`` (in eval mode) and its ``labels``,
    the ``best`` scores of the kept state on the eval set (with ``eval_loss`` and ``step``),
    the majority-class ``baseline`` and the ``tfidf`` baseline (None without scikit-learn),
    every evaluation in ``history``, the ``class_weights``, the ``steps`` and ``epochs`` run,
    whether it ``stopped_early``, the ``seconds`` taken, the ``out`` directory (None when
    nothing was written) and, under torchrun, ``world_size`` and ``is_main`` (rank 0).

    Examples:
        >>> result = finetune("minilm", "train.csv", "eval.csv", out="runs/clf")
        >>> result.best["macro_f1"], result.baseline["macro_f1"], result.stopped_early
    """

    model: Bert
    labels: list[str]
    best: dict[str, Any]  # scores of the kept (best) state on the eval set
    baseline: dict[str, Any]  # majority-class scores on the same eval set
    history: list[dict[str, Any]] = field(default_factory=list)
    class_weights: list[float] = field(default_factory=list)
    steps: int = 0
    epochs: float = 0.0
    stopped_early: bool = False
    seconds: float = 0.0
    out: Path | None = None
    world_size: int = 1
    is_main: bool = True  # rank 0 (or a single process): the one that wrote ``out``
    # TF-IDF + logistic regression fitted on the same training texts (None: no scikit-learn)
    tfidf: dict[str, Any] | None = None
    # with probe_epochs: the epoch (fractional) of the head-alone run's kept state
    probe_epochs_kept: float | None = None

    @property
    def epochs_kept(self) -> float:
        """Epochs up to the kept state: its step over the steps of one epoch (0.0 when no
        step was run).

        Examples:
            >>> result.steps, result.epochs, result.best["step"], result.epochs_kept
            (60, 3.0, 40, 2.0)
        """
        per_epoch = self.steps / self.epochs if self.epochs else 0.0
        return round(self.best["step"] / per_epoch, 3) if per_epoch else 0.0


def better(metric: str, new: float, old: float | None) -> bool:
    if old is None:
        return True
    return new < old - 1e-12 if metric == "loss" else new > old + 1e-12


def _config(config: FinetuneConfig | None, overrides: dict[str, Any]) -> FinetuneConfig:
    cfg = config or FinetuneConfig()
    if not overrides:
        return cfg
    names = sorted(f.name for f in fields(FinetuneConfig))
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise ValueError(
            f"unknown finetune option(s) {unknown}; expected fields of FinetuneConfig: {names}"
        )
    return FinetuneConfig(**{**asdict(cfg), **overrides})


def finetune(
    model: ModelBase | str | os.PathLike[str],
    train: Data,
    eval: Data,
    *,
    text_column: str = "text",
    label_column: str = "label",
    out: str | os.PathLike[str] | None = None,
    config: FinetuneConfig | None = None,
    log: Callable[[str], None] | None = None,
    progress: bool = False,
    overwrite: bool = False,
    **overrides: Any,
) -> FinetuneResult:
    """Fine-tune ``model`` (a checkpoint directory, ``"minilm"`` or a loaded BERT-family model)
    to classify ``train`` (a CSV/JSONL path, a :class:`LabelledTexts` or (texts, labels)),
    choosing the kept state by its score on ``eval``; write the checkpoint and metrics to
    ``out`` when given (rank 0 only). ``overrides`` set :class:`FinetuneConfig` fields;
    ``log`` receives one line per evaluation (rank 0 only).

    An ``out`` that already holds a model or a run is a ValueError before any training
    (:class:`attnkit.training.rundir.RunExistsError`) unless ``overwrite=True``; then the old
    files are set aside when the new ones are written and deleted once ``metrics.json`` (the
    last file) is, or put back by the next call if the write was cut short. Paths follow
    :func:`attnkit.training.rundir.check_paths`.

    Args:
        model: the model to start from.
        train: the training data.
        eval: the evaluation data (its labels must occur in ``train``).
        text_column: the text column of a data file.
        label_column: the label column of a data file.
        out: the output directory (None: nothing is written).
        config: the hyper-parameters (default: ``FinetuneConfig()``).
        log: called with each progress line (rank 0 only).
        progress: a tqdm bar over the steps.
        overwrite: replace a model or run already in ``out``.
        **overrides: :class:`FinetuneConfig` fields set on top of ``config``.

    Raises:
        ValueError: fewer than 2 training classes, eval labels not in training, an unknown
            override, a bad field, a device or dtype this machine lacks, or an ``out`` that
            is taken (without ``overwrite``).

    Examples:
        >>> result = finetune("minilm", "train.csv", "eval.csv", out="runs/clf", epochs=4)
        >>> result.best["macro_f1"]
    """
    checks.flag("overwrite", overwrite)
    cfg = _config(config, overrides)
    train_set = as_examples(train, text_column, label_column, "train")
    eval_set = as_examples(eval, text_column, label_column, "eval")
    labels = label_names(train_set.labels)
    if len(labels) < 2:
        raise ValueError(
            f"{train_set.source}: every row has label {labels[0]!r}; expected at least "
            f"2 classes to classify"
        )
    unseen = sorted(set(eval_set.labels) - set(labels))
    if unseen:
        raise ValueError(
            f"{eval_set.source}: label(s) {unseen} do not occur in {train_set.source}; "
            f"expected eval labels among the training labels {labels}"
        )
    d = distributed.init(cfg.device, "device")
    try:
        precision.check_dtype(cfg.dtype, d.device, "dtype")
        if out is not None:
            _check_out(Path(out), overwrite, d)
        say = (log or (lambda message: None)) if d.is_main else (lambda message: None)
        extras = [n for n in loggers.parse_loggers(cfg.logger, "logger") if n != "csv"]
        # metrics.json holds every evaluation; TensorBoard / W&B follow them live (rank 0)
        with loggers.open_loggers(
            extras if out is not None and d.is_main else [], Path(out or "."), config=asdict(cfg)
        ) as run_log:
            result = _run(
                cfg,
                d,
                model,
                train_set,
                eval_set,
                labels,
                say,
                progress and d.is_main,
                lambda row: run_log.log(split="eval", **row),
            )
        result.model.meta = result.model.meta.replace(
            max_length=min(cfg.max_length, result.model.config.max_seq_len),
            finetune={
                "text_column": text_column,
                "label_column": label_column,
                "pooling": resolve_pooling(result.model, for_classifier=True),
                "best": {
                    k: result.best.get(k) for k in ("accuracy", "macro_f1", "eval_loss", "step")
                },
                "base_model": str(result.model.meta.source),
                "train": train_set.source,
                "eval": eval_set.source,
            },
        )
        if out is not None:
            result.out = Path(out)
            if d.is_main:
                replacing = overwrite and rundir.set_aside(Path(out)) is not None
                save_result(result, out, cfg, train_set.source, eval_set.source)
                if replacing:
                    rundir.discard_replaced(Path(out))
            distributed.barrier(d)
        return result
    finally:
        distributed.shutdown(d)


def _check_out(out: Path, overwrite: bool, d: distributed.Dist) -> None:
    """The output-directory rules of :mod:`attnkit.training.rundir`, before any training."""
    rundir.check_paths(out)
    if d.is_main:  # an overwrite cut short: the old model returns (metrics.json is written last)
        rundir.recover(out, lambda o: (o / "metrics.json").is_file())
    distributed.barrier(d)
    if not overwrite:
        rundir.refuse_existing(out, "a fine-tuned model or a run", resume_too=False)


def _run(
    cfg: FinetuneConfig,
    d: distributed.Dist,
    model: ModelBase | str | os.PathLike[str],
    train_set: LabelledTexts,
    eval_set: LabelledTexts,
    labels: list[str],
    say: Callable[[str], None],
    progress: bool,
    record: Callable[[dict[str, Any]], None] = lambda row: None,
) -> FinetuneResult:
    index = {name: i for i, name in enumerate(labels)}
    y_train = [index[y] for y in train_set.labels]
    y_eval = [index[y] for y in eval_set.labels]

    torch.manual_seed(cfg.seed)  # the same new head in every process
    net = classifier_from(model, labels, cfg.pooling, cfg.dropout).to(d.device)
    tok = net.meta.tokenizer
    assert tok is not None  # classifier_from checked
    max_length = min(cfg.max_length, net.config.max_seq_len)
    pad_id = pad_token_id(tok, net.config.pad_token_id)
    train_ids = encode_texts(tok, train_set.texts, max_length)
    eval_ids = encode_texts(tok, eval_set.texts, max_length)
    weights = (
        class_weights(y_train, len(labels)) if cfg.use_class_weights else torch.ones(len(labels))
    )
    baseline = majority_baseline(y_train, y_eval, labels)
    tfidf = tfidf_or_none(train_set.texts, y_train, eval_set.texts, y_eval, labels, cfg.seed)

    def head_only(head_cfg: FinetuneConfig, **kw: Any) -> FinetuneResult:
        """The head trained alone on vectors of the frozen encoder, under ``head_cfg``."""
        return train_head(
            head_cfg, d, net, train_ids, eval_ids, y_train, y_eval, labels, weights,
            baseline, pad_id, say, progress, **kw,
        )  # fmt: skip

    if cfg.freeze_encoder:
        result = head_only(cfg, record=record)
        result.tfidf = tfidf
        return result
    if cfg.probe_epochs:  # linear probe, then fine-tuning from the trained head
        probe_cfg = replace(cfg, epochs=cfg.probe_epochs, lr=cfg.probe_lr, freeze_encoder=True)
        probe = head_only(probe_cfg)
        say(
            f"head trained alone: eval macro-F1 {probe.best['macro_f1']:.4f} at step "
            f"{probe.best['step']}; now fine-tuning the whole model"
        )
    probe_kept = probe.epochs_kept if cfg.probe_epochs else None
    y_train_t = torch.tensor(y_train)
    y_eval_t = torch.tensor(y_eval)
    optimizer = optim.make_optimizer(
        net, cfg.lr, cfg.weight_decay, (0.9, 0.999), d.device, fused=False
    )
    scaler = precision.grad_scaler(d.device, cfg.dtype)
    wrapped: torch.nn.Module = net
    if d.enabled:
        wrapped = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[d.local_rank] if d.device.type == "cuda" else None
        )
    gen = torch.Generator().manual_seed(cfg.seed)
    lengths = [len(s) for s in train_ids]
    per_epoch = -(-len(train_ids) // cfg.batch_size)
    total = per_epoch * cfg.epochs
    warmup = int(total * cfg.warmup_fraction)
    w_dev = weights.to(d.device)

    def evaluate() -> tuple[dict[str, Any], float]:
        mine = distributed.shard(len(eval_ids), d)
        logits = torch.zeros(len(eval_ids), len(labels))  # (N, K)
        if mine:
            part = class_logits(
                net, [eval_ids[i] for i in mine], cfg.eval_batch_size, pad_id, cfg.dtype
            )
            logits[torch.tensor(mine)] = part
        logits = distributed.total(logits.to(d.device), d).cpu()  # every process: all rows
        loss = float(F.cross_entropy(logits, y_eval_t, weight=weights))
        return scores(y_eval, logits.argmax(-1).tolist(), labels), loss

    counts = ", ".join(f"{n} {y_train.count(i)}" for i, n in enumerate(labels))
    say(
        f"fine-tuning on {len(train_ids)} texts ({counts}), evaluating on {len(eval_ids)}; "
        f"{cfg.epochs} epoch(s) of {per_epoch} batches of {cfg.batch_size}"
        f"{f' over {d.world_size} processes' if d.enabled else ''} on {d.device}; "
        f"class weights {[round(float(w), 3) for w in weights]}"
    )
    history: list[dict[str, Any]] = []
    best_value: float | None = None
    best_state: dict[str, torch.Tensor] | None = None
    best_scores: dict[str, Any] = {}
    bad = 0
    step = 0
    stopped = False
    run_loss = torch.zeros((), dtype=torch.float64, device=d.device)  # sum of loss x rows
    run_n = 0
    start = time.perf_counter()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="finetune", unit="batch")
    wrapped.train()
    for epoch in range(cfg.epochs):
        batches = length_batches(lengths, cfg.batch_size, shuffle=True, generator=gen)
        for b, idx in enumerate(batches):
            optim.set_lr(
                optimizer,
                optim.lr_at(
                    step,
                    lr=cfg.lr,
                    min_lr=0.0,
                    warmup=warmup,
                    decay_iters=total,
                    decay=cfg.lr_decay,
                ),
            )
            # this process's rows of the global batch; the loss is normalised by the whole
            # batch's weight, and DDP averages over processes, hence the world_size factor
            denom = weights[y_train_t[idx]].sum()
            mine = idx[d.rank :: d.world_size]
            scale = d.world_size / float(denom)
            if not mine:  # fewer rows than processes: run one row with no weight
                mine, scale = idx[:1], 0.0
            ids, mask = pad_batch([train_ids[i] for i in mine], pad_id)
            batch = Batch(mine, ids, mask).to(d.device)
            with precision.autocast(d.device, cfg.dtype):
                logits = forward_logits(wrapped, batch)  # (b, K)
            loss_sum = F.cross_entropy(
                logits.float(), y_train_t[mine].to(d.device), weight=w_dev, reduction="sum"
            )
            loss = loss_sum * scale
            optimizer.zero_grad(set_to_none=True)
            (scaler.scale(loss) if scaler else loss).backward()
            optim.clip_and_step(optimizer, net.parameters(), cfg.grad_clip, scaler)
            step += 1
            run_loss += loss.detach().double() * (len(idx) / d.world_size)
            run_n += len(idx)
            if bar is not None:
                bar.update(1)
            last = b == len(batches) - 1
            final = last and epoch == cfg.epochs - 1  # the last step is always evaluated
            if not (
                (cfg.eval_every and step % cfg.eval_every == 0)
                or (not cfg.eval_every and last)
                or final
            ):
                continue
            sc, eval_loss = evaluate()
            row = {
                "step": step,
                "epoch": round(step / per_epoch, 3),
                "train_loss": float(distributed.total(run_loss, d)) / max(run_n, 1),
                "eval_loss": eval_loss,
                "accuracy": sc["accuracy"],
                "macro_f1": sc["macro_f1"],
                "seconds": round(time.perf_counter() - start, 2),
            }
            history.append(row)
            record(row)
            run_loss.zero_()
            run_n = 0
            value = eval_loss if cfg.metric == "loss" else sc[cfg.metric]
            improved = cfg.keep == "best" and better(cfg.metric, value, best_value)
            say(
                f"step {step} (epoch {row['epoch']:g}): train loss {row['train_loss']:.4f}, "
                f"eval loss {eval_loss:.4f}, accuracy {sc['accuracy']:.4f}, macro-F1 "
                f"{sc['macro_f1']:.4f}{' (best)' if improved else ''}"
            )
            if cfg.keep == "last":
                best_scores = {**sc, "eval_loss": eval_loss, "step": step}
            elif improved:
                best_value, bad = value, 0
                best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
                best_scores = {**sc, "eval_loss": eval_loss, "step": step}
            else:
                bad += 1
                if bad >= cfg.patience:
                    stopped = True
                    say(f"early stop: no better {cfg.metric} in {bad} evaluation(s)")
                    break
        if stopped:
            break
    if bar is not None:
        bar.close()
    if best_state is not None:
        net.load_state_dict(best_state)
    net.eval()
    return FinetuneResult(
        net,
        labels,
        best_scores,
        baseline,
        history,
        [float(w) for w in weights],
        step,
        round(step / per_epoch, 3),
        stopped,
        round(time.perf_counter() - start, 2),
        world_size=d.world_size,
        is_main=d.is_main,
        tfidf=tfidf,
        probe_epochs_kept=probe_kept,
    )


def save_result(
    result: FinetuneResult,
    out: str | os.PathLike[str],
    cfg: FinetuneConfig,
    train_source: str = "",
    eval_source: str = "",
) -> Path:
    """Write the model checkpoint, ``metrics.json`` and ``confusion.png`` into ``out``.
    Without matplotlib the plot is left out with a one-line warning naming the extra.

    ``metrics.json`` holds the labels, the kept scores, both baselines, the history, the
    class weights, the run's size, ``cfg`` and the two data sources.

    Args:
        result: what :func:`finetune` returned.
        out: the directory to write.
        cfg: the hyper-parameters the result was trained with.
        train_source: where the training data came from.
        eval_source: where the eval data came from.

    Returns:
        The directory written.

    Examples:
        >>> save_result(result, "runs/clf", FinetuneConfig(), "train.csv", "eval.csv")
        PosixPath('runs/clf')
    """
    from attnkit._util.fs import atomic_write_json
    from attnkit._util.optional import MissingDependency
    from attnkit.checkpoints import save

    path = Path(out)
    save(result.model, path)
    atomic_write_json(
        path / "metrics.json",
        {
            "labels": result.labels,
            "best": result.best,
            "baseline": result.baseline,
            "tfidf_baseline": result.tfidf,
            "history": result.history,
            "class_weights": result.class_weights,
            "steps": result.steps,
            "epochs": result.epochs,
            "stopped_early": result.stopped_early,
            "seconds": result.seconds,
            "world_size": result.world_size,
            "config": asdict(cfg),
            "train": train_source,
            "eval": eval_source,
        },
    )
    if result.best.get("confusion") is not None:
        try:
            plot_confusion(
                np.array(result.best["confusion"]),
                result.labels,
                path / "confusion.png",
                title=f"eval: accuracy {result.best['accuracy']:.3f}, "
                f"macro-F1 {result.best['macro_f1']:.3f}",
            )
        except MissingDependency as e:
            logger.warning("no confusion.png: %s", e)
    return path
