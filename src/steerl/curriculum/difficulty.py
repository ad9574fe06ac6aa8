"""Where a prompt's difficulty comes from, and the difficulty file format.

Three sources, one per run (``curriculum.*``):

- the data: ``Prompt.difficulty`` (a file's ``task.fields.difficulty`` column, or the
  synthetic task's level);
- ``difficulty_fn: package.module:function``: a function of a ``Prompt`` returning a float;
- ``difficulty_file``: a JSONL file of ``{"id": ..., "difficulty": ...}`` lines, as written by
  ``steerl curriculum profile`` (difficulty = 1 - the policy's pass rate).

Prompts left without a difficulty stop the run (``missing_difficulty: error``, naming how
many and an example id) or get the mean of the others (``mean``, logged).

:func:`prompt_levels` derives the prompts' *levels* (what per-level metrics and the bandit
group by): whole-number difficulties as they are, other difficulties cut into
``curriculum.levels_from_difficulty`` quantile bins.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from steerl.config import ConfigError, CurriculumConfig
from steerl.registry import RegistryError, import_object
from steerl.tasks.base import Prompt

logger = logging.getLogger("steerl.curriculum")


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def read_difficulty_file(path: str | Path) -> dict[str, float]:
    """``{id: difficulty}`` from a JSONL file (a later line for the same id wins)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(
            f"curriculum.difficulty_file: {str(p)!r} does not exist (write one with "
            "`steerl curriculum profile --run RUN_DIR --out FILE`)"
        )
    out: dict[str, float] = {}
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{p}:{n}: not a JSON object per line ({e.msg})") from None
        if not isinstance(row, dict) or "id" not in row or "difficulty" not in row:
            raise ConfigError(f"{p}:{n}: each line needs the keys 'id' and 'difficulty'")
        d = _number(row["difficulty"])
        if d is None:
            raise ConfigError(
                f"{p}:{n}: difficulty {row['difficulty']!r} of id {row['id']!r} is not a number"
            )
        out[str(row["id"])] = d
    return out


def done_ids(path: str | Path) -> set[str]:
    """Ids already in a (possibly partly written) difficulty file; a torn last line is skipped."""
    p = Path(path)
    if not p.is_file():
        return set()
    ids = set()
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "id" in row:
            ids.add(str(row["id"]))
    return ids


