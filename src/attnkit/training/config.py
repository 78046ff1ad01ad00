"""Run configuration: dataclasses read from TOML (or a saved JSON), overridden by dotted keys.

A run config has three sections. ``[model]`` holds :class:`attnkit.models.ModelConfig` fields
(``vocab_size`` comes from the tokenizer and ``max_seq_len`` defaults to the block size);
``[data]`` is :class:`DataConfig` and ``[train]`` is :class:`TrainConfig`. Any key can be
overridden as ``section.key=value`` (the command line's ``--model.n_layer 4``); values are
parsed as TOML literals (``4``, ``1e-3``, ``true``, ``"text"``), bare words as strings. An
unknown section or key is an error naming it.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attnkit._util import checks

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


@dataclass
class DataConfig:
    """The ``[data]`` section: the corpus, its tokenizer and the validation split.

    ``corpus`` is a corpus name or a .txt/.jsonl file or directory; ``tokenizer`` is "char",
    "bpe" or "wordpiece", with ``vocab_size`` for bpe/wordpiece (char takes the corpus's
    characters); ``val_fraction`` of the text is held out. Encoder-decoder runs read pairs
    (``"bible:en-es"``, a .tsv/.jsonl of pairs) or plain text for span corruption:
    ``max_source_len``/``max_target_len`` (0: ``model.max_seq_len``) leave longer training
    pairs out, and ``noise_density``/``mean_span_length`` set span corruption's hidden spans.

    Examples:
        >>> DataConfig(corpus="shakespeare", tokenizer="bpe", vocab_size=2048).val_fraction
        0.1
    """

    corpus: str = "shakespeare"  # a corpus name or a .txt/.jsonl file or directory
    tokenizer: str = "char"  # char | bpe | wordpiece
    vocab_size: int = 0  # for bpe/wordpiece (char: the corpus's characters)
    val_fraction: float = 0.1
    # encoder-decoder runs (model.arch = "encdec"): the corpus is pairs (attnkit.text.parallel:
    # "bible:en-es", a .tsv/.jsonl of pairs) for seq2seq, or plain text for span corruption
    # tokens, eos included; longer training pairs are left out (0: model.max_seq_len)
    max_source_len: int = 0
    max_target_len: int = 0  # the same for targets
    noise_density: float = 0.15  # span corruption: the fraction of tokens hidden
    mean_span_length: float = 3.0  # span corruption: the mean length of a hidden span


@dataclass
class TrainConfig:
    """The ``[train]`` section: batches, optimizer and schedule, evaluation, checkpoints,
    device and precision, loggers and budgets.

    Each optimizer step sees ``batch_size`` sequences of ``block_size`` tokens per process per
    micro-step, ``grad_accum`` micro-steps. The learning rate warms up over ``warmup_iters``
    to ``lr`` and decays (cosine) to ``min_lr`` at ``lr_decay_iters`` (0: ``max_iters``).
    ``checkpoint_interval`` 0 checkpoints at every evaluation; ``keep_checkpoints`` are kept.
    ``init_from`` names a checkpoint directory to start from; ``parallel`` is "ddp" or "fsdp"
    under torchrun; ``logger`` is "csv", "tensorboard", "wandb" or a comma-separated list.
    The budgets (``budget_seconds``, ``budget_tokens``, ``budget_flops``; 0: no limit) stop
    the run at the first step that spends one. ``elementwise_threads`` (CPU) runs the fused
    kernels of ``compile`` on that many threads. ``label_smoothing``,
    ``batch_tokens`` and the ``eval_*`` decoding settings are for encoder-decoder runs.
    :func:`check_train` checks the ranges.

    Examples:
        >>> TrainConfig(max_iters=200, batch_size=8, lr=3e-4).grad_accum
        1
    """

    max_iters: int = 2000
    batch_size: int = 12  # sequences per process per micro-step
    block_size: int = 64  # tokens per sequence
    grad_accum: int = 1  # micro-steps per optimizer step
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_iters: int = 100
    lr_decay_iters: int = 0  # 0: max_iters
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # 0: no clipping
    eval_interval: int = 250
    eval_iters: int = 20
    log_interval: int = 10
    checkpoint_interval: int = 0  # 0: at every eval
    keep_checkpoints: int = 2
    mlm_probability: float = 0.15
    seed: int = 1337
    init_from: str = ""  # a checkpoint dir (attnkit, HF GPT-2/Llama/BERT) to start from
    device: str = "auto"  # auto | cpu | cuda
    dtype: str = "float32"  # float32 | bfloat16 | float16 (CUDA)
    compile: bool = False
    fused_adamw: bool = True
    parallel: str = "ddp"  # ddp (replicas) | fsdp (FSDP2 shards); used under torchrun
    threads: int = 0  # torch threads per process; 0: leave as is
    # CPU threads of torch.compile's fused kernels (Inductor's cpp.threads; 0: torch's count):
    # 1 spares a small model the thread pool's wake-ups, which can cost more than the work
    elementwise_threads: int = 0
    progress: bool = True
    logger: str = "csv"  # csv | tensorboard | wandb, or a list: "csv,tensorboard"
    # budgets: the run stops at the first step that spends one (0: no limit); floats, so that
    # 2e6 is accepted. Seconds count the loop's wall time (evaluations included, resumed
    # parts added); FLOPs are the model's training estimate (flops_per_token x tokens).
    budget_seconds: float = 0.0
    budget_tokens: float = 0.0
    budget_flops: float = 0.0
    # encoder-decoder runs: batches of at most batch_tokens padded tokens (source or target,
    # whichever is longer; 0: batch_size x block_size), label smoothing, and at each
    # evaluation eval_sentences held-out sources decoded (eval_num_beams; 0 sentences: none)
    # and scored with BLEU and chrF
    label_smoothing: float = 0.0
    batch_tokens: int = 0
    eval_sentences: int = 100
    eval_num_beams: int = 1
    eval_max_new_tokens: int = 0  # 0: data.max_target_len


@dataclass
class RunConfig:
    """A whole run config: ``model`` (the :class:`attnkit.models.ModelConfig` fields given, as
    a dict), ``data`` (:class:`DataConfig`) and ``train`` (:class:`TrainConfig`). Usually made
    by :func:`build`.

    Examples:
        >>> RunConfig(model={"n_layer": 2}, train=TrainConfig(max_iters=100)).train.max_iters
        100
    """

    model: dict = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        """The config as a nested plain dict (``"model"``, ``"data"``, ``"train"``), as saved in
        ``run_config.json``; :func:`build` reads it back.

        Examples:
            >>> RunConfig(model={"n_layer": 2}).to_dict()["model"]
            {'n_layer': 2}
        """
        return {
            "model": dict(self.model),
            "data": dataclasses.asdict(self.data),
            "train": dataclasses.asdict(self.train),
        }


def _model_fields(arch: Any = None) -> dict[str, Any]:
    from attnkit.models import ModelConfig

    cls: Any = ModelConfig
    if arch == "encdec":
        from attnkit.models.encdec_config import EncDecConfig

        cls = EncDecConfig
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _section_fields(section: str, arch: Any = None) -> dict[str, Any]:
    if section == "model":
        return _model_fields(arch)
    cls = {"data": DataConfig, "train": TrainConfig}[section]
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against the field's type (ints are accepted for floats)."""
    args = typing.get_args(hint)
    allowed = tuple(a for a in (args or (hint,)) if a is not type(None))
    if value is None and type(None) in args:
        return None
    for t in allowed:
        t = typing.get_origin(t) or t
        if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if t in (bool, str, dict) and isinstance(value, t):
            return value
    names = " or ".join(getattr(typing.get_origin(t) or t, "__name__", str(t)) for t in allowed)
    raise ValueError(f"config key {key!r} must be {names}, got {value!r}")


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_override(item: str) -> tuple[str, Any]:
    """Split a ``section.key=value`` override into its key and value; the value is parsed as a
    TOML literal (``4``, ``1e-3``, ``true``, ``"text"``), a bare word kept as a string. The
    key is not checked here (:func:`build` does that).

    Args:
        item: the override text, e.g. ``"model.n_layer=4"``.

    Returns:
        ``(dotted key, value)``.

    Raises:
        ValueError: ``item`` has no ``=``.

    Examples:
        >>> parse_override("train.lr=3e-4")
        ('train.lr', 0.0003)
    """
    key, sep, text = item.partition("=")
    if not sep:
        raise ValueError(f"override {item!r} must look like section.key=value")
    return key.strip(), _parse_value(text.strip())


