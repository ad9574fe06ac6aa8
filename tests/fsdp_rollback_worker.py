"""A spike rollback under ``train.distributed=fsdp`` (see test_distributed).

    torchrun --nproc_per_node 2 tests/fsdp_rollback_worker.py OUT.json

An injected gradient-norm spike at RL step 3 rolls the sharded model back to the newest
checkpoint; right after it, the gathered weights and optimizer state must equal the
checkpoint's files. Rank 0 writes what it found to OUT.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from conftest import TINY_RUN
from safetensors.torch import load_file
from test_fault_injection import BASE, Faults, gstep, spikes

from steerl import distributed as ddp
from steerl import fsdp
from steerl.checkpoint import latest_checkpoint
from steerl.config import load_config
from steerl.trainer import Callback, Trainer

AT = 3  # the RL step whose gradient norm spikes


class AfterRollback(Callback):
    def __init__(self):
        self.found: dict = {}

    def on_step_end(self, trainer, step, metrics):
        if step != gstep(AT):
            return
        weights = fsdp.full_state_dict(trainer.model)  # every rank gathers
        state = trainer.optimizer.state_dict()["state"]
        optim_sharded = any(fsdp.is_dtensor(v) for st in state.values() for v in st.values())
        optim = fsdp.full_optimizer_state(trainer.optimizer)
        if not ddp.is_main():
            return
        path = latest_checkpoint(trainer.run_dir)
        saved = load_file(path / "model.safetensors")
        saved_optim = torch.load(path / "optimizer.pt", weights_only=False)["state"]
        self.found = {
            "action": metrics["stability/action"],
            "rolled_back_to": metrics["stability/rolled_back_to"],
            "weights_match": all(torch.equal(weights[k].cpu(), saved[k]) for k in saved),
            "optimizer_matches": all(
                torch.equal(optim["state"][i][k].cpu(), v)
                for i, st in saved_optim.items()
                for k, v in st.items()
                if torch.is_tensor(v)
            ),
            "sharded": any(fsdp.is_dtensor(p) for p in trainer.model.parameters()),
            "optimizer_sharded": optim_sharded,  # restored as shards, not whole tensors
        }


def main(out: str) -> None:
    cfg = load_config(
        "default",
        [*TINY_RUN, *BASE, spikes("rollback"), "train.save_every=1", "train.distributed=fsdp"],
    )
    run_dir = Path(out).parent / "run"  # one directory for all ranks, as a real run has
    probe = AfterRollback()
    trainer = Trainer(cfg, run_dir, callbacks=[probe])
    Faults(trainer, spike={AT})
    summary = trainer.train()
    if ddp.is_main():
        Path(out).write_text(json.dumps({**probe.found, "completed": summary["completed"]}))
    ddp.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
