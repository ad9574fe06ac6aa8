from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
import torch
from rich.console import Console

from steerl.config import LoggingConfig
from steerl.logging import ConsoleProgress, MetricLogger, read_metrics


def _cfg(**kw) -> LoggingConfig:
    return LoggingConfig(**{"tensorboard": False, **kw})


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_jsonl_round_trip(tmp_path: Path) -> None:
    with MetricLogger(tmp_path, _cfg()) as log:
        log.log(0, {"train/reward": 0.5, "phase": "warmup", "n": 3})
        log.log(1, {"train/loss": torch.tensor(1.25), "train/kl": torch.tensor(0.0)})
    recs = read_metrics(tmp_path / "metrics.jsonl")
    assert recs == [
        {"step": 0, "train/reward": 0.5, "phase": "warmup", "n": 3},
        {"step": 1, "train/loss": 1.25, "train/kl": 0.0},
    ]
    assert read_metrics(tmp_path) == recs  # a run directory works too


def test_lines_are_flushed_before_close(tmp_path: Path) -> None:
    log = MetricLogger(tmp_path, _cfg())
    log.log(3, {"a": 1.0})
    assert _lines(tmp_path / "metrics.jsonl") == [{"step": 3, "a": 1.0}]
    log.close()
    log.close()  # idempotent


def test_non_finite_is_strict_json_null(tmp_path: Path) -> None:
    with MetricLogger(tmp_path, _cfg()) as log:
        log.log(0, {"nan": float("nan"), "inf": float("inf"), "t": torch.tensor(float("-inf"))})
        log.log_samples(0, [{"prompt": "1+1", "reward": float("nan")}])

    def strict(text: str) -> dict:
        def bad(c: str) -> None:
            raise ValueError(c)

        return json.loads(text, parse_constant=bad)

    (line,) = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert strict(line) == {"step": 0, "nan": None, "inf": None, "t": None}
    (line,) = (tmp_path / "samples.jsonl").read_text().splitlines()
    assert strict(line) == {"step": 0, "prompt": "1+1", "reward": None}


def test_samples_jsonl(tmp_path: Path) -> None:
    with MetricLogger(tmp_path, _cfg()) as log:
        log.log_samples(5, [{"prompt": "a", "completion": "b"}, {"prompt": "c"}])
    assert _lines(tmp_path / "samples.jsonl") == [
        {"step": 5, "prompt": "a", "completion": "b"},
        {"step": 5, "prompt": "c"},
    ]


def test_resume_truncates_later_steps(tmp_path: Path) -> None:
    with MetricLogger(tmp_path, _cfg()) as log:
        for step in range(6):
            log.log(step, {"x": float(step)})
            log.log_samples(step, [{"s": step}])
    # a crash may leave a partial last line
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 6, "x"')
    with MetricLogger(tmp_path, _cfg(), resume_step=3) as log:
        assert [r["step"] for r in read_metrics(tmp_path)] == [0, 1, 2, 3]
        log.log(4, {"x": 40.0})
    assert [r["step"] for r in _lines(tmp_path / "metrics.jsonl")] == [0, 1, 2, 3, 4]
    assert _lines(tmp_path / "metrics.jsonl")[-1]["x"] == 40.0
    assert [r["step"] for r in _lines(tmp_path / "samples.jsonl")] == [0, 1, 2, 3]
    assert not list(tmp_path.glob("*.tmp"))


def test_resume_without_files(tmp_path: Path) -> None:
    with MetricLogger(tmp_path / "new", _cfg(), resume_step=10) as log:
        log.log(11, {"x": 1})
    assert read_metrics(tmp_path / "new") == [{"step": 11, "x": 1}]


def test_tensorboard_enabled(tmp_path: Path) -> None:
    with MetricLogger(tmp_path, _cfg(tensorboard=True)) as log:
        log.log(0, {"train/reward": 0.5, "phase": "rl", "t": torch.tensor(2.0)})
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_tensorboard_disabled(tmp_path: Path) -> None:
    with MetricLogger(tmp_path, _cfg(tensorboard=False)) as log:
        log.log(0, {"train/reward": 0.5})
    assert not (tmp_path / "tb").exists()


def test_missing_wandb_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(RuntimeError, match=r"logging\.wandb") as e:
        MetricLogger(tmp_path, _cfg(wandb=True))
    assert "pip install 'steerl[wandb]'" in str(e.value)
    assert not (tmp_path / "metrics.jsonl").exists()


def test_missing_mlflow_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(RuntimeError, match=r"logging\.mlflow"):
        MetricLogger(tmp_path, _cfg(mlflow=True))


def test_console_progress_renders_fields() -> None:
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=False, width=200)
    with ConsoleProgress(console=console) as bar:
        bar.set_phase("warm-up", total=2)
        bar.update(loss=1.23456)
        bar.update()
        bar.set_phase("RL", total=3)
        bar.update(reward=0.53123, acc=torch.tensor(0.8149))
    out = buf.getvalue()
    assert "reward=0.531" in out and "acc=0.815" in out
    assert "1/3" in out and "2/2" in out


def test_console_progress_disabled_is_silent(capsys: pytest.CaptureFixture[str]) -> None:
    with ConsoleProgress(enabled=False) as bar:
        bar.set_phase("RL", total=3)
        bar.update(reward=0.5)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