def build(base: dict[str, Any], overrides: list[tuple[str, Any]]) -> RunConfig:
    """A RunConfig from a nested dict (TOML/JSON) plus ``(dotted key, value)`` overrides.

    Values are checked against their fields' types (an int is accepted for a float); the
    ``model`` keys are those of :class:`attnkit.models.ModelConfig` (of ``EncDecConfig`` when
    ``model.arch`` is "encdec"), old field names accepted. Later overrides win.

    Args:
        base: ``{"model": {...}, "data": {...}, "train": {...}}``, any section may be missing.
        overrides: ``(dotted key, value)`` pairs, e.g. from :func:`parse_override`.

    Returns:
        The :class:`RunConfig` (ranges unchecked; see :func:`check_train`).

    Raises:
        ValueError: an unknown section or key, a value of the wrong type, or
            ``model.vocab_size`` (set by the tokenizer).

    Examples:
        >>> build({"train": {"max_iters": 200}}, [("model.n_layer", 4)]).model
        {'n_layer': 4}
    """
    tree: dict[str, dict[str, Any]] = {"model": {}, "data": {}, "train": {}}
    items: list[tuple[str, Any]] = []
    for section, body in base.items():
        if section not in tree:
            raise ValueError(f"unknown config section {section!r}; expected one of {sorted(tree)}")
        if not isinstance(body, dict):
            raise ValueError(f"config section {section!r} must be a table, got {body!r}")
        items += [(f"{section}.{k}", v) for k, v in body.items()]
    # the model's fields depend on its architecture (an encoder-decoder has its own config)
    arch = next((v for k, v in reversed(items + list(overrides)) if k == "model.arch"), None)
    for key, value in items + list(overrides):
        section, _, name = key.partition(".")
        if section not in tree or not name:
            raise ValueError(f"unknown config key {key!r}; expected model.*, data.* or train.*")
        if section == "model":
            from attnkit.models.config import RENAMED_FIELDS

            name = RENAMED_FIELDS.get(name, name)  # older files' names (n_head, n_kv_head)
        fields = _section_fields(section, arch)
        if name not in fields:
            raise ValueError(
                f"unknown config key {key!r}; valid {section} keys: {', '.join(sorted(fields))}"
            )
        tree[section][name] = _coerce(key, value, fields[name])
    for name in ("vocab_size",):
        if name in tree["model"]:
            raise ValueError(
                f"config key 'model.{name}' is set by the tokenizer; use data.vocab_size"
            )
    return RunConfig(
        model=tree["model"], data=DataConfig(**tree["data"]), train=TrainConfig(**tree["train"])
    )


