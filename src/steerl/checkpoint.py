"""Atomic checkpoints and resume.

A checkpoint is a folder ``checkpoints/step_<N>/`` holding

- ``model.safetensors`` (+ ``config.json`` and tokenizer files: a loadable HF model folder),
  or, with LoRA (``model.lora.enabled``), ``adapter_model.safetensors`` and
  ``adapter_config.json`` in ``peft``'s format: the adapters (and ``modules_to_save``),
  which are all the trainable weights; the frozen base is rebuilt from ``model.name`` on
  resume (the tiny model from ``train.seed``), so resume stays exact,
- ``optimizer.pt`` (the torch optimizer state),
- ``rng.safetensors`` (torch CPU/CUDA and sampler generator states),
- ``trainer_state.json`` (step, phase, evaluations, python RNG, and the ``state_dict()`` of
  every stateful component: curriculum, balancer, guards, ...).

It is written into ``checkpoints/.tmp-step_<N>`` and renamed into place, so a folder named
``step_<N>`` is always complete; a crash mid-write leaves only a ``.tmp-`` folder behind.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

CKPT_DIR = "checkpoints"
#: peft's file names for a saved adapter.
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


def _numpy_state_to_json() -> list:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return [name, keys.tolist(), int(pos), int(has_gauss), float(gauss)]


def _numpy_state_from_json(s: list) -> None:
    np.random.set_state((s[0], np.asarray(s[1], dtype=np.uint32), s[2], s[3], s[4]))


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: torch.nn.Module,
    tokenizer: Any,
    optimizer: torch.optim.Optimizer | None,
    state: dict[str, Any],
    generators: dict[str, torch.Generator],
    keep: int = 2,
    model_state: dict[str, torch.Tensor] | None = None,
    optimizer_state: dict[str, Any] | None = None,
) -> Path:
    """Write ``checkpoints/step_<step>`` atomically and prune to the newest ``keep``.

    ``model_state`` / ``optimizer_state``: whole tensors to write instead of the model's and
    optimizer's own state (sharded layers, gathered by every rank beforehand).
    """
    root = Path(run_dir) / CKPT_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step}"
    tmp = root / f".tmp-step_{step}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if model_state is None:
        model.save_pretrained(tmp, safe_serialization=True)
    else:
        model.config.save_pretrained(tmp)
        save_state(model_state, tmp / "model.safetensors")
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    if optimizer is not None:
        opt_state = optimizer.state_dict() if optimizer_state is None else optimizer_state
        torch.save(opt_state, tmp / "optimizer.pt")
    rng = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            rng[f"torch_cuda_{i}"] = s
    for name, g in generators.items():
        rng[f"gen_{name}"] = g.get_state()
    save_file({k: v.contiguous() for k, v in rng.items()}, tmp / "rng.safetensors")
    full_state = {
        **state,
        "step": step,
        "python_random": rng_to_json(),
        "numpy_random": _numpy_state_to_json(),
    }
    (tmp / "trainer_state.json").write_text(json.dumps(full_state, indent=1))
    _fsync_dir(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def save_state(state: dict[str, torch.Tensor], path: Path) -> None:
    """Whole tensors to one safetensors file; a tensor held under two names (tied
    embeddings) is written once, under its first name (``load_model`` ties it back)."""
    seen: set[tuple[int, int]] = set()
    out = {}
    for k, v in state.items():
        key = (v.data_ptr(), v.numel())
        if key in seen:
            continue
        seen.add(key)
        out[k] = v.detach().contiguous().cpu()
    save_file(out, str(path))


def rng_to_json(rng: random.Random | None = None) -> list:
    """The state of a ``random.Random`` (default: the global ``random`` module) as JSON data."""
    v, s, g = (random if rng is None else rng).getstate()
    return [v, list(s), g]


def rng_from_json(data: list) -> tuple:
    """The inverse of ``rng_to_json``: a state for ``Random.setstate``."""
    return (data[0], tuple(data[1]), data[2])


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = Path(run_dir) / CKPT_DIR
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        if p.is_dir() and p.name.startswith("step_") and (p / "trainer_state.json").is_file():
            try:
                found.append((int(p.name.split("_", 1)[1]), p))
            except ValueError:
                continue
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: Path) -> Path | None:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def load_checkpoint(
    path: Path,
    model: torch.nn.Module,
    generators: dict[str, torch.Generator],
) -> dict[str, Any]:
    """Restore weights, global RNGs and generator states; returns the trainer state.

    The optimizer is restored by the caller (it may need building first) from
    ``path / "optimizer.pt"``.
    """
    load_weights(path, model)
    rng = load_file(path / "rng.safetensors")
    torch.set_rng_state(rng["torch_cpu"])
    if torch.cuda.is_available():
        states = [rng[k] for k in sorted(rng) if k.startswith("torch_cuda_")]
        if states:
            torch.cuda.set_rng_state_all(states)
    for name, g in generators.items():
        if f"gen_{name}" in rng:
            g.set_state(rng[f"gen_{name}"])
    state = json.loads((path / "trainer_state.json").read_text())
    v, s, g = state["python_random"]
    random.setstate((v, tuple(s), g))
    _numpy_state_from_json(state["numpy_random"])
    return state


def load_weights(path: Path, model: torch.nn.Module) -> None:
    """Full weights (``model.safetensors``) or, for a LoRA policy, the adapter."""
    from steerl.models import is_peft_model

    has_adapter = (path / ADAPTER_WEIGHTS).is_file()
    if has_adapter != is_peft_model(model):
        what = "LoRA adapters" if has_adapter else "full weights"
        raise RuntimeError(
            f"checkpoint {path} holds {what} but model.lora.enabled="
            f"{str(is_peft_model(model)).lower()}; resume with the configuration it was "
            "trained with"
        )
    if has_adapter:
        load_adapter(path, model)
        return
    from safetensors.torch import load_model

    from steerl import distributed as ddp

    if ddp.sharded():  # whole tensors in the file, shards in the model
        sd = load_file(path / "model.safetensors")
        names = set(model.state_dict())
        missing, unexpected = sorted(names - set(sd)), sorted(set(sd) - names)
        from steerl.fsdp import load_full_state_dict

        load_full_state_dict(model, sd)
    else:
        missing, unexpected = load_model(model, path / "model.safetensors", strict=False)
    tied = {k for k in missing if k.endswith("lm_head.weight")}
    if set(missing) - tied or unexpected:
        raise RuntimeError(
            f"checkpoint {path} does not match the model: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )


def load_adapter(
    path: Path, model: torch.nn.Module, state_dict: dict[str, torch.Tensor] | None = None
) -> None:
    """Load a ``peft`` adapter (``path``'s, or ``state_dict`` in its key format) into the
    LoRA ``model``; every saved tensor and every adapter tensor must find its match."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    sd = load_file(Path(path) / ADAPTER_WEIGHTS) if state_dict is None else state_dict
    expected = set(get_peft_model_state_dict(model))
    missing, unexpected = sorted(expected - set(sd)), sorted(set(sd) - expected)
    if missing or unexpected:
        raise RuntimeError(
            f"adapter {path} does not match the model's LoRA configuration: missing "
            f"{missing[:5]}, unexpected {unexpected[:5]}"
        )
    set_peft_model_state_dict(model, sd)


def read_trainer_state(path: Path) -> dict[str, Any]:
    """The ``trainer_state.json`` of a checkpoint (components' states under "components")."""
    return json.loads((Path(path) / "trainer_state.json").read_text())


def load_optimizer(path: Path, optimizer: torch.optim.Optimizer) -> bool:
    """Restore ``optimizer.pt`` (whole tensors, cut into shards for sharded layers)."""
    from steerl import distributed as ddp

    f = path / "optimizer.pt"
    if not f.is_file():
        return False
    sd = torch.load(f, map_location="cpu", weights_only=True)
    if ddp.sharded():
        from steerl.fsdp import shard_optimizer_state

        sd = shard_optimizer_state(optimizer, sd)
    # the implementation flags are this run's, not the writer's: load_state_dict would take
    # fused/foreach from the saved groups (a checkpoint of multi-tensor AdamW would keep the
    # resumed run multi-tensor, with its parameter-sized temporaries)
    # (a group count that does not match is load_state_dict's error to report)
    for saved, live in zip(sd["param_groups"], optimizer.param_groups):
        for key in ("fused", "foreach"):
            if key in live:
                saved[key] = live[key]
    optimizer.load_state_dict(sd)
    return True
