"""The sweep's study: Optuna's RDB storage holds the points, who runs each and what came out.

    storage = open_storage(storage_url(out, None))       # sqlite:///OUT/sweep.db by default
    study = open_study(storage, "sweep", spec)            # creates it and queues every point
    ran = work(study, spec, out)                          # claim and run points until none is left

Every point is queued once, as a waiting trial with its fixed parameters
(``Study.enqueue_trial``), by the process that creates the study (Optuna's unique study name
decides which). Each process then claims waiting trials through ``Study.optimize``, whose
claim is one state change in the database, so processes on one machine or many (one database
URL) share the points and none runs twice. What Optuna does not cover is handled so:

* a process killed hard leaves its trial running; its heartbeat stops, and after the grace
  period any process marks it failed and queues it again (Optuna's
  ``RetryHeartbeatStaleTrialCallback``); the retry resumes the point's run directory from its
  latest checkpoint;
* Ctrl-C fails the trial, and the interrupted process itself queues the point again before it
  stops (no other process holds it, so nothing is queued twice);
* a trial sampled when another process took the last waiting one, or a second trial of a point
  whose lower-numbered trial is running or done, is pruned and leaves no run;
* a finished (complete) trial is never run again; a process with nothing left to claim waits
  for the points others are running, so every process returns with the sweep complete.

The study keeps the sweep's specification (``spec``); a command that brings another one is
refused, naming the study.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import warnings
from pathlib import Path
from typing import Any

from attnkit._util.optional import require
from attnkit.experiments.run import run_point
from attnkit.experiments.space import Range
from attnkit.experiments.spec import SweepSpec

__all__ = ["open_storage", "open_study", "storage_url", "work"]

logger = logging.getLogger(__name__)

DB_NAME = "sweep.db"


def _optuna() -> Any:
    return require("optuna", "sweep", "sweeps")


def storage_url(out: str | Path, storage: str | None) -> str:
    """``storage`` (a SQLAlchemy database URL), or a SQLite file ``sweep.db`` in ``out``.

    Args:
        out: the sweep's output directory.
        storage: a database URL, or None (or "") for the default.

    Raises:
        ValueError: ``storage`` is not a URL (has no ``://``).

    Examples:
        >>> storage_url("runs/sweep", "postgresql://user@host/db")
        'postgresql://user@host/db'
    """
    if storage:
        if "://" not in storage:
            raise ValueError(
                f"storage {storage!r} must be a database URL such as sqlite:///runs/sweep.db "
                f"or postgresql://user@host/db"
            )
        return storage
    return f"sqlite:///{(Path(out) / DB_NAME).resolve()}"


def open_storage(url: str, heartbeat: int = 5, grace: int | None = None) -> Any:
    """Optuna's RDB storage at ``url`` with a trial heartbeat every ``heartbeat`` seconds; a
    trial silent for ``grace`` seconds (default 4 heartbeats) is failed and queued again.

    Args:
        url: a SQLAlchemy database URL.
        heartbeat: seconds between a running trial's heartbeats, an int >= 1.
        grace: seconds without a heartbeat before a trial is failed, an int > ``heartbeat``.

    Raises:
        ValueError: a bad ``heartbeat`` or ``grace``.

    Examples:
        >>> storage = open_storage(storage_url("runs/sweep", None), heartbeat=5)
    """
    optuna = _optuna()
    if not isinstance(heartbeat, int) or isinstance(heartbeat, bool) or heartbeat < 1:
        raise ValueError(f"heartbeat must be an int >= 1 (seconds), got {heartbeat!r}")
    grace = 4 * heartbeat if grace is None else grace
    if not isinstance(grace, int) or grace <= heartbeat:
        raise ValueError(f"grace must be an int > heartbeat={heartbeat} (seconds), got {grace!r}")
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):  # writers wait for the file lock rather than fail
        kwargs["connect_args"] = {"timeout": 120}
    with warnings.catch_warnings():  # Optuna marks its heartbeat experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(
            url,
            engine_kwargs=kwargs,
            heartbeat_interval=heartbeat,
            grace_period=grace,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(),
        )


def _spec_attrs(spec: SweepSpec) -> str:
    return json.dumps(spec.record(), sort_keys=True)


def _enqueue_all(study: Any, spec: SweepSpec) -> None:
    for i, point in enumerate(spec.points):
        study.enqueue_trial(dict(point), user_attrs={"point": i}, skip_if_exists=True)
    study.set_user_attr("queued", len(spec.points))


def open_study(storage: Any, name: str, spec: SweepSpec, wait: float = 60.0) -> Any:
    """The study ``name`` in ``storage``: created with every point queued, or loaded when it
    exists. A study whose creator stopped before queueing every point is queued by this
    process after ``wait`` seconds.

    Args:
        storage: the Optuna storage (:func:`open_storage`).
        name: the study's name, non-empty.
        spec: the sweep's specification.
        wait: seconds to wait for another process that is still queueing the points.

    Raises:
        ValueError: an empty name, or a study of that name made for another specification.

    Examples:
        >>> study = open_study(storage, "sweep", spec)
    """
    optuna = _optuna()
    if not isinstance(name, str) or not name:
        raise ValueError(f"study name must be a non-empty string, got {name!r}")
    try:
        study = optuna.create_study(storage=storage, study_name=name, direction="minimize")
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(storage=storage, study_name=name)
    else:
        study.set_user_attr("spec", _spec_attrs(spec))
        _enqueue_all(study, spec)
        return study
    deadline = time.monotonic() + wait
    while "queued" not in study.user_attrs:  # its creator is still queueing the points
        if time.monotonic() > deadline:  # the creator stopped half way: finish its work
            if "spec" not in study.user_attrs:
                study.set_user_attr("spec", _spec_attrs(spec))
            _enqueue_all(study, spec)
            break
        time.sleep(0.2)
    have = study.user_attrs.get("spec")
    if have is not None and json.loads(have) != json.loads(_spec_attrs(spec)):
        raise ValueError(
            f"study {name!r} in {_where(storage)} was made for another sweep (other points, "
            f"base config or budget); expected the same arguments, or another --out or --study "
            f"(it has: {_describe(json.loads(have))})"
        )
    return study


def _where(storage: Any) -> str:
    return str(getattr(storage, "url", storage))


def _describe(record: dict[str, Any]) -> str:
    return f"{len(record['points'])} points over {record['axes']}, budget {record['budget']}"


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def work(study: Any, spec: SweepSpec, out: str | Path, poll: float = 1.0) -> int:
    """Claim and run points of ``spec`` until every one is done or failed; the number of
    points this process ran. With nothing left to claim it waits for the points others are
    running, so it returns with the sweep complete.

    Args:
        study: the sweep's study (:func:`open_study`).
        spec: the sweep's specification.
        out: the sweep's output directory.
        poll: seconds between looks at the points others are running.

    Examples:
        >>> ran = work(study, spec, "runs/sweep")
    """
    optuna = _optuna()
    states = optuna.trial.TrialState
    out = Path(out)
    ran = 0

    def objective(trial: Any) -> float:
        nonlocal ran
        index = trial.user_attrs.get("point")
        if not isinstance(index, int):  # sampled afresh: another process took the last point
            trial.set_user_attr("spare", True)
            raise optuna.TrialPruned("no queued point was left for this trial")
        for other in study.get_trials(deepcopy=False, states=(states.RUNNING, states.COMPLETE)):
            if other.user_attrs.get("point") == index and other.number < trial.number:
                trial.set_user_attr("duplicate_of", other.number)
                raise optuna.TrialPruned(f"point {index} is trial {other.number}'s")
        point = dict(spec.points[index])
        for key in point:  # the queued values, recorded as Optuna parameters
            over = spec.choices(key)
            if isinstance(over, Range) and over.integer:
                trial.suggest_int(key, int(over.low), int(over.high), log=over.log)
            elif isinstance(over, Range):
                trial.suggest_float(key, over.low, over.high, log=over.log)
            else:
                trial.suggest_categorical(key, over)
        trial.set_user_attr("worker", worker_id())
        try:
            record = run_point(spec, index, out)
        except KeyboardInterrupt:
            study.enqueue_trial(point, user_attrs={"point": index, "retry_of": trial.number})
            raise
        except Exception as e:
            trial.set_user_attr("error", f"{type(e).__name__}: {e}")
            logger.warning("attnkit: sweep point %d %s failed: %s", index, point, e)
            raise
        trial.set_user_attr("record", record)
        ran += 1
        return float(record["best_val_loss"])

    while True:
        waiting = study.get_trials(deepcopy=False, states=(states.WAITING,))
        if waiting:
            study.optimize(objective, n_trials=1, catch=(Exception,))
            continue
        with warnings.catch_warnings():  # Optuna marks its heartbeat helpers experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # a killed process's point comes back
        if study.get_trials(deepcopy=False, states=(states.WAITING,)):
            continue
        running = study.get_trials(deepcopy=False, states=(states.RUNNING,))
        if not running:
            return ran
        time.sleep(poll)  # others are running the last points
