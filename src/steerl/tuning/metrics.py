"""The numbers a trial is judged by: the metric names of ``tune.objectives`` and their values.

Final values (``final_metrics``) come from the run's last evaluation and summary:

- ``eval/accuracy/level_<k>`` and ``eval/accuracy/mean``: greedy accuracy per level and the
  mean over levels (the trainer's final evaluation);
- ``eval/reward/<label>`` and ``eval/mean_length``: a greedy pass over the held-out prompts
  scored by every reward, and the mean completion length in tokens (run only when asked for);
- ``train/wall_seconds``: the trial's training wall time (without a ``from_warmup`` warm-up);
- ``train/<name>``: the last value of an RL metric in ``metrics.jsonl`` (e.g. ``train/reward``).

Intermediate values (``eval_metrics``) are the accuracy metrics of each periodic evaluation
and are what pruners and thresholds watch.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


class MetricMissing(KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def eval_metrics(accuracy: dict[str, float]) -> dict[str, float]:
    """``{"1": 0.9, "2": 0.5}`` -> level metrics plus their mean."""
    out = {f"eval/accuracy/level_{k}": float(v) for k, v in accuracy.items()}
    if accuracy:
        out["eval/accuracy/mean"] = sum(map(float, accuracy.values())) / len(accuracy)
    return out


def last_train_metrics(run_dir: Path, names: set[str]) -> dict[str, float]:
    """Last logged value of each ``train/...`` name in ``metrics.jsonl``."""
    out: dict[str, float] = {}
    path = run_dir / "metrics.jsonl"
    if not names or not path.is_file():
        return out
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        for k in names & row.keys():
            if isinstance(row[k], (int, float)) and math.isfinite(row[k]):
                out[k] = float(row[k])
    return out


def final_metrics(trainer: Any, summary: dict[str, Any], wanted: list[str]) -> dict[str, float]:
    """Every metric in ``wanted`` (and the cheap ones beside it) for a finished run."""
    out = eval_metrics(summary.get("final") or {})
    out["train/wall_seconds"] = float(summary.get("wall_seconds") or 0.0)
    if any(w.startswith("eval/reward/") or w == "eval/mean_length" for w in wanted):
        from steerl.pareto.evaluate import greedy_scores

        names, scores, lengths = greedy_scores(trainer)
        for j, n in enumerate(names):
            out[f"eval/reward/{n}"] = float(scores[:, j].mean()) if len(scores) else 0.0
        out["eval/mean_length"] = float(lengths.mean()) if len(lengths) else 0.0
    train = {w for w in wanted if w.startswith("train/") and w not in out}
    out.update(last_train_metrics(Path(trainer.run_dir), train))
    missing = [w for w in wanted if w not in out]
    if missing:
        raise MetricMissing(
            f"metric(s) {missing} were not produced by the run; available: {sorted(out)}"
        )
    return out
