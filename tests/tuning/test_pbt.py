"""Population-based training on tiny runs: exploit copies a run, explore perturbs, resume."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from steerl.cli import app
from steerl.config import ConfigError, load_config
from steerl.tuning.pbt import explore, run_pbt
from steerl.tuning.spec import ParamSpec, PBTConfig
from steerl.tuning.study import prepare

SPACE = (
    "tune.space={optim.lr: {type: float, low: 1.0e-5, high: 1.0e-2, log: true},"
    " loss.preset: {type: categorical, choices: [grpo, dapo]}}"
)


def test_explore_perturbs_by_the_factors_or_resamples_within_bounds():
    import random

    space = {
        "optim.lr": ParamSpec(type="float", low=1e-5, high=1e-2, log=True),
        "rollout.group_size": ParamSpec(type="int", low=2, high=16),
        "loss.preset": ParamSpec(type="categorical", choices=["grpo", "dapo"]),
    }
    parent = {"optim.lr": 1e-3, "rollout.group_size": 10, "loss.preset": "dapo"}
    rng = random.Random(0)
    no_resample = PBTConfig(perturb=[0.8, 1.2], resample_probability=0.0)
    for _ in range(20):
        child = explore(parent, space, rng, no_resample)
        assert child["optim.lr"] == pytest.approx(8e-4) or child["optim.lr"] == pytest.approx(
            1.2e-3
        )
        assert child["rollout.group_size"] in (8, 12) and child["loss.preset"] == "dapo"
    always = PBTConfig(resample_probability=1.0)
    lrs = {explore(parent, space, rng, always)["optim.lr"] for _ in range(20)}
    assert len(lrs) == 20 and all(1e-5 <= v <= 1e-2 for v in lrs)
    # clipped at the bounds
    edge = explore(
        {**parent, "optim.lr": 1e-2},
        space,
        random.Random(1),
        PBTConfig(perturb=[1.2], resample_probability=0.0),
    )
    assert edge["optim.lr"] == pytest.approx(1e-2)


def test_pbt_exploits_the_top_member_explores_and_resumes(tmp_path, tiny_overrides):
    ov = [
        *tiny_overrides,
        SPACE,
        "tune.method=pbt",
        "tune.seed=3",
        "tune.pbt={population: 2, rounds: 2, steps_per_round: 2, quantile: 0.5,"
        " resample_probability: 0.0}",
        "tune.objectives=[{metric: train/reward}]",
    ]
    ctx = prepare("default", ov, out_dir=str(tmp_path))
    lines: list[str] = []
    state = run_pbt(ctx, on_round=lines.append)
    lineage = state["lineage"]
    assert [(e["round"], e["member"]) for e in lineage] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    r0 = {e["member"]: e for e in lineage if e["round"] == 0}
    top = max(r0, key=lambda m: r0[m]["score"])
    low = 1 - top
    child = next(e for e in lineage if e["round"] == 1 and e["member"] == low)
    assert child["parent"] == top and f"m{low} <- m{top}" in lines[0]
    ratio = child["params"]["optim.lr"] / r0[top]["params"]["optim.lr"]
    assert ratio == pytest.approx(0.8) or ratio == pytest.approx(1.2)
    assert child["params"]["loss.preset"] == r0[top]["params"]["loss.preset"]
    # the copy carried the top member's training on: both end at 4 RL steps, and the
    # copied member's config holds its own (explored) learning rate
    run = tmp_path / "members" / f"m{low}"
    assert json.loads((run / "summary.json").read_text())["rl_steps"] == 4
    assert load_config(run / "config.yaml").optim.lr == pytest.approx(child["params"]["optim.lr"])
    assert (tmp_path / "lineage.png").stat().st_size > 1000
    saved = json.loads((tmp_path / "pbt.json").read_text())
    assert saved["round"] == 2 and saved["best"]["member"] in (0, 1)
    # re-running a finished population trains nothing more
    again = run_pbt(prepare("default", ov, out_dir=str(tmp_path)))
    assert len(again["lineage"]) == 4


def test_pbt_needs_a_single_objective(tmp_path, tiny_overrides):
    ov = [
        *tiny_overrides,
        SPACE,
        "tune.method=pbt",
        "tune.objectives=[{metric: train/reward}, {metric: eval/mean_length}]",
    ]
    with pytest.raises(ConfigError, match="ranks members on one metric"):
        run_pbt(prepare("default", ov, out_dir=str(tmp_path)))


def test_cli_runs_pbt(tmp_path, tiny_overrides):
    res = CliRunner().invoke(
        app,
        [
            "tune",
            "default",
            *tiny_overrides,
            SPACE,
            "tune.method=pbt",
            "tune.pbt={population: 2, rounds: 1, steps_per_round: 1}",
            "--out",
            str(tmp_path),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "round 0:" in res.output and (tmp_path / "pbt.json").is_file()
