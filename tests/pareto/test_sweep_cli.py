"""``steerl pareto sweep`` / ``soup``: files, front flags, resumability, bad input, soups."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_RUN
from typer.testing import CliRunner

from steerl.cli import app
from steerl.config import ConfigError, load_config
from steerl.pareto import non_dominated
from steerl.pareto.sweep import angles, parse_weights, ray_cosines, summarise, write_ray_to_runs

# a 2-reward sweep of the tiny model: warm-up off, so greedy completions are non-empty
SWEEP = [*TINY_RUN, "warmup.steps=0", "train.steps=2"]


def _runner() -> CliRunner:
    try:  # click < 8.2 mixes stderr into output unless told otherwise
        return CliRunner(mix_stderr=False)  # type: ignore[call-arg]
    except TypeError:
        return CliRunner()


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("sweep")
    args = ["pareto", "sweep", "pareto_demo", *SWEEP, "--weights", "simplex:1"]
    res = _runner().invoke(app, [*args, "--jobs", "2", "--out", str(out)])
    assert res.exit_code == 0, res.output + str(res.exception)
    return out, res.output


def test_sweep_writes_front_files(swept):
    out, output = swept
    data = json.loads((out / "pareto.json").read_text())
    assert data["objectives"] == ["exact_match", "length_penalty"]
    pts = data["points"]
    assert [p["preference"] for p in pts] == [[1.0, 0.0], [0.0, 1.0]]
    vec = np.array([[p["objectives"][n] for n in data["objectives"]] for p in pts])
    assert [p["on_front"] for p in pts] == non_dominated(vec).tolist()
    assert data["hypervolume"] >= 0 and len(data["ref"]) == 2
    for i, p in enumerate(pts):
        run = Path(p["run_dir"])
        assert run == out / "runs" / f"p{i}"
        assert json.loads((run / "summary.json").read_text())["completed"]
        assert load_config(run / "config.yaml").objectives.preference == p["preference"]
    rows = list(csv.DictReader((out / "pareto.csv").open()))
    assert [int(r["on_front"]) for r in rows] == [int(p["on_front"]) for p in pts]
    assert "angle_deg" in rows[0] and "pref_length_penalty" in rows[0]
    assert (out / "front.png").read_bytes()[:4] == b"\x89PNG"
    assert "p0 (trained)" in output and "p1 (trained)" in output


def test_sweep_is_resumable(swept):
    out, _ = swept
    ckpts = sorted((out / "runs" / "p0" / "checkpoints").iterdir())
    mtimes = [c.stat().st_mtime_ns for c in ckpts]
    args = ["pareto", "sweep", "pareto_demo", *SWEEP, "--weights", "simplex:1"]
    res = _runner().invoke(app, [*args, "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "p0 (reused)" in res.output and "p1 (reused)" in res.output
    assert [c.stat().st_mtime_ns for c in ckpts] == mtimes
    assert (out / "runs" / "p0.log").read_text().count("--train") == 1


@pytest.mark.parametrize("spec", ["simplex:0", "grid:3", "simplex:x", ""])
def test_bad_weights_spec_exits_2(tmp_path, spec):
    res = _runner().invoke(
        app, ["pareto", "sweep", "pareto_demo", "--weights", spec, "--out", str(tmp_path)]
    )
    assert res.exit_code == 2
    assert "simplex:N" in res.stderr
    assert not (tmp_path / "runs").exists()


def test_parse_weights():
    assert parse_weights("simplex:4") == 4


def test_wrong_preference_length_is_a_config_error():
    with pytest.raises(ConfigError, match="preference has 3 entries for 2 rewards"):
        load_config("pareto_demo", ["objectives.preference=[0.2,0.3,0.5]"])


def test_angles_are_zero_on_the_targeted_ray():
    pts = np.array([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]])
    prefs = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    assert angles(pts, prefs, non_dominated(pts)) == [0.0, 0.0, 0.0]


def test_ray_cosine_off_the_ray():
    pts = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    prefs = np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    mask = np.array([True, True, False])  # normalise by the first two: [0, 1] each
    cos = ray_cosines(pts, prefs, mask)
    assert cos[0] == pytest.approx(0.0) and cos[1] == pytest.approx(0.0)
    assert cos[2] == pytest.approx(2**-0.5)
    assert angles(pts, prefs, mask) == [90.0, 90.0, 45.0]


def test_ray_closeness_reaches_pareto_json_and_run_summaries(tmp_path):
    rows = []
    for i, (pref, obj) in enumerate([([1.0, 0.0], (1.0, 0.0)), ([0.5, 0.5], (0.2, 0.9))]):
        run = tmp_path / f"p{i}"
        run.mkdir()
        (run / "summary.json").write_text(json.dumps({"completed": True}))
        rows.append(
            {"preference": pref, "objectives": {"a": obj[0], "b": obj[1]}, "run_dir": str(run)}
        )
    result = summarise(["a", "b"], rows, None)
    assert result["ray"]["front_min"] == [0.2, 0.0] and result["ray"]["front_max"] == [1.0, 0.9]
    assert rows[0]["ray_cosine"] == pytest.approx(1.0)
    assert rows[1]["ray_cosine"] == pytest.approx(2**-0.5)  # normalised (0, 1) vs (0.5, 0.5)
    assert result["ray"]["max_angle_deg"] == pytest.approx(45.0)
    write_ray_to_runs(result)
    summary = json.loads((tmp_path / "p1" / "summary.json").read_text())
    assert summary["completed"] and summary["pareto/ray_angle_deg"] == pytest.approx(45.0)
    assert summary["pareto/ray_cosine"] == rows[1]["ray_cosine"]
    assert summary["pareto/preference"] == [0.5, 0.5]


def test_sweep_writes_ray_closeness_into_each_run(swept):
    out, _ = swept
    data = json.loads((out / "pareto.json").read_text())
    assert set(data["ray"]) >= {"mean_angle_deg", "max_angle_deg", "front_min", "front_max"}
    for p in data["points"]:
        summary = json.loads((Path(p["run_dir"]) / "summary.json").read_text())
        assert summary["pareto/ray_cosine"] == p["ray_cosine"]
        assert summary["pareto/ray_angle_deg"] == p["angle_deg"]
    rows = list(csv.DictReader((out / "pareto.csv").open()))
    assert "ray_cosine" in rows[0]


def test_soup_endpoints_reproduce_the_checkpoints(swept, tmp_path):
    out, _ = swept
    runs = [out / "runs" / "p0", out / "runs" / "p1"]
    sets = [x for o in SWEEP for x in ("--set", o)]
    res = _runner().invoke(
        app,
        ["pareto", "soup", *map(str, runs), "--steps", "2", "--recipe", "pareto_demo", *sets]
        + ["--out", str(tmp_path)],
    )
    assert res.exit_code == 0, res.output + str(res.exception)
    soup = json.loads((tmp_path / "soup.json").read_text())
    assert [p["preference"] for p in soup["points"]] == [[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]]
    own = [json.loads((r / "objectives.json").read_text())["objectives"] for r in runs]
    assert soup["points"][0]["objectives"] == own[0]
    assert soup["points"][-1]["objectives"] == own[1]
    assert (tmp_path / "soup.csv").is_file() and (tmp_path / "front.png").is_file()


#: LoRA on the tiny Llama's attention projections (see tests/test_lora.py).
LORA = ["model.lora.enabled=true", "model.lora.target_modules=[q_proj,k_proj,v_proj,o_proj]"]


@pytest.fixture(scope="module")
def lora_runs(tmp_path_factory) -> list[Path]:
    """Two LoRA runs of one base (the tiny model of one seed), one per reward, evaluated as
    the sweep evaluates its points (objectives.json)."""
    pytest.importorskip("peft")
    from steerl.pareto.evaluate import train_and_evaluate

    out = tmp_path_factory.mktemp("lora_runs")
    runs = []
    for i, pref in enumerate(("[1.0,0.0]", "[0.0,1.0]")):
        run = out / f"p{i}"
        args = ["pareto_demo", *SWEEP, *LORA, f"objectives.preference={pref}", "optim.lr=0.01"]
        assert train_and_evaluate(run, args) is not None
        runs.append(run)
    return runs


def test_lora_soup_endpoints_reproduce_the_checkpoints(lora_runs, tmp_path):
    sets = [x for o in (*SWEEP, *LORA) for x in ("--set", o)]
    res = _runner().invoke(
        app,
        ["pareto", "soup", *map(str, lora_runs), "--steps", "2", "--recipe", "pareto_demo"]
        + [*sets, "--out", str(tmp_path)],
    )
    assert res.exit_code == 0, res.output + str(res.exception)
    soup = json.loads((tmp_path / "soup.json").read_text())
    assert [p["preference"] for p in soup["points"]] == [[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]]
    own = [json.loads((r / "objectives.json").read_text())["objectives"] for r in lora_runs]
    assert soup["points"][0]["objectives"] == own[0]
    assert soup["points"][-1]["objectives"] == own[1]
    # the two adapters differ, so the endpoints are not one model scored twice
    from steerl.checkpoint import latest_checkpoint
    from steerl.pareto.soups import load_checkpoint

    a, b = (load_checkpoint(latest_checkpoint(r))[0] for r in lora_runs)
    assert any(not torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "recipe_sets, needle",
    [
        ([], "model.lora.enabled=false"),  # the evaluator has no adapters
        ([*LORA, "model.lora.r=4"], "r: 8 in the adapters vs 4 in the recipe"),
    ],
)
def test_lora_soup_with_another_lora_setup_exits_2(lora_runs, tmp_path, recipe_sets, needle):
    sets = [x for o in (*SWEEP, *recipe_sets) for x in ("--set", o)]
    res = _runner().invoke(
        app,
        ["pareto", "soup", *map(str, lora_runs), "--recipe", "pareto_demo", *sets]
        + ["--out", str(tmp_path / "o")],
    )
    assert res.exit_code == 2, res.output
    assert needle in res.stderr
    assert not (tmp_path / "o" / "soup.json").exists()


def test_soup_of_adapters_and_full_weights_exits_2(lora_runs, swept, tmp_path):
    full = swept[0] / "runs" / "p0"
    res = _runner().invoke(
        app,
        ["pareto", "soup", str(lora_runs[0]), str(full), "--recipe", "pareto_demo"]
        + ["--out", str(tmp_path / "o")],
    )
    assert res.exit_code == 2
    assert "cannot soup LoRA adapters" in res.stderr
    assert not (tmp_path / "o").exists()


def test_soup_of_different_base_models_exits_2(tmp_path):
    from safetensors.torch import save_file

    paths = []
    for name, width in (("a", 4), ("b", 8)):
        d = tmp_path / name
        d.mkdir()
        save_file({"w": torch.zeros(width, 2)}, str(d / "model.safetensors"))
        (d / "config.json").write_text(json.dumps({"hidden_size": width}))
        paths.append(str(d))
    res = _runner().invoke(
        app, ["pareto", "soup", *paths, "--recipe", "pareto_demo", "--out", str(tmp_path / "o")]
    )
    assert res.exit_code == 2
    assert paths[0] in res.stderr and paths[1] in res.stderr
    assert not (tmp_path / "o").exists()


def test_sweep_on_a_shared_study_runs_each_point_once(swept, tmp_path):
    import optuna

    out, _ = swept
    url = f"sqlite:///{tmp_path / 'sweep.db'}"
    args = ["pareto", "sweep", "pareto_demo", *SWEEP, "--weights", "simplex:1"]
    shared = tmp_path / "shared"
    res = _runner().invoke(app, [*args, "--jobs", "2", "--out", str(shared), "--storage", url])
    assert res.exit_code == 0, res.output + str(res.exception)
    study = optuna.load_study(study_name="sweep-pareto_demo", storage=url)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert sorted(t.params["point"] for t in done) == [0, 1]  # each point once
    assert all(t.state.name == "COMPLETE" or t.user_attrs.get("surplus") for t in study.trials)
    # the same front as the plain sweep (training is deterministic on the CPU)
    plain = json.loads((out / "pareto.json").read_text())
    got = json.loads((shared / "pareto.json").read_text())
    assert [p["objectives"] for p in got["points"]] == [p["objectives"] for p in plain["points"]]
    assert [t.values for t in sorted(done, key=lambda t: t.params["point"])] == [
        list(p["objectives"].values()) for p in got["points"]
    ]
    # re-running trains nothing; another sweep under the same study name is refused
    again = _runner().invoke(app, [*args, "--out", str(shared), "--storage", url])
    assert again.exit_code == 0 and len(
        optuna.load_study(study_name="sweep-pareto_demo", storage=url).trials
    ) == len(study.trials)
    other = _runner().invoke(app, [*args, "train.steps=3", "--out", str(shared), "--storage", url])
    assert other.exit_code == 2 and "holds a different sweep" in other.output
