from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from steerl.cli import app
from steerl.config import load_config

TINY = [
    "warmup.steps=2",
    "train.steps=2",
    "rollout.prompts_per_step=4",
    "rollout.group_size=4",
    "task.arithmetic.train_per_level=50",
    "task.arithmetic.eval_per_level=10",
    "logging.tensorboard=false",
    "logging.report=false",
    "logging.progress=false",
]


def _runner() -> CliRunner:
    try:  # click < 8.2 mixes stderr into output unless told otherwise
        return CliRunner(mix_stderr=False)  # type: ignore[call-arg]
    except TypeError:
        return CliRunner()


def invoke(*args: str):
    return _runner().invoke(app, [str(a) for a in args])


def assert_user_error(result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ")
    assert "Traceback" not in result.output and "Traceback" not in result.stderr
    for needle in needles:
        assert needle in result.stderr


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    result = invoke("train", *TINY, f"train.out_dir={run_dir}")
    assert result.exit_code == 0, result.output
    return run_dir, result


# --------------------------------------------------------------------------- listings
def test_recipes_lists_default() -> None:
    result = invoke("recipes")
    assert result.exit_code == 0
    assert "default" in result.stdout


def test_list_rewards() -> None:
    for kind in ("rewards", "reward"):
        result = invoke("list", kind)
        assert result.exit_code == 0, result.output
        assert "exact_match" in result.stdout and "format" in result.stdout


def test_list_losses() -> None:
    result = invoke("list", "losses")
    assert result.exit_code == 0, result.output
    assert "grpo" in result.stdout


def test_list_unknown_kind() -> None:
    assert_user_error(invoke("list", "bogus"), "bogus", "reward", "loss", "curriculum")


# --------------------------------------------------------------------------- train / eval
def test_train_tiny(finished_run) -> None:
    run_dir, result = finished_run
    out = result.stdout
    for text in ("level", "after warm-up", "after RL", "change (points)", "run directory"):
        assert text in out
    assert str(run_dir) in out.replace("\n", "")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert {"recipe", "wall_seconds", "steps", "warmup", "final"} <= set(summary)
    assert summary["steps"] == 4 and summary["recipe"] == "default"
    assert set(summary["final"]) == {"1", "2", "3"}
    cfg = load_config(run_dir / "config.yaml")
    assert cfg.train.steps == 2 and cfg.rollout.group_size == 4


def test_eval_run_dir(finished_run) -> None:
    run_dir, _ = finished_run
    result = invoke("eval", run_dir)
    assert result.exit_code == 0, result.output
    assert "level" in result.stdout and "step_4" in result.stdout
    data = json.loads((run_dir / "eval.json").read_text())
    assert data["step"] == 4 and set(data["accuracy"]) == {"1", "2", "3"}
    summary = json.loads((run_dir / "summary.json").read_text())
    assert data["accuracy"] == summary["final"]  # greedy eval of the final weights


def test_eval_missing_checkpoint(finished_run) -> None:
    run_dir, _ = finished_run
    assert_user_error(invoke("eval", run_dir, "--checkpoint", "step_99"), "step_99")


def test_resume_finished_run_does_not_retrain(finished_run) -> None:
    run_dir, _ = finished_run
    before = json.loads((run_dir / "summary.json").read_text())
    result = invoke("train", run_dir)
    assert result.exit_code == 0, result.output
    assert "run directory" in result.stdout
    after = json.loads((run_dir / "summary.json").read_text())
    assert after["steps"] == before["steps"] == 4
    assert after["final"] == before["final"]


def test_report(finished_run) -> None:
    run_dir, _ = finished_run
    result = invoke("report", run_dir)
    assert result.exit_code == 0, result.output
    assert (run_dir / "report.html").is_file()


# --------------------------------------------------------------------------- user errors
def test_bad_key_exits_2(tmp_path: Path) -> None:
    result = invoke("train", "rollout.bogus=1", f"train.out_dir={tmp_path / 'run'}")
    assert_user_error(result, "rollout.bogus", "group_size")


def test_first_positional_override_uses_default_recipe(tmp_path: Path) -> None:
    # a bad value in the first position proves it was read as an override, not a recipe
    result = invoke("train", "rollout.group_size=abc")
    assert_user_error(result, "rollout.group_size", "abc")


def test_unknown_reward_exits_2(tmp_path: Path) -> None:
    result = invoke("train", *TINY, "rewards.0.name=nope", f"train.out_dir={tmp_path / 'run'}")
    assert_user_error(result, "nope", "exact_match")


def test_missing_model_exits_2(tmp_path: Path) -> None:
    result = invoke(
        "train", *TINY, "model.name=/nonexistent/path", f"train.out_dir={tmp_path / 'run'}"
    )
    assert_user_error(result, "/nonexistent/path", "model.name")


def test_unimportable_reward_exits_2(tmp_path: Path) -> None:
    result = invoke(
        "train",
        *TINY,
        "rewards.0.name=no_such_module_xyz.rewards:score",
        f"train.out_dir={tmp_path / 'run'}",
    )
    assert_user_error(result, "no_such_module_xyz")


def test_missing_recipe_exits_2(tmp_path: Path) -> None:
    assert_user_error(invoke("train", tmp_path / "nope.yaml"), "nope.yaml", "default")


def test_eval_not_a_run_dir(tmp_path: Path) -> None:
    assert_user_error(invoke("eval", tmp_path), "config.yaml")


# --------------------------------------------------------------------------- entry points
def test_console_script_smoke() -> None:
    exe = shutil.which("steerl")
    if exe is None:
        pytest.skip("steerl console script not on PATH")
    proc = subprocess.run([exe, "recipes"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "default" in proc.stdout
    proc = subprocess.run(
        [sys.executable, "-m", "steerl", "list", "bogus"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stderr.startswith("error: ")


@pytest.mark.parametrize(
    "module", ["steerl.tuning.cli", "steerl.curriculum.cli", "steerl.pareto.cli"]
)
def test_each_sub_app_imports_first_without_a_cycle(module):
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.parametrize("module", ["steerl.curriculum.cli", "steerl.pareto.cli"])
def test_sub_app_help_does_not_import_transformers(module):
    """`steerl curriculum --help` took 5.4 s when its package pulled in transformers."""
    import subprocess
    import sys

    code = f"import sys, {module}; print('transformers' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "False"
