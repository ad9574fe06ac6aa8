"""User data: JSONL or Parquet rows with a prompt, an answer and optional difficulty/category."""

from __future__ import annotations

import json
import math
import random
import re
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
        given = row.get(f.difficulty) is not None
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
        out.append(
            Prompt(
                id=str(row.get(f.id, f"{Path(source).stem}-{i}")),
                text=_render(cfg.prompt_template, row, f.prompt, source, i),
                answer=extract_answer(row.get(f.answer), cfg.answer_pattern),
                difficulty=diff,
                category=str(row.get(f.category, "default")),
                meta={k: v for k, v in row.items() if k not in known},
                has_difficulty=given,
            )
        )
    return out


def extract_answer(raw: Any, pattern: str | None) -> str | None:
    """The reference answer: group 1 of the last match of ``pattern`` (or the whole value).

    GSM8K's answers end in ``#### 42``: ``answer_pattern: "####\\s*(.+?)\\s*$"`` keeps ``42``.
    A value the pattern does not match gives ``None`` (the sample is left unscored).
    """
    if raw is None:
        return None
    text = str(raw)
    if pattern is None:
        return text
    matches = list(re.finditer(pattern, text, flags=re.MULTILINE))
    return matches[-1].group(1).strip() if matches else None


def _render(template: str, row: dict[str, Any], prompt_field: str, source: str, i: int) -> str:
    try:
        return template.format(**{**row, "prompt": row[prompt_field]})
    except (KeyError, IndexError, ValueError) as e:
        raise ConfigError(
            f"{source}, row {i + 1}: task.prompt_template {template!r} cannot be filled "
            f"({type(e).__name__}: {e}); fields present: {sorted(row)}"
        ) from None


def split_pools(
    train: list[Prompt], evals: list[Prompt] | None, cfg: TaskConfig, source: str
) -> tuple[list[Prompt], list[Prompt]]:
    """Seeded held-out split when no eval data is given; drop eval prompts from training."""
    if evals is None:
        order = list(range(len(train)))
        random.Random(cfg.seed).shuffle(order)
        n_eval = max(1, int(round(cfg.eval_fraction * len(train))))
        if n_eval >= len(train):
            raise ConfigError(f"{source}: too few rows ({len(train)}) to split off eval")
        held = set(order[:n_eval])
        evals = [p for i, p in enumerate(train) if i in held]
        train = [p for i, p in enumerate(train) if i not in held]
    if cfg.max_train is not None:
        train = train[: cfg.max_train]
    if cfg.max_eval is not None:
        evals = evals[: cfg.max_eval]
    eval_texts = {p.text for p in evals}
    train = [p for p in train if p.text not in eval_texts]
    if not train:
        raise ConfigError(f"{source}: no training rows left after removing held-out prompts")
    return train, evals


class FileTask(Task):
    """Prompts read from ``task.path`` (and ``task.eval_path``, or a seeded split)."""

    name = "file"

    def __init__(self, cfg: TaskConfig):
        assert cfg.path is not None
        train = rows_to_prompts(read_rows(cfg.path), cfg, cfg.path)
        evals = None
        if cfg.eval_path:
            evals = rows_to_prompts(read_rows(cfg.eval_path), cfg, cfg.eval_path)
        super().__init__(*split_pools(train, evals, cfg, cfg.path))
