"""The trainer's persistent state: progress, checkpoints, resume, the frozen reference.

``TrainerState`` is the run's progress (``trainer_state.json``). :class:`CheckpointMixin`
gives :class:`steerl.trainer.Trainer` its save and resume (the progress and every
component's ``state_dict()`` in one checkpoint, so a restarted run resumes exactly), the
frozen KL/DPO reference RL starts from, and the rollback stability's spike checks ask for.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from steerl import checkpoint as ckpt
from steerl import distributed as ddp
from steerl import fsdp


@dataclass
class TrainerState:
    """Progress of the run (saved in trainer_state.json)."""

    global_step: int = 0  # warm-up steps + RL steps done
    warmup_step: int = 0
    rl_step: int = 0
    warmup_eval: dict[str, float] | None = None  # greedy accuracy per level after warm-up
    final_eval: dict[str, float] | None = None
    evals: list[dict[str, Any]] = field(default_factory=list)
    wall_seconds: float = 0.0  # accumulated over resumed segments
    generated_tokens: int = 0  # completion tokens sampled in RL steps
    generate_seconds: float = 0.0  # time spent sampling them
    stop_reason: str | None = None  # why the run stopped before train.steps (early stop, ...)


#: The frozen reference RL started from, saved in the run directory after a warm-up.
REFERENCE_FILE = "reference.safetensors"


class CheckpointMixin:
    """Checkpoint, resume, reference and rollback of :class:`steerl.trainer.Trainer`.

    Reads the trainer's components (model, optimizer, curriculum, balancer, stability,
    KL controller, samplers) and its ``run_dir``, ``state`` and ``_make_optimizer``.
    """

    # ------------------------------------------------------------------ component states
    def _generators(self) -> dict[str, torch.Generator]:
        """This rank's generators under their checkpoint names (rank r > 0: sampler_rank<r>)."""
        r = ddp.rank()
        return {"sampler" if r == 0 else f"sampler_rank{r}": self.sampler}

    def _all_generators(self) -> dict[str, torch.Generator]:
        """Every rank's generators, for rank 0 to write (one process: its own)."""
        states = ddp.all_gather_objects(self.sampler.get_state())
        out = {"sampler": self.sampler}
        for r, st in enumerate(states[1:], start=1):
            out[f"sampler_rank{r}"] = torch.Generator(self.sampler.device).set_state(st)
        return out

    def component_states(self) -> dict[str, Any]:
        return {
            "curriculum": self.curriculum.state_dict(),
            "balancer": self.balancer.state_dict(),
            "stability": self.stability.state_dict(),
            "kl_controller": self.kl_ctl.state_dict() if self.kl_ctl else None,
            "demo_rng": ckpt.rng_to_json(self.demo_rng),
        }

    # ------------------------------------------------------------------ resume / save
    def resume(self) -> bool:
        """Restore the newest complete checkpoint in the run directory, if any."""
        path = ckpt.latest_checkpoint(self.run_dir)
        if path is None:
            return False
        state = ckpt.load_checkpoint(path, self.model, self._generators())
        comps = state["components"]
        self.curriculum.load_state_dict(comps["curriculum"])
        self.balancer.load_state_dict(comps["balancer"])
        self.stability.load_state_dict(comps["stability"])
        if self.kl_ctl is not None and comps.get("kl_controller"):
            self.kl_ctl.load_state_dict(comps["kl_controller"])
        self.demo_rng.setstate(ckpt.rng_from_json(comps["demo_rng"]))
        self.state = TrainerState(**state["trainer"])
        self.optimizer = self._make_optimizer(self.phase)
        ckpt.load_optimizer(path, self.optimizer)
        self._restore_reference()
        return True

    # ------------------------------------------------------------------ reference (KL, DPO)
    def _start_reference(self) -> None:
        """After a warm-up, the reference becomes the policy RL starts from (kept on disk)."""
        if self.reference is None:
            return
        from safetensors.torch import save_model

        self.reference.load_state_dict(self.model.state_dict())
        whole = fsdp.full_state_dict(self.reference) if ddp.sharded() else None
        if ddp.is_main():
            self.run_dir.mkdir(parents=True, exist_ok=True)
            tmp = self.run_dir / f".tmp-{REFERENCE_FILE}"
            if whole is None:
                save_model(self.reference, str(tmp))
            else:
                ckpt.save_state(whole, tmp)
            os.replace(tmp, self.run_dir / REFERENCE_FILE)
        ddp.barrier()

    def _restore_reference(self) -> None:
        """On resume into RL after a warm-up: the reference saved when RL started."""
        if self.reference is None or not self.cfg.warmup.steps or self.phase != "rl":
            return
        path = self.run_dir / REFERENCE_FILE
        if path.is_file():
            from safetensors.torch import load_model

            if ddp.sharded():
                fsdp.load_full_state_dict(self.reference, ckpt.load_file(path))
            else:
                load_model(self.reference, str(path), strict=False)
            return
        if self.state.rl_step:
            warnings.warn(
                f"{path} is missing (no reference was needed when RL started): the KL/DPO "
                "reference is the resumed policy, not the one RL started from",
                stacklevel=2,
            )
        self._start_reference()  # resumed at the warm-up/RL boundary: the same weights

    def save(self) -> Path:
        """Rank 0 writes the checkpoint (with every rank's sampler); the others wait for it."""
        generators = self._all_generators()
        path = self.run_dir / ckpt.CKPT_DIR / f"step_{self.state.global_step}"
        whole = {}  # sharded layers: every rank takes part in gathering the whole tensors
        if ddp.sharded():
            whole = {
                "model_state": fsdp.full_state_dict(self.model),
                "optimizer_state": fsdp.full_optimizer_state(self.optimizer),
            }
        if ddp.is_main():
            path = ckpt.save_checkpoint(
                self.run_dir,
                self.state.global_step,
                self.model,
                self.tokenizer,
                self.optimizer,
                {"trainer": asdict(self.state), "components": self.component_states()},
                generators,
                keep=self.cfg.train.keep_checkpoints,
                **whole,
            )
        ddp.barrier()
        return path

    # ------------------------------------------------------------------ rollback (stability)
    def _rollback(self, reason: str) -> int | None:
        """Restore weights, optimizer and components from the newest checkpoint.

        Step counters, the stability manager and the samplers keep going, and the curriculum
        reshuffles: the run continues from the last good weights with different data.
        Returns the checkpoint's step, or ``None`` (nothing to roll back to: a skip).
        """
        path = ckpt.latest_checkpoint(self.run_dir)
        if path is None:
            return None
        ckpt.load_weights(path, self.model)  # full weights, or the LoRA adapter
        ckpt.load_optimizer(path, self.optimizer)
        comps = ckpt.read_trainer_state(path)["components"]
        self.curriculum.load_state_dict(comps["curriculum"])
        self.balancer.load_state_dict(comps["balancer"])
        reshuffle = getattr(self.curriculum, "reshuffle", None)
        if reshuffle is not None:
            reshuffle(self.stability.rollbacks + 1)
        self.stability.on_rollback()  # counts; raises StabilityError past max_rollbacks
        return int(path.name.split("_", 1)[1])