def read_file(path: str | Path) -> dict[str, Any]:
    """A config file: TOML, or the JSON a run saves as ``run_config.json``.

    Args:
        path: a .toml file, or a .json one (read as JSON).

    Returns:
        The nested dict, ready for :func:`build`.

    Raises:
        ValueError: the file does not exist or does not parse.

    Examples:
        >>> build(read_file(find_config("gpt-shakespeare-char")), []).data.tokenizer
        'char'
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(
            f"config file {str(path)!r} does not exist; expected a .toml file such "
            f"as configs/gpt-shakespeare-char.toml"
        )
    try:
        if path.suffix == ".json":
            return json.loads(path.read_text())
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise ValueError(
            f"config file {str(path)!r} is not valid {path.suffix[1:].upper()}: {e}"
        ) from None


def find_config(name: str) -> Path:
    """``name`` as a path, or ``<name>.toml`` among the configs shipped in ``attnkit/configs``
    (package data, so it works from an installed wheel); ``configs/<name>.toml``, the old
    checkout path, names the shipped file too.

    Args:
        name: a file path, or a shipped config's name such as ``"gpt-shakespeare-char"``.

    Returns:
        The path of the config file.

    Raises:
        ValueError: no such file, with the shipped configs' names.

    Examples:
        >>> find_config("gpt-shakespeare-char").name
        'gpt-shakespeare-char.toml'
    """
    path = Path(name)
    if path.is_file():
        return path
    root = Path(__file__).resolve().parents[1] / "configs"
    cands = [root / name, root / f"{name}.toml"]
    if path.parent.name == "configs":
        cands.append(root / path.name)
    for cand in cands:
        if cand.is_file():
            return cand
    raise ValueError(
        f"config {name!r} not found; expected a TOML file path or one of "
        f"{sorted(p.stem for p in root.glob('*.toml'))}"
    )


def check_train(cfg: RunConfig) -> None:
    """ValueError naming the first ``train.*`` (or ``data.*`` length and span) setting out of
    its range; returns None when all are in range.

    Args:
        cfg: the run config to check.

    Raises:
        ValueError: a setting out of its range, named with the value and what was expected.

    Examples:
        >>> check_train(build({}, [("train.max_iters", 0)]))  # ValueError: train.max_iters
    """
    tc = cfg.train
    for name in (
        "max_iters",
        "batch_size",
        "block_size",
        "grad_accum",
        "eval_interval",
        "eval_iters",
        "log_interval",
    ):
        checks.int_at_least(f"train.{name}", getattr(tc, name), 1, ">= 1")
    for name in (
        "warmup_iters",
        "lr_decay_iters",
        "checkpoint_interval",
        "keep_checkpoints",
        "threads",
        "elementwise_threads",
    ):
        checks.int_at_least(f"train.{name}", getattr(tc, name), 0, ">= 0")
    checks.positive_float("train.lr", tc.lr)
    checks.in_range("train.min_lr", tc.min_lr, 0.0, tc.lr, high_open=False)
    checks.in_range("train.mlm_probability", tc.mlm_probability, 0.0, 1.0, low_open=True)
    for name in ("max_source_len", "max_target_len"):
        checks.non_negative_int(f"data.{name}", getattr(cfg.data, name))
    checks.in_range("data.noise_density", cfg.data.noise_density, 0.0, 1.0, low_open=True)
    checks.positive_float("data.mean_span_length", cfg.data.mean_span_length)
    checks.probability("train.label_smoothing", tc.label_smoothing)
    for name in ("batch_tokens", "eval_sentences", "eval_max_new_tokens"):
        checks.non_negative_int(f"train.{name}", getattr(tc, name))
    checks.positive_int("train.eval_num_beams", tc.eval_num_beams)
    for name in ("weight_decay", "grad_clip", "budget_seconds", "budget_tokens", "budget_flops"):
        checks.non_negative_float(f"train.{name}", getattr(tc, name))
    for name in ("beta1", "beta2"):
        checks.probability(f"train.{name}", getattr(tc, name))
    for name in ("compile", "fused_adamw", "progress"):
        checks.flag(f"train.{name}", getattr(tc, name))
