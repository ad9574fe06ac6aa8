"""Metric sinks (JSONL, TensorBoard, W&B, MLflow) and the console progress bar.

``metrics.jsonl`` holds one strict-JSON object per ``MetricLogger.log`` call:
``{"step": step, **metrics}``. Non-finite floats (NaN, inf) are written as ``null``
so that every line parses with any JSON reader; TensorBoard, W&B and MLflow get the
raw value. Completions go to ``samples.jsonl`` in the same format.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

from steerl.config import LoggingConfig

METRICS_FILE = "metrics.jsonl"
SAMPLES_FILE = "samples.jsonl"


# --------------------------------------------------------------------------- value helpers
def _scalar(v: Any) -> Any:
    """Torch / numpy scalars -> python numbers; other values unchanged."""
    if hasattr(v, "item") and hasattr(v, "shape"):  # torch tensor or numpy value
        if getattr(v, "ndim", 0) == 0 or _numel(v) == 1:
            return v.item()
        return v.tolist()
    return v


def _numel(v: Any) -> int:
    n = getattr(v, "numel", None)
    if callable(n):
        return int(n())
    return int(getattr(v, "size", 0))


def _jsonable(v: Any) -> Any:
    """A value strict JSON can hold: non-finite floats become None, containers recurse."""
    v = _scalar(v)
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


def _numeric(metrics: dict[str, Any]) -> dict[str, float]:
    """The numeric entries of ``metrics`` as floats (strings and containers skipped)."""
    out: dict[str, float] = {}
    for k, v in metrics.items():
        v = _scalar(v)
        if isinstance(v, (int, float)):  # bool is an int: logged as 0/1
            out[k] = float(v)
    return out


def _dumps(record: dict[str, Any]) -> str:
    return json.dumps(_jsonable(record), allow_nan=False, default=str)


def _truncate_jsonl(path: Path, resume_step: int) -> None:
    """Keep only the lines of ``path`` with ``step <= resume_step`` (atomic rewrite).

    Unparseable lines (e.g. a line cut short by a crash) are dropped too.
    """
    if not path.is_file():
        return
    kept = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            step = rec.get("step") if isinstance(rec, dict) else None
            if isinstance(step, (int, float)) and step <= resume_step:
                kept.append(line if line.endswith("\n") else line + "\n")
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.writelines(kept)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Records of a ``metrics.jsonl`` file (or of a run directory holding one).

    Blank and unparseable lines are skipped; a missing file raises FileNotFoundError.
    """
    p = Path(path)
    if p.is_dir():
        p = p / METRICS_FILE
    out = []
    with p.open(encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict):
                out.append(rec)
    return out


def _missing(key: str, package: str, extra: str) -> RuntimeError:
    return RuntimeError(
        f"logging.{key}=true needs the `{package}` package, which is not installed. "
        f"Install it with `pip install 'steerl[{extra}]'` (or `pip install {package}`), "
        f"or set logging.{key}=false to run without it."
    )


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


# --------------------------------------------------------------------------- sinks
class JsonlSink:
    """Appends ``{"step": step, **metrics}`` lines to a file, flushed per line."""

    def __init__(self, path: Path):
        self.path = path
        self._f = path.open("a", encoding="utf-8")

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        self._f.write(_dumps({"step": int(step), **metrics}) + "\n")
        self._f.flush()

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()


