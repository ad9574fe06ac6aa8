"""Config section ``rollout``: grouped sampling from the policy."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from steerl.config_base import Section


class RolloutConfig(Section):
    prompts_per_step: int = Field(32, ge=1)  # B: distinct prompts per RL step
    group_size: int = Field(8, ge=1)  # G: completions sampled per prompt
    temperature: float = Field(1.0, gt=0)  # sampling temperature
    top_p: float = Field(1.0, gt=0, le=1)  # nucleus sampling mass
    max_new_tokens: int = Field(8, ge=1)  # completion length cap (truncated if reached)
    eval_max_new_tokens: int | None = None  # greedy eval cap; null: max_new_tokens
    backend: Literal["auto", "eager", "static"] = "auto"  # sampler; auto: static on CUDA
    compile: bool = False  # static on CUDA: torch.compile each decode layer (not the fused ones)
    kernels: Literal["auto", "triton", "torch"] = "auto"  # static: fused Triton layers (auto: CUDA)
    pdl: bool = True  # fused layers: programmatic dependent launch where supported (Hopper+)
    ignore_eos: bool = False  # sample past EOS: full-length completions (benchmarks)
