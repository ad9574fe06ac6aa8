"""A preference sweep as trials of a shared Optuna study, so several machines share one sweep.

The first invocation creates the study (one objective per reward, all maximised) and
enqueues one trial per preference vector (its ``point`` index); every invocation, on any
machine, with the same ``--storage`` URL and study name takes queued points until none is
left, then waits for the points other workers are still training and writes the front from
every completed point. Trials send heartbeats: the point of a worker that dies is failed
after two missed beats and queued again. A sampler never proposes points here; a trial that
does not come from the queue (a race between workers) is dropped as surplus.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from typing import Any

from steerl.pareto.sweep import SweepError
from steerl.tuning.storage import StorageError, drop_surplus, rdb_storage, recording_error

HEARTBEAT_S = 30
MAX_ERRORS_PER_POINT = 2


def fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _storage(url: str, heartbeat_s: int) -> Any:
    try:
        return rdb_storage(url, heartbeat_s, max_retry=3)
    except StorageError as e:
        raise SweepError(str(e)) from None


def open_sweep_study(url: str, name: str, n_points: int, k: int, fp: str, heartbeat_s: int):
    """Create (and enqueue every point) or load the study; refuse a different sweep."""
    import optuna

    storage = _storage(url, heartbeat_s)
    try:
        study = optuna.create_study(study_name=name, storage=storage, directions=["maximize"] * k)
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage)
        deadline = time.time() + 60
        while study.user_attrs.get("steerl.sweep") is None and time.time() < deadline:
            time.sleep(0.5)  # its creator is still enqueueing
        if study.user_attrs.get("steerl.sweep") != fp:
            raise SweepError(
                f"study {name!r} in {url} holds a different sweep (recipe, overrides or "
                "weights); pass another --study name"
            ) from None
        return study
    for i in range(n_points):
        study.enqueue_trial({"point": i})
    study.set_user_attr("steerl.sweep", fp)
    return study


def _point_states(study: Any, n: int) -> tuple[set[int], set[int], dict[int, int]]:
    """(completed points, points waiting or running, error count per point)."""
    done, busy, errors = set(), set(), {}
    for t in study.get_trials(deepcopy=False):
        p = t.params.get("point", t.system_attrs.get("fixed_params", {}).get("point"))
        if p is None or t.user_attrs.get("surplus"):
            continue
        if t.state.name == "COMPLETE":
            done.add(p)
        elif t.state.name in ("WAITING", "RUNNING"):
            busy.add(p)
        elif t.state.name == "FAIL" and "error" in t.user_attrs:
            errors[p] = errors.get(p, 0) + 1
    return done, busy, errors


def run_shared(
    url: str,
    name: str,
    n_points: int,
    names: list[str],
    fp: str,
    run_one: Callable[[int], dict[str, Any]],
    heartbeat_s: int = HEARTBEAT_S,
    poll_s: float = 2.0,
) -> list[dict[str, Any]]:
    """Work on the shared sweep until every point is completed; the rows, in point order."""
    import optuna

    study = open_sweep_study(url, name, n_points, len(names), fp, heartbeat_s)

    def objective(trial: Any) -> list[float]:
        frozen = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
        if "point" not in frozen.system_attrs.get("fixed_params", {}):
            drop_surplus(trial)
        with recording_error(trial):
            i = trial.suggest_categorical("point", list(range(n_points)))
            row = run_one(i)
        trial.set_user_attr("row", row)
        return [float(row["objectives"][n]) for n in names]

    while True:
        optuna.storages.fail_stale_trials(study)
        done, busy, errors = _point_states(study, n_points)
        bad = {p: c for p, c in errors.items() if c >= MAX_ERRORS_PER_POINT and p not in done}
        if bad:
            raise SweepError(f"sweep points {sorted(bad)} failed {MAX_ERRORS_PER_POINT} times")
        if len(done) == n_points:
            break
        if len(study.get_trials(deepcopy=False)) > 20 * n_points + 100:
            raise SweepError(f"study {name!r}: too many trials for {n_points} points, giving up")
        waiting = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
        if waiting:
            study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=False)
            continue
        lost = set(range(n_points)) - done - busy
        for p in sorted(lost):  # failed by its own run: queue it again
            study.enqueue_trial({"point": p})
        if not lost:
            time.sleep(poll_s)  # others are training the remaining points
    rows: dict[int, dict[str, Any]] = {}
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        rows[t.params["point"]] = t.user_attrs["row"]
    return [rows[i] for i in range(n_points)]
