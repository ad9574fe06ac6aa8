from __future__ import annotations

import json
from pathlib import Path

from steerl.report import build_report


def _write_metrics(run_dir: Path, records: list[dict]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    with (run_dir / "metrics.jsonl").open("w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def _full_run(run_dir: Path) -> None:
    recs: list[dict] = []
    for s in range(5):
        recs.append({"step": s, "phase": "warmup", "warmup/loss": 2.0 - 0.3 * s})
    for s in range(5, 15):
        recs.append(
            {
                "step": s,
                "phase": "rl",
                "train/reward": 0.05 * s,
                "train/reward/exact_match": 0.05 * s,
                "train/reward/format": 1.0,
                "train/loss": 0.1,
                "train/kl": 0.001 * s,
                "train/entropy": 1.0,
                "train/lr": 1e-4,
                "train/grad_norm": None,  # a non-finite value written as null
                "train/accuracy": 0.05 * s,
            }
        )
        if s % 5 == 0:
            recs.append({"step": s, **{f"eval/accuracy/level_{k}": 0.1 * k for k in (1, 2, 10)}})
    _write_metrics(run_dir, recs)


def test_build_report_full(tmp_path: Path) -> None:
    run = tmp_path / "default-20250101"
    _full_run(run)
    (run / "summary.json").write_text(
        json.dumps(
            {
                "recipe": "default",
                "wall_seconds": 120.5,
                "steps": 40,
                "warmup": {"1": 1.0, "2": 0.31, "3": 0.0},
                "final": {"1": 1.0, "2": 0.97, "3": 0.0},
            }
        )
    )
    (run / "config.yaml").write_text("recipe: default\nnote: <b>&\n")
    out = build_report(run)
    assert out == run / "report.html"
    for png in ("reward.png", "accuracy.png", "kl.png", "loss.png"):
        assert (run / png).stat().st_size > 0, png
        assert f'src="{png}"' in out.read_text()
    page = out.read_text()
    assert "default-20250101" in page
    assert "120.5" in page and ">40<" in page
    # per-level table: warm-up, final and the change side by side
    assert "<td>2</td><td>0.310</td><td>0.970</td><td>+0.660</td>" in page
    assert "<td>3</td><td>0.000</td><td>0.000</td><td>+0.000</td>" in page
    assert "&lt;b&gt;&amp;" in page  # config is escaped inside <pre>
    assert "<script" not in page


def test_build_report_without_eval_keys(tmp_path: Path) -> None:
    _write_metrics(
        tmp_path,
        [{"step": s, "phase": "rl", "train/reward": 0.1 * s, "train/loss": 1.0} for s in range(4)],
    )
    out = build_report(tmp_path)
    assert out.is_file()
    assert (tmp_path / "reward.png").is_file() and (tmp_path / "loss.png").is_file()
    assert not (tmp_path / "accuracy.png").exists()
    assert not (tmp_path / "kl.png").exists()
    assert "accuracy.png" not in out.read_text()


def test_build_report_empty_run_dir(tmp_path: Path) -> None:
    out = build_report(tmp_path)
    assert "no metrics.jsonl" in out.read_text()
    assert not list(tmp_path.glob("*.png"))


def test_build_report_partial_summary(tmp_path: Path) -> None:
    _write_metrics(tmp_path, [{"step": 0, "train/reward": 0.5}])
    (tmp_path / "summary.json").write_text(json.dumps({"final": {"1": 0.5}}))
    page = build_report(tmp_path).read_text()
    assert "<td>1</td><td>–</td><td>0.500</td><td>–</td>" in page
