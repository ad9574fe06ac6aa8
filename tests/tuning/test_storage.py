"""The SQLite study storage hands a queued trial to one worker only."""

from __future__ import annotations

import threading

import optuna

from steerl.tuning.storage import rdb_storage


def test_a_queued_trial_goes_to_one_worker_on_sqlite(tmp_path):
    """Six workers (own storages, own connections) take the study's one queued trial at the
    same instant, twenty times: exactly one gets it each time. Optuna's read-then-set-RUNNING
    relies on SELECT ... FOR UPDATE, which SQLite ignores; without BEGIN IMMEDIATE two or more
    workers got the same trial in 17 of 30 such rounds (two CI workers once trained one trial
    into the same directory)."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(storage=rdb_storage(url, 30, 1), study_name="queue")
    for rnd in range(20):
        study.enqueue_trial({"x": rnd})
        workers = [
            optuna.load_study(study_name="queue", storage=rdb_storage(url, 30, 1)) for _ in range(6)
        ]
        got: list[int | None] = []
        start = threading.Barrier(len(workers))

        def pop(worker: optuna.Study, start=start, got=got) -> None:
            start.wait()
            got.append(worker._pop_waiting_trial_id())

        threads = [threading.Thread(target=pop, args=(w,)) for w in workers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sum(g is not None for g in got) == 1, (rnd, got)
    states = [t.state for t in study.get_trials()]
    assert states == [optuna.trial.TrialState.RUNNING] * 20
