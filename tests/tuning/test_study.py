"""Studies on real (tiny) runs: trials, pruning, thresholds, multi-objective results, export."""

from __future__ import annotations

import csv
import json

import numpy as np
import optuna
import pytest
from typer.testing import CliRunner

from steerl.cli import app
from steerl.config import load_config
from steerl.tuning.results import export_recipe, pareto_trials, write_results
from steerl.tuning.study import TuneError, open_study, prepare, work

LR_SPACE = "tune.space={optim.lr: {type: float, low: 1.0e-5, high: 1.0e-2, log: true}}"


def _ctx(tmp_path, tiny_overrides, *extra):
    return prepare("default", [*tiny_overrides, LR_SPACE, *extra], out_dir=str(tmp_path))


def test_a_study_runs_its_trials_as_run_directories_and_writes_results(tmp_path, tiny_overrides):
    ctx = _ctx(tmp_path, tiny_overrides, "tune.trials=3", "tune.seed=0")
    assert ctx.storage == f"sqlite:///{(tmp_path / 'study.db').resolve()}"
    study = work(ctx)
    assert (tmp_path / "study.db").is_file()
    done = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(done) == 3
    for t in done:
        run = tmp_path / "trials" / f"{t.number:04d}"
        assert t.user_attrs["run_dir"] == str(run.resolve())
        summary = json.loads((run / "summary.json").read_text())
        assert summary["completed"] and summary["rl_steps"] == 4
        # the trial's learning rate reached the run's config
        assert load_config(run / "config.yaml").optim.lr == pytest.approx(t.params["optim.lr"])
        levels = summary["final"]
        assert t.values[0] == pytest.approx(sum(levels.values()) / len(levels))
    summary = write_results(study, tmp_path)
    best = max(done, key=lambda t: t.values[0])
    assert summary["best"]["trial"] == best.number
    rows = list(csv.DictReader((tmp_path / "trials.csv").open()))
    assert [int(r["trial"]) for r in rows] == [0, 1, 2]
    assert (tmp_path / "history.png").stat().st_size > 1000
    # a second invocation resumes the study (load_if_exists) and adds nothing: it is complete
    again = work(_ctx(tmp_path, tiny_overrides, "tune.trials=3", "tune.seed=0"))
    assert len(again.trials) == 3
    # ... and asking for more trials continues it, without replaying the seed's proposals
    more = work(_ctx(tmp_path, tiny_overrides, "tune.trials=4", "tune.seed=0"))
    assert len(more.trials) == 4
    lrs = [t.params["optim.lr"] for t in more.trials]
    assert len(set(lrs)) == 4


def test_a_seeded_study_is_reproducible(tmp_path, tiny_overrides):
    a = work(_ctx(tmp_path / "a", tiny_overrides, "tune.trials=2", "tune.seed=5"))
    b = work(_ctx(tmp_path / "b", tiny_overrides, "tune.trials=2", "tune.seed=5"))
    assert [t.params for t in a.trials] == [t.params for t in b.trials]


def test_a_study_refuses_a_different_recipe_under_the_same_name(tmp_path, tiny_overrides):
    work(_ctx(tmp_path, tiny_overrides, "tune.trials=1"))
    with pytest.raises(TuneError, match="different recipe"):
        open_study(_ctx(tmp_path, tiny_overrides, "tune.trials=1", "rollout.temperature=0.5"))


def test_the_pruner_stops_a_trial_that_reports_worse_values(tmp_path, tiny_overrides):
    # the reported metric is the learning rate itself, so which trial is worse is known
    ctx = _ctx(
        tmp_path,
        tiny_overrides,
        "tune.trials=2",
        "train.steps=6",
        "tune.objectives=[{metric: train/lr, direction: maximize}]",
        "tune.pruner_options={n_startup_trials: 1, n_warmup_steps: 2}",
    )
    study = open_study(ctx)
    study.enqueue_trial({"optim.lr": 1e-3})
    study.enqueue_trial({"optim.lr": 1e-5})
    work(ctx)
    first, second = study.trials
    assert first.state.name == "COMPLETE" and first.values[0] == pytest.approx(1e-3)
    assert second.state.name == "PRUNED"
    assert second.user_attrs["stopped_by"] == "pruner at step 2"
    summary = (
        json.loads((tmp_path / "trials" / "0001" / "summary.json").read_text())
        if (tmp_path / "trials" / "0001" / "summary.json").is_file()
        else None
    )
    assert summary is None  # the run never finished
    steps = [
        json.loads(line).get("train/lr")
        for line in (tmp_path / "trials" / "0001" / "metrics.jsonl").read_text().splitlines()
    ]
    assert len([s for s in steps if s is not None]) == 2  # stopped after 2 of 6 RL steps


