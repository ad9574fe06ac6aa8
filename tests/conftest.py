"""Shared fixtures: tiny configurations and models that keep the suite fast on a CPU."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

# Without a GPU, Triton kernels (rollout.kernels=triton) run under Triton's interpreter; set
# before anything imports Triton (transformers does): its mode is fixed when a kernel is built
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from steerl.config import Config, ModelConfig, TinyModelConfig, load_config  # noqa: E402
from steerl.models import Policy, load_policy  # noqa: E402

# The models under test are tiny: one thread is fastest, and on a busy machine several
# threads spin-waiting on each other make a forward pass ~50x slower.
torch.set_num_threads(1)

#: Model dimensions small enough for a CPU test to build and run in milliseconds.
TINY_MODEL = [
    "model.tiny.hidden_size=32",
    "model.tiny.num_layers=2",
    "model.tiny.num_heads=2",
    "model.tiny.intermediate_size=64",
]

#: A complete short run: 3 warm-up steps, then 4 RL steps of 4 prompts x 4 completions.
TINY_RUN = [
    *TINY_MODEL,
    "model.device=cpu",
    "warmup.steps=3",
    "warmup.batch_size=16",
    "train.steps=4",
    "train.threads=1",
    "rollout.prompts_per_step=4",
    "rollout.group_size=4",
    "task.arithmetic.train_per_level=50",
    "task.arithmetic.eval_per_level=10",
    "logging.tensorboard=false",
    "logging.report=false",
    "logging.progress=false",
]


@pytest.fixture
def tiny_overrides() -> list[str]:
    """Overrides of the default recipe for a run of a few seconds (a fresh copy per test)."""
    return list(TINY_RUN)


@pytest.fixture
def tiny_config(tiny_overrides: list[str]) -> Callable[..., Config]:
    """``tiny_config(*extra_overrides)``: the default recipe with the tiny overrides."""

    def make(*extra: str) -> Config:
        return load_config("default", [*tiny_overrides, *extra])

    return make


@pytest.fixture
def tiny_model_config() -> Callable[..., ModelConfig]:
    """``tiny_model_config(arch="llama", **model_fields)``: the tiny model, CPU, float32."""

    def make(arch: str = "llama", **kw) -> ModelConfig:
        tiny = TinyModelConfig(
            arch=arch, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64
        )
        return ModelConfig(name="tiny", tiny=tiny, device="cpu", dtype="float32", **kw)

    return make


@pytest.fixture
def tiny_policy(tiny_model_config: Callable[..., ModelConfig]) -> Callable[..., Policy]:
    """``tiny_policy(arch="llama", seed=0, scale=None)``: a tiny model on the CPU, eval mode.

    ``scale`` re-draws every weight matrix from N(0, scale^2): a freshly initialised model
    is nearly uniform (greedy decoding repeats one token); larger weights make its outputs
    depend on the prompt, which is what the rollout tests need.
    """

    def make(arch: str = "llama", seed: int = 0, scale: float | None = None) -> Policy:
        torch.manual_seed(seed)
        policy = load_policy(tiny_model_config(arch))
        if scale is not None:
            with torch.no_grad():
                for p in policy.model.parameters():
                    if p.dim() >= 2:
                        p.normal_(0.0, scale)
        policy.model.eval()
        return policy

    return make
