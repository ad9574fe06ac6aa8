"""``steerl curriculum profile``: difficulty per prompt from a policy, resumable."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from steerl.cli import app
from steerl.logging import read_metrics

SMALL = [
    "model.tiny.hidden_size=32",
    "model.tiny.num_layers=2",
    "model.tiny.num_heads=2",
    "model.tiny.intermediate_size=64",
    "model.device=cpu",
    "train.threads=1",
    "task.arithmetic.train_per_level=8",
    "task.arithmetic.eval_per_level=4",
    "logging.tensorboard=false",
    "logging.report=false",
    "logging.progress=false",
]


def invoke(*args):
    try:
        runner = CliRunner(mix_stderr=False)  # type: ignore[call-arg]
    except TypeError:
        runner = CliRunner()
    return runner.invoke(app, [str(a) for a in args])


def rows(path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_profile_writes_resumes_and_feeds_a_pacing_run(tmp_path):
    out = tmp_path / "difficulty.jsonl"
    # a run whose checkpoint profiles the prompts
    run = tmp_path / "run"
    res = invoke("train", *SMALL, "warmup.steps=2", "train.steps=0", f"train.out_dir={run}")
    assert res.exit_code == 0, res.output

    res = invoke("curriculum", "profile", "--run", run, "--k", 3, "--out", out, "--limit", 10, "-q")
    assert res.exit_code == 0, res.output
    first = rows(out)
    assert len(first) == 10 and "profiled 10 prompts" in res.stdout
    for r in first:
        assert r["k"] == 3 and 0 <= r["pass_rate"] <= 1
        assert abs(r["difficulty"] - (1 - r["pass_rate"])) < 1e-9
        assert abs(r["pass_rate"] * 3 - round(r["pass_rate"] * 3)) < 1e-6  # exact match: 0/1

    # resumable: the ids already there are skipped, the rest appended
    res = invoke("curriculum", "profile", "--run", run, "--k", 3, "--out", out, "-q")
    assert res.exit_code == 0, res.output
    assert "(10 already in the file" in res.stdout
    ids = [r["id"] for r in rows(out)]
    assert len(ids) == len(set(ids)) == 24 and ids[:10] == [r["id"] for r in first]

    # the file drives a progressive curriculum
    res = invoke(
        "train",
        *SMALL,
        "warmup.steps=0",
        "train.steps=2",
        "rollout.prompts_per_step=4",
        "rollout.group_size=2",
        "curriculum.name=pacing",
        f"curriculum.difficulty_file={out}",
        f"train.out_dir={tmp_path / 'paced'}",
    )
    assert res.exit_code == 0, res.output
    rl = [r for r in read_metrics(tmp_path / "paced") if r.get("phase") == "rl"]
    assert rl[0]["curriculum/open_fraction"] < 1


def test_profile_of_a_recipe_and_user_errors(tmp_path):
    out = tmp_path / "d.jsonl"
    args = ("curriculum", "profile", "default", *SMALL, "--k", 2, "--out", out, "--limit", 3)
    # the built-in tiny model without --run is a random network: refused unless asked for
    res = invoke(*args)
    assert res.exit_code == 2 and not out.exists()
    assert "randomly initialised" in res.stderr and "--allow-untrained" in res.stderr
    assert "--run" in res.stderr
    res = invoke(*args, "--allow-untrained")
    assert res.exit_code == 0, res.output
    assert len(rows(out)) == 3 and "curriculum.difficulty_file=" in res.stdout
    res = invoke("curriculum", "profile", "--run", tmp_path, "--out", out)
    assert res.exit_code == 2 and "not a run directory" in res.stderr
    res = invoke("curriculum", "profile", "default", "curriculum.pacing.fn=cubic", "--out", out)
    assert res.exit_code == 2 and "curriculum.pacing.fn" in res.stderr
    assert invoke("curriculum", "profile", "default").exit_code != 0  # --out is required


def test_profile_warns_when_a_pretrained_model_skips_the_warm_up():
    from steerl.config import load_config
    from steerl.curriculum.profile import untrained_warning

    cfg = load_config("default", ["model.name=some/hub-model", "warmup.steps=100"])
    note = untrained_warning(cfg, None)
    assert note and "warmup.steps=100" in note and "--run" in note
    assert untrained_warning(cfg, "runs/x") is None  # a trained run
    no_sft = load_config("default", ["model.name=some/hub-model", "warmup.steps=0"])
    assert untrained_warning(no_sft, None) is None