def test_a_threshold_stops_trials_in_a_multi_objective_study(tmp_path, tiny_overrides):
    ctx = _ctx(
        tmp_path,
        tiny_overrides,
        "tune.trials=1",
        "train.steps=6",
        "train.eval_every=2",
        "tune.objectives=[{metric: eval/accuracy/mean}, {metric: eval/mean_length,"
        " direction: minimize}]",
        "tune.threshold={metric: eval/accuracy/level_1, min: 2.0, after_step: 4}",
    )
    study = work(ctx)
    (t,) = study.trials
    assert t.state.name == "PRUNED"
    assert t.user_attrs["stopped_by"].startswith("threshold: eval/accuracy/level_1=")
    assert "at step 4" in t.user_attrs["stopped_by"]


def test_multi_objective_pareto_set_matches_a_brute_force_filter(tmp_path, tiny_overrides):
    ctx = _ctx(
        tmp_path,
        tiny_overrides,
        "tune.trials=6",
        "tune.sampler=nsga2",
        "tune.seed=1",
        "tune.objectives=[{metric: train/reward}, {metric: eval/mean_length, direction: minimize}]",
    )
    study = work(ctx)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(done) == 6 and all(
        set(t.user_attrs["metrics"]) >= {"eval/mean_length"} for t in done
    )

    def dominated(a, b):  # b dominates a: reward max, length min
        return b[0] >= a[0] and b[1] <= a[1] and (b[0] > a[0] or b[1] < a[1])

    brute = {a.number for a in done if not any(dominated(a.values, b.values) for b in done)}
    front, _ = pareto_trials(study)
    assert {t.number for t in front} == brute == {t.number for t in study.best_trials}
    summary = write_results(study, tmp_path)
    assert {p["trial"] for p in summary["pareto"]} == brute
    assert summary["hypervolume"] >= 0.0 and summary["knee"] in brute
    assert (tmp_path / "front.png").is_file() and (tmp_path / "pareto.csv").is_file()


def test_constraints_mark_trials_infeasible(tmp_path, tiny_overrides):
    ctx = _ctx(
        tmp_path,
        tiny_overrides,
        "tune.trials=2",
        "tune.constraints=[{metric: train/wall_seconds, max: -1.0}]",  # nobody can meet it
    )
    study = work(ctx)
    assert all(t.user_attrs["constraints"][0] > 0 for t in study.trials)
    assert write_results(study, tmp_path)["best"] is None
    with pytest.raises(ValueError, match="no completed feasible trial"):
        export_recipe(study)


def test_cli_tune_then_export_gives_a_trainable_recipe(tmp_path, tiny_overrides):
    runner = CliRunner()
    out = tmp_path / "study"
    res = runner.invoke(
        app, ["tune", "default", *tiny_overrides, LR_SPACE, "--trials", "2", "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    assert "trial 0 complete" in res.output and "trial 1 complete" in res.output
    res = runner.invoke(app, ["tune", "export", str(out), "-o", str(tmp_path / "best.yaml")])
    assert res.exit_code == 0, res.output
    exported = load_config(tmp_path / "best.yaml")
    best = json.loads((out / "best.json").read_text())["best"]
    assert exported.optim.lr == pytest.approx(best["params"]["optim.lr"])
    assert exported.rollout.prompts_per_step == 4  # the tiny overrides are part of the recipe
    res = runner.invoke(app, ["tune", "export", str(out), "--trial", "7"])
    assert res.exit_code == 2 and "trial 7 is not a completed trial" in res.output
    res = runner.invoke(app, ["tune", "report", str(out)])
    assert res.exit_code == 0 and "best trial" in res.output


def test_cli_bad_space_is_a_user_error(tmp_path, tiny_overrides):
    res = CliRunner().invoke(
        app,
        [
            "tune",
            "default",
            *tiny_overrides,
            "tune.space={optim.lr: {type: float, low: 0, high: 1, log: true}}",
            "--out",
            str(tmp_path),
        ],
    )
    assert res.exit_code == 2 and "log=true needs positive bounds" in res.output
    res = CliRunner().invoke(app, ["tune", "default", *tiny_overrides, "--out", str(tmp_path)])
    assert res.exit_code == 2 and "tune.space is empty" in res.output


def test_results_of_a_study_are_json_serialisable(tmp_path, tiny_overrides):
    study = work(_ctx(tmp_path, tiny_overrides, "tune.trials=1"))
    summary = write_results(study, tmp_path)
    assert json.loads((tmp_path / "best.json").read_text()) == json.loads(json.dumps(summary))
    assert np.isfinite(summary["best"]["values"][0])
