"""Several ``steerl tune`` worker processes on one study: SQLite here, PostgreSQL in CI.

CI (``.ci/run``) starts a real PostgreSQL server on loopback and sets
``STEERL_TEST_POSTGRES_URL``; with ``STEERL_REQUIRE_POSTGRES=1`` a missing server fails the
test instead of skipping it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import optuna
import pytest
from conftest import TINY_RUN

TRIALS = 4
ARGS = [
    *TINY_RUN,
    "train.steps=16",
    "tune.space={optim.lr: {type: float, low: 1.0e-5, high: 1.0e-2, log: true}}",
    f"tune.trials={TRIALS}",
    "tune.heartbeat_s=1",
]


def _postgres_url() -> str:
    url = os.environ.get("STEERL_TEST_POSTGRES_URL")
    if not url:
        if os.environ.get("STEERL_REQUIRE_POSTGRES") == "1":
            pytest.fail("STEERL_REQUIRE_POSTGRES=1 but STEERL_TEST_POSTGRES_URL is not set")
        pytest.skip("no PostgreSQL server (set STEERL_TEST_POSTGRES_URL; .ci/postgres.sh)")
    return url


def _worker(out, url: str, study: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "steerl", "tune", "run", "default", *ARGS]
    cmd += ["--out", str(out), "--storage", url, "--study", study]
    log = (out / f"{uuid.uuid4().hex[:6]}.log").open("w")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)


def _running(url: str, study: str) -> list[optuna.trial.FrozenTrial]:
    try:
        s = optuna.load_study(study_name=study, storage=url)
    except KeyError:  # not created yet
        return []
    return s.get_trials(states=(optuna.trial.TrialState.RUNNING,))


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_workers_share_a_study_and_survive_a_killed_worker(tmp_path, backend):
    url = f"sqlite:///{tmp_path / 'study.db'}" if backend == "sqlite" else _postgres_url()
    study = f"workers-{uuid.uuid4().hex[:8]}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # 1. a first worker starts a trial and is killed in the middle of it
    first = _worker(tmp_path, url, study)
    deadline = time.time() + 180
    while not [t for t in _running(url, study) if t.params]:  # a trial with its parameters
        assert first.poll() is None and time.time() < deadline, "the first worker never started"
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)  # the trial is training: killed mid-trial
    first.wait()
    (killed_trial,) = _running(url, study)  # the one it left RUNNING
    killed = killed_trial.number
    # 2. two workers run at the same time on the study and finish it
    workers = [_worker(tmp_path, url, study) for _ in range(2)]
    codes = [w.wait(timeout=600) for w in workers]
    logs = "\n".join(p.read_text() for p in tmp_path.glob("*.log"))
    assert codes == [0, 0], logs
    s = optuna.load_study(study_name=study, storage=url)
    trials = [t for t in s.trials if not t.user_attrs.get("surplus")]
    by_state = {st: [t for t in trials if t.state.name == st] for st in ("COMPLETE", "FAIL")}
    # every trial accounted for: the study's 4 completed, the killed one failed and retried
    assert len(by_state["COMPLETE"]) == TRIALS, logs
    assert [t.number for t in by_state["FAIL"]] == [killed]
    retried = [
        t
        for t in trials
        if optuna.storages.RetryFailedTrialCallback.retried_trial_number(t) == killed
    ]
    assert len(retried) == 1 and retried[0].state.name == "COMPLETE"
    assert retried[0].params == s.trials[killed].params
    # no duplicates: each completed trial trained once, in its own directory, to the end
    dirs = [t.user_attrs["run_dir"] for t in by_state["COMPLETE"]]
    assert len(set(dirs)) == TRIALS
    for d in dirs:
        summary = json.loads(
            (tmp_path / "trials" / os.path.basename(d) / "summary.json").read_text()
        )
        assert summary["completed"] and summary["rl_steps"] == 16
    # 3. re-running the command on the finished study adds nothing
    again = _worker(tmp_path, url, study)
    assert again.wait(timeout=300) == 0
    assert len(optuna.load_study(study_name=study, storage=url).trials) == len(s.trials)


def test_cli_workers_option_starts_worker_processes_on_the_same_study(tmp_path):
    out = tmp_path / "study"
    cmd = [sys.executable, "-m", "steerl", "tune", "default", *ARGS[:-3], "train.steps=2"]
    cmd += [ARGS[-3], "--trials", "3", "--workers", "2", "--out", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    worker_log = (out / "worker-1.log").read_text()
    assert "study 'default' in sqlite:///" in worker_log  # the second process joined the study
    assert "exited with an error" not in res.stdout
    # whoever ran them, the study holds exactly its 3 trials
    assert res.stdout.count(" complete: ") + worker_log.count(" complete: ") == 3
    s = optuna.load_study(study_name="default", storage=f"sqlite:///{(out / 'study.db').resolve()}")
    assert len([t for t in s.trials if t.state.name == "COMPLETE"]) == 3