class TensorBoardSink:
    """``add_scalar`` for every numeric metric, under ``run_dir/tb``."""

    def __init__(self, log_dir: Path, resume_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        purge = resume_step + 1 if resume_step is not None else None
        self._w = SummaryWriter(log_dir=str(log_dir), purge_step=purge)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        for k, v in _numeric(metrics).items():
            self._w.add_scalar(k, v, int(step))
        self._w.flush()

    def close(self) -> None:
        self._w.close()


class WandbSink:
    """Weights & Biases run named after the run directory."""

    def __init__(self, run_dir: Path, project: str, config: dict[str, Any] | None):
        try:
            import wandb
        except ImportError:
            raise _missing("wandb", "wandb", "wandb") from None
        self._wandb = wandb
        self._run = wandb.init(
            project=project, name=run_dir.name, dir=str(run_dir), config=config or {}
        )

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        data = {k: _scalar(v) for k, v in metrics.items()}
        self._run.log(data, step=int(step))

    def close(self) -> None:
        self._run.finish()


class MlflowSink:
    """MLflow run named after the run directory; the config is logged as flat params."""

    def __init__(self, run_dir: Path, config: dict[str, Any] | None):
        try:
            import mlflow
        except ImportError:
            raise _missing("mlflow", "mlflow", "mlflow") from None
        self._mlflow = mlflow
        self._run = mlflow.start_run(run_name=run_dir.name)
        if config:
            params = {k: str(v)[:500] for k, v in _flatten(config).items()}
            mlflow.log_params(params)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        data = _numeric(metrics)
        if data:
            self._mlflow.log_metrics(data, step=int(step))

    def close(self) -> None:
        self._mlflow.end_run()


# --------------------------------------------------------------------------- logger
class MetricLogger:
    """Fans ``log(step, metrics)`` out to the sinks enabled in ``cfg``.

    With ``resume_step`` set, records after that step are first removed from
    ``metrics.jsonl`` / ``samples.jsonl`` (and purged from TensorBoard), so a resumed
    run does not log a step twice.
    """

    def __init__(
        self,
        run_dir: Path,
        cfg: LoggingConfig,
        config: dict[str, Any] | None = None,
        resume_step: int | None = None,
    ):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.cfg = cfg
        if resume_step is not None:
            _truncate_jsonl(self.run_dir / METRICS_FILE, resume_step)
            _truncate_jsonl(self.run_dir / SAMPLES_FILE, resume_step)
        self.sinks: list[Any] = []
        self._samples: JsonlSink | None = None
        try:
            # optional sinks first: a missing package fails before any file is touched
            if cfg.wandb:
                self.sinks.append(WandbSink(self.run_dir, cfg.wandb_project, config))
            if cfg.mlflow:
                self.sinks.append(MlflowSink(self.run_dir, config))
            self.sinks.insert(0, JsonlSink(self.run_dir / METRICS_FILE))
            if cfg.tensorboard:
                self.sinks.insert(1, TensorBoardSink(self.run_dir / "tb", resume_step))
        except BaseException:
            self.close()
            raise

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        """Record ``metrics`` (floats, ints, strings or 0-d tensors) at ``step``."""
        clean = {k: _scalar(v) for k, v in metrics.items()}
        for sink in self.sinks:
            sink.log(step, clean)

    def log_samples(self, step: int, samples: Iterable[dict[str, Any]]) -> None:
        """Append ``{"step": step, **sample}`` lines to ``samples.jsonl``."""
        if self._samples is None:
            self._samples = JsonlSink(self.run_dir / SAMPLES_FILE)
        for s in samples:
            self._samples.log(step, s)

    def close(self) -> None:
        """Close every sink (idempotent)."""
        for sink in self.sinks:
            sink.close()
        self.sinks = []
        if self._samples is not None:
            self._samples.close()
            self._samples = None

    def __enter__(self) -> MetricLogger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# --------------------------------------------------------------------------- console
def _fmt(v: Any) -> str:
    v = _scalar(v)
    if isinstance(v, bool) or isinstance(v, int) or isinstance(v, str):
        return str(v)
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


class ConsoleProgress:
    """A rich progress bar: description, bar, M/N, elapsed time and live ``key=value`` text.

    Use as a context manager. ``set_phase`` starts a new bar (e.g. warm-up, then RL);
    ``update(advance=1, reward=0.53)`` advances it and refreshes the fields. With
    ``enabled=False`` every method is a no-op. Renders to stderr unless a console is given.
    """

    def __init__(self, enabled: bool = True, console: Any | None = None):
        self.enabled = enabled
        self._progress: Any = None
        self._task: Any = None
        self._fields: dict[str, str] = {}
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"),
            console=console if console is not None else Console(stderr=True),
        )

    def __enter__(self) -> ConsoleProgress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def set_phase(self, description: str, total: int | None) -> None:
        """Start a new bar; the previous one stays on screen as it was."""
        if self._progress is None:
            return
        self._fields = {}
        self._task = self._progress.add_task(description, total=total, info="")

    def update(self, advance: int = 1, **fields: Any) -> None:
        """Advance the current bar and merge ``fields`` into its ``key=value`` text."""
        if self._progress is None:
            return
        if self._task is None:
            self.set_phase("steerl", None)
        self._fields.update({k: _fmt(v) for k, v in fields.items()})
        info = " ".join(f"{k}={v}" for k, v in self._fields.items())
        self._progress.update(self._task, advance=advance, info=info)
