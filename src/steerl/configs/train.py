"""Config section ``train``: steps, seed, evaluation and checkpoints."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from steerl.config_base import Section


class TrainConfig(Section):
    steps: int = Field(40, ge=0)  # RL steps
    seed: int = 0  # seeds torch, numpy, random and the samplers
    eval_every: int = Field(0, ge=0)  # greedy eval every N RL steps (0: only at the end)
    save_every: int = Field(0, ge=0)  # checkpoint every N steps (0: only at the end)
    keep_checkpoints: int = Field(2, ge=1)  # newest complete checkpoints kept on disk
    out_dir: str | None = None  # run directory; default runs/<recipe>-<timestamp>
    threads: int | None = Field(None, ge=1)  # torch CPU threads; null: min(cores, 4)
    stop_after: int | None = Field(None, ge=0)  # stop (as if killed) after this global step
    distributed: Literal["auto", "off", "fsdp"] = "auto"  # torchrun: DDP; fsdp: layers sharded
