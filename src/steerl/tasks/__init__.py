"""Prompt sources: synthetic tasks with difficulty levels, and user data files."""

from __future__ import annotations

from steerl.config import Config
from steerl.tasks.arithmetic import ArithmeticTask
from steerl.tasks.base import Prompt, Task
from steerl.tasks.files import FileTask
from steerl.tasks.hf import HFDatasetTask


def build_task(cfg: Config) -> Task:
    if cfg.task.kind == "arithmetic":
        return ArithmeticTask(cfg.task.arithmetic, seed=cfg.task.seed, flaw=cfg.warmup.flaw)
    if cfg.task.kind == "hf":
        return HFDatasetTask(cfg.task)
    return FileTask(cfg.task)


__all__ = ["ArithmeticTask", "FileTask", "HFDatasetTask", "Prompt", "Task", "build_task"]
