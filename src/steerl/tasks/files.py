"""User data: JSONL or Parquet rows with a prompt, an answer and optional difficulty/category."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

from steerl.config import ConfigError, TaskConfig
from steerl.tasks.base import Prompt, Task


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"task.path: data file {str(p)!r} does not exist")
    if p.suffix in (".jsonl", ".json"):
        rows = []
        for n, line in enumerate(p.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ConfigError(f"{p}:{n}: not a JSON object per line ({e.msg})") from None
        return rows
    if p.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ConfigError(f"reading {p} needs pyarrow: pip install 'steerl[parquet]'") from None
        return pq.read_table(p).to_pylist()
    raise ConfigError(f"task.path: {str(p)!r} must end in .jsonl or .parquet")


def rows_to_prompts(rows: list[dict[str, Any]], cfg: TaskConfig, source: str) -> list[Prompt]:
    f = cfg.fields
    out = []
    for i, row in enumerate(rows):
        if f.prompt not in row:
            raise ConfigError(
                f"{source}, row {i + 1}: no field {f.prompt!r} (task.fields.prompt); "
                f"fields present: {sorted(row)}"
            )
        diff = row.get(f.difficulty, 0.0)
        try:
            diff = float(diff) if diff is not None else 0.0
            if math.isnan(diff):
                raise ValueError
        except (TypeError, ValueError):
            raise ConfigError(
                f"{source}, row {i + 1}: difficulty {diff!r} (task.fields.difficulty) "
                "is not a number"
            ) from None
        known = {f.prompt, f.answer, f.difficulty, f.category, f.id}
        answer = row.get(f.answer)
        out.append(
            Prompt(
                id=str(row.get(f.id, f"{Path(source).stem}-{i}")),
                text=str(row[f.prompt]),
                answer=None if answer is None else str(answer),
                difficulty=diff,
                category=str(row.get(f.category, "default")),
                meta={k: v for k, v in row.items() if k not in known},
            )
        )
    return out


class FileTask(Task):
    """Prompts read from ``task.path`` (and ``task.eval_path``, or a seeded split)."""

    name = "file"

    def __init__(self, cfg: TaskConfig):
        assert cfg.path is not None
        train = rows_to_prompts(read_rows(cfg.path), cfg, cfg.path)
        if cfg.eval_path:
            evals = rows_to_prompts(read_rows(cfg.eval_path), cfg, cfg.eval_path)
        else:
            order = list(range(len(train)))
            random.Random(cfg.seed).shuffle(order)
            n_eval = max(1, int(round(cfg.eval_fraction * len(train))))
            if n_eval >= len(train):
                raise ConfigError(f"task.path {cfg.path!r} has too few rows to split off eval")
            held = set(order[:n_eval])
            evals = [p for i, p in enumerate(train) if i in held]
            train = [p for i, p in enumerate(train) if i not in held]
        eval_texts = {p.text for p in evals}
        train = [p for p in train if p.text not in eval_texts]
        if not train:
            raise ConfigError(f"task.path {cfg.path!r}: no training rows left")
        super().__init__(train, evals)