def append_rows(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    """Append JSONL rows and flush them to disk (a profile can be resumed after a kill).

    A torn last line (the process was killed mid-write) is removed first; its id is not in
    :func:`done_ids`, so the resumed profile writes it again.
    """
    import os

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.is_file():
        data = p.read_bytes()
        if data and not data.endswith(b"\n"):  # a line cut short by a kill: drop it
            with p.open("r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)
    with p.open("a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def source_name(cfg: CurriculumConfig) -> str:
    if cfg.difficulty_file:
        return f"curriculum.difficulty_file={cfg.difficulty_file!r}"
    if cfg.difficulty_fn:
        return f"curriculum.difficulty_fn={cfg.difficulty_fn!r}"
    return "the data (task.fields.difficulty, or the synthetic task's level)"


def resolve_difficulty(prompts: Sequence[Prompt], cfg: CurriculumConfig) -> np.ndarray:
    """(N,) float difficulties of ``prompts`` from the configured source.

    Raises ``ConfigError`` for values that are not numbers, and for prompts without a
    difficulty unless ``missing_difficulty: mean`` (then filled with the mean, logged).
    """
    values: list[float | None]
    if cfg.difficulty_file:
        table = read_difficulty_file(cfg.difficulty_file)
        values = [table.get(p.id) for p in prompts]
    elif cfg.difficulty_fn:
        try:
            fn = import_object(cfg.difficulty_fn, "curriculum.difficulty_fn")
        except RegistryError as e:
            raise ConfigError(str(e)) from None
        values = []
        for p in prompts:
            raw = fn(p)
            d = _number(raw)
            if raw is not None and d is None:
                raise ConfigError(
                    f"curriculum.difficulty_fn={cfg.difficulty_fn!r} returned {raw!r} for "
                    f"prompt id {p.id!r}; it must return a finite number (or None: unknown)"
                )
            values.append(d)
    else:
        values = [p.difficulty if p.has_difficulty else None for p in prompts]
    missing = [p.id for p, v in zip(prompts, values) if v is None]
    src = source_name(cfg)
    if len(missing) == len(prompts):
        raise ConfigError(
            f"curriculum.name={cfg.name} orders prompts by difficulty, but none of the "
            f"{len(prompts)} training prompts has one in {src} (e.g. id {missing[0]!r}). Give "
            "the data a difficulty column (task.fields.difficulty), or set "
            "curriculum.difficulty_file (`steerl curriculum profile` writes one) or "
            "curriculum.difficulty_fn"
        )
    if missing:
        msg = (
            f"{len(missing)} of {len(prompts)} training prompts have no difficulty in {src} "
            f"(e.g. id {missing[0]!r})"
        )
        if cfg.missing_difficulty == "error":
            raise ConfigError(
                f"{msg}; curriculum.name={cfg.name} needs one for every prompt. Fill them in, "
                "or set curriculum.missing_difficulty=mean to give them the mean difficulty"
            )
        known = [v for v in values if v is not None]
        fill = float(np.mean(known))
        logger.warning("%s; they get the mean difficulty %.4g (missing_difficulty=mean)", msg, fill)
        values = [fill if v is None else v for v in values]
    return np.asarray(values, dtype=np.float64)


def prompt_levels(
    prompts: Sequence[Prompt], difficulty: np.ndarray | None = None, bins: int = 4
) -> np.ndarray:
    """(N,) int level of each prompt: what per-level metrics, the report's heat map, the
    statistics' ``prior_from: level`` and the bandit's ``arms: level`` group by.

    The values are the data's difficulties (``task.fields.difficulty``, the synthetic task's
    level) where the data gives any, else the run's ``difficulty`` (``difficulty_file`` /
    ``difficulty_fn``). Whole numbers are the levels themselves. Otherwise (e.g. pass rates in
    [0, 1]) they are cut into ``bins`` quantile bins (``curriculum.levels_from_difficulty``),
    numbered 0 (easiest) upward without gaps; equal difficulties share a level, so heavy ties
    give fewer levels. A prompt without a difficulty is level 0; ``bins=0``: the integer part
    of the data's difficulty, as :attr:`Prompt.level`.
    """
    own = np.array([p.level for p in prompts], dtype=np.int64)
    if bins == 0:
        return own
    if any(p.has_difficulty for p in prompts):
        values = np.array(
            [p.difficulty if p.has_difficulty else np.nan for p in prompts], dtype=np.float64
        )
    elif difficulty is not None:
        values = np.asarray(difficulty, dtype=np.float64)
    else:
        return own  # no difficulty anywhere: every prompt is level 0
    known = ~np.isnan(values)
    out = np.zeros(len(values), dtype=np.int64)
    if np.all(values[known] == np.floor(values[known])):
        out[known] = values[known].astype(np.int64)
        return out
    out[known] = quantile_levels(values[known], bins)
    return out


def quantile_levels(d: np.ndarray, bins: int) -> np.ndarray:
    """(N,) levels 0..M-1 (M <= ``bins``) of ``d`` cut at its quantiles k / bins.

    A value equal to a cut point goes to the lower bin, so equal values share a level; empty
    bins are skipped, so the levels have no gaps.
    """
    if bins < 1:
        raise ValueError(f"curriculum.levels_from_difficulty={bins}: must be at least 1 here")
    edges = np.quantile(d, np.arange(1, bins) / bins)
    raw = np.searchsorted(edges, d, side="left")
    return np.unique(raw, return_inverse=True)[1].astype(np.int64).reshape(-1)


def normalise(d: np.ndarray) -> np.ndarray:
    """Min-max scaled to [0, 1] over the pool (all zeros if every prompt is equally hard)."""
    lo, hi = float(d.min()), float(d.max())
    if hi <= lo:
        return np.zeros_like(d)
    return (d - lo) / (hi - lo)
