"""train.logger: TensorBoard and W&B (offline) receive the rows of metrics.jsonl (and
finetune its evaluations), read back with TensorBoard's own EventAccumulator and from the W&B
run file; a missing extra or an unknown name is refused before any training; library messages
go through logging."""

from __future__ import annotations

import json
import logging
import struct
import sys
from pathlib import Path

import pytest
from test_checkpoints import word_tokenizer

from attnkit._util.optional import MissingDependency
from attnkit.training import config as run_config
from attnkit.training import loggers
from attnkit.training.loop import pretrain

TINY = {
    "model": {"arch": "gpt", "n_layer": 1, "n_heads": 2, "d_model": 16, "max_seq_len": 16},
    "train": {
        "batch_size": 4,
        "block_size": 16,
        "max_iters": 12,
        "eval_interval": 6,
        "eval_iters": 2,
        "log_interval": 2,
        "warmup_iters": 0,
        "progress": False,
    },
}


@pytest.fixture()
def corpus(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("ATTNKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    path = tmp_path / "corpus.txt"
    path.write_text("".join(f"line {i}: the quick brown fox jumps over it.\n" for i in range(300)))
    return path


def _pretrain(corpus: Path, out: Path, logger: str, **train: object) -> dict:
    overrides = [("data.corpus", str(corpus)), ("train.logger", logger)]
    overrides += [(f"train.{k}", v) for k, v in train.items()]
    return pretrain(run_config.build(TINY, overrides), out)


def _jsonl(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _tensorboard_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _wandb_records(path: Path):
    """The records of a W&B run file: a 7-byte header (':W&B', magic, version), then
    LevelDB-log records in 32 KiB blocks (crc32, length, type; full/first/middle/last)."""
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, part = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            yield chunk
        elif kind == 2:
            part = chunk
        elif kind == 3:
            part += chunk
        elif kind == 4:
            yield part + chunk


def _wandb_history(run_dir: Path) -> list[dict]:
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = run_dir.glob("offline-run-*/run-*.wandb")
    rows = []
    for raw in _wandb_records(path):
        record = pb.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "history":
            rows.append(
                {
                    (i.key or "/".join(i.nested_key)): json.loads(i.value_json)
                    for i in record.history.item
                }
            )
    return rows


def test_tensorboard_and_wandb_log_the_rows_of_metrics_jsonl(corpus, tmp_path):
    pytest.importorskip("tensorboard")
    pytest.importorskip("wandb")
    out = tmp_path / "run"
    _pretrain(corpus, out, "csv,tensorboard,wandb")
    rows = _jsonl(out)
    train = [(r["step"], r["loss"]) for r in rows if r["split"] == "train"]
    val = [(r["step"], r["loss"]) for r in rows if r["split"] == "val"]
    assert [s for s, _ in train] == [2, 4, 6, 8, 10, 12] and [s for s, _ in val] == [6, 12]
    assert (out / "metrics.csv").read_text().count("\n") == len(rows) + 1  # csv stays

    tb = _tensorboard_scalars(out / "tensorboard")
    for tag, want in (("train/loss", train), ("val/loss", val)):
        got = tb[tag]
        assert [s for s, _ in got] == [s for s, _ in want], tag
        # TensorBoard stores float32
        assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6), tag
    lrs = [(r["step"], r["lr"]) for r in rows if r["split"] == "train"]
    assert [v for _, v in tb["train/lr"]] == pytest.approx([v for _, v in lrs], rel=1e-6)
    assert "val/accuracy" not in tb  # an empty field ("" for a GPT) is not a scalar

    history = _wandb_history(out / "wandb")
    logged = {(h["_step"], k): v for h in history for k, v in h.items() if not k.startswith("_")}
    for step, loss in train:
        assert logged[(step, "train/loss")] == pytest.approx(loss, rel=1e-12)
    for step, loss in val:
        assert logged[(step, "val/loss")] == pytest.approx(loss, rel=1e-12)


def test_resume_purges_the_tensorboard_events_past_the_checkpoint(corpus, tmp_path):
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    _pretrain(corpus, out, "tensorboard", max_iters=6, checkpoint_interval=6)
    before = _tensorboard_scalars(out / "tensorboard")["train/loss"]
    _pretrain_resume = pretrain(
        run_config.build(
            TINY,
            [
                ("data.corpus", str(corpus)),
                ("train.logger", "tensorboard"),
                ("train.max_iters", 12),
            ],
        ),
        out,
        resume=True,
    )
    assert _pretrain_resume["iters"] == 12
    got = _tensorboard_scalars(out / "tensorboard")["train/loss"]
    want = [(r["step"], r["loss"]) for r in _jsonl(out) if r["split"] == "train"]
    assert [s for s, _ in got] == [2, 4, 6, 8, 10, 12]
    assert got[:3] == before
    assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6)


@pytest.mark.parametrize(
    "name, package, extra",
    [("tensorboard", "tensorboard", "tensorboard"), ("wandb", "wandb", "wandb")],
)
def test_a_missing_extra_is_refused_before_training(
    corpus, tmp_path, monkeypatch, name, package, extra
):
    monkeypatch.setitem(sys.modules, package, None)  # import fails as if not installed
    monkeypatch.delitem(sys.modules, "torch.utils.tensorboard", raising=False)
    with pytest.raises(MissingDependency, match=rf"pip install 'attnkit\[{extra}\]'"):
        _pretrain(corpus, tmp_path / "run", f"csv,{name}")
    assert not (tmp_path / "run").exists()  # nothing started


def test_logger_names_are_checked():
    assert loggers.parse_loggers("csv") == ["csv"]
    assert loggers.parse_loggers(" csv , csv") == ["csv"]
    assert loggers.parse_loggers(["csv"]) == ["csv"]
    with pytest.raises(ValueError, match=r"train.logger names 'mlflow' in 'csv,mlflow'; expected"):
        loggers.parse_loggers("csv,mlflow")
    with pytest.raises(ValueError, match=r"names '' in 'csv,'"):
        loggers.parse_loggers("csv,")
    with pytest.raises(TypeError, match=r"train.logger must be a string"):
        loggers.parse_loggers(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"config key 'train.logger' must be str"):
        run_config.build({}, [("train.logger", 1)])


def test_library_messages_go_through_the_attnkit_logger(corpus, tmp_path, caplog, capsys):
    pytest.importorskip("tensorboard")
    with caplog.at_level(logging.INFO, logger="attnkit"):
        _pretrain(corpus, tmp_path / "run", "tensorboard", max_iters=2, eval_interval=2)
    ours = [r for r in caplog.records if "TensorBoard events in" in r.getMessage()]
    assert ours and all(r.name.startswith("attnkit.") for r in ours)
    assert capsys.readouterr().out == ""  # nothing printed to stdout
    caplog.clear()
    logging.getLogger("attnkit").setLevel(logging.ERROR)  # what a user does to silence it
    try:
        with caplog.at_level(logging.INFO):
            _pretrain(corpus, tmp_path / "run2", "tensorboard", max_iters=2, eval_interval=2)
    finally:
        logging.getLogger("attnkit").setLevel(logging.NOTSET)
    assert not [r for r in caplog.records if r.name.startswith("attnkit")]


def test_finetune_sends_its_evaluations_to_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    import random

    import attnkit
    from attnkit.models import build_model, get_preset
    from attnkit.tasks.classification import finetune

    cfg = get_preset(
        "tiny-bert", vocab_size=80, d_model=32, n_heads=4, n_layer=2, pooling="mean", pooler=False
    )
    base = tmp_path / "tiny-bert"
    attnkit.save(build_model(cfg).eval(), base, tokenizer=word_tokenizer())
    rng = random.Random(0)
    texts = [
        " ".join(rng.choice(["cave", "ball", "bat", "the"]) for _ in range(5)) for _ in range(24)
    ]
    labels = ["cave" if "cave" in t else "other" for t in texts]
    out = tmp_path / "clf"
    result = finetune(
        base,
        (texts, labels),
        (texts, labels),
        out=out,
        epochs=3,
        batch_size=8,
        lr=1e-3,
        patience=3,
        logger="csv,tensorboard",
    )
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert len(history) == len(result.history) == 3
    tb = _tensorboard_scalars(out / "tensorboard")
    for key in ("macro_f1", "eval_loss", "train_loss", "accuracy"):
        got = tb[f"eval/{key}"]
        assert [s for s, _ in got] == [h["step"] for h in history], key
        assert [v for _, v in got] == pytest.approx([h[key] for h in history], rel=1e-6), key
    with pytest.raises(ValueError, match="logger names 'tb'"):
        finetune(base, (texts, labels), (texts, labels), logger="tb")


def test_overwrite_sets_the_old_runs_logger_files_aside_with_the_rest(tmp_path):
    """The TensorBoard and W&B directories belong to the run: --overwrite moves them aside
    with the old checkpoints (new event files never sit beside the old run's), and a new run
    that fails before its first checkpoint gets them back."""
    from attnkit.training import rundir

    out = tmp_path / "run"
    for rel in ("checkpoints/step-000010/x", "tensorboard/events.out.1", "wandb/offline-run/f"):
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text(rel)
    assert sorted(rundir.existing_run(out)) == ["checkpoints", "tensorboard", "wandb"]
    aside = rundir.set_aside(out)
    assert (aside / "tensorboard" / "events.out.1").read_text() == "tensorboard/events.out.1"
    assert not (out / "tensorboard").exists() and not (out / "wandb").exists()
    (out / "tensorboard").mkdir()
    (out / "tensorboard" / "events.out.2").write_text("new")
    rundir.recover(out, lambda o: False)  # the new run left no checkpoint: the old one returns
    assert (out / "tensorboard" / "events.out.1").read_text() == "tensorboard/events.out.1"
    assert not (out / "tensorboard" / "events.out.2").exists()
    assert (out / "wandb" / "offline-run" / "f").is_file()
