"""One policy update on a fixed batch, alone or as a rank under ``torchrun`` (see test_distributed).

    python tests/ddp_worker.py OUT.pt                          # the whole batch, one process
    torchrun --nproc_per_node 2 tests/ddp_worker.py OUT.pt     # each rank a half of it
    torchrun --nproc_per_node 2 tests/ddp_worker.py OUT.pt fsdp  # and the layers sharded
    ... OUT.pt MODE KEY=VALUE ...                              # further recipe overrides

Rank 0 (or the only process) saves the SFT warm-up loss, the RL loss, the gradient norm, the
parameters after the update and the balancer state to OUT.pt; the two files must agree.
"""

from __future__ import annotations

import sys
import tempfile

import torch

from steerl import distributed as ddp
from steerl import fsdp
from steerl.config import load_config
from steerl.trainer import Trainer

OVERRIDES = [
    "model.device=cpu",
    "warmup.steps=1",  # one SFT step first: the same draw on every rank, sharded
    "warmup.batch_size=8",
    "curriculum.drop_zero_variance=false",
    "rollout.prompts_per_step=4",
    "rollout.group_size=4",
    "loss.epochs=2",  # a second optimizer step against the sampling policy's log-probs
    "loss.kl_coef=0.05",  # a reference model and its log-probs
    "loss.entropy_coef=0.01",
    "loss.micro_batch_size=4",  # several micro-batches per rank
    "loss.aux=[{name: sft, coef: 0.1}, {name: dpo, coef: 0.1}]",  # demonstrations, pairs
    "objectives.balancer=uncertainty",  # adaptive weights from the step's (global) losses
    "optim.lr=0.01",
    "logging.progress=false",
]


def _whole(model) -> torch.Tensor:
    """Every parameter, flattened, whole (sharded ones gathered: a collective)."""
    return torch.cat(
        [
            (p.full_tensor() if fsdp.is_dtensor(p) else p).detach().flatten()
            for p in model.parameters()
        ]
    )


def main(out: str, mode: str = "auto", *extra: str) -> None:
    cfg = load_config("tiny", [*OVERRIDES, f"train.distributed={mode}", *extra])
    with tempfile.TemporaryDirectory() as run_dir:
        tr = Trainer(cfg, run_dir)
        warm = tr.warmup_step()  # then the RL optimizer and the reference are set up
        n = 16  # 4 prompts x 4 completions, the same on every rank
        groups = tr.task.train[:4]
        prompts = [p.text for p in groups for _ in range(4)]
        completions = [str(i) * (1 + i % 3) + "=" * (i % 2) for i in range(n)]
        batch = tr.make_batch(prompts, completions)
        adv = torch.randn(n, generator=torch.Generator().manual_seed(0))
        reward = torch.randint(0, 3, (n,), generator=torch.Generator().manual_seed(1)).float()
        start = _whole(tr.model)
        rows = torch.tensor(ddp.shard(list(range(n))))  # this rank's whole groups
        mine = ddp.shard(groups)
        aux = tr._aux_batch(reward[rows], mine)
        out_m = tr._policy_update(batch.index(rows), adv[rows], aux=aux, step=0, lr=tr._set_lr(0))
        params = _whole(tr.model)
        if ddp.is_main():
            torch.save(
                {
                    "warmup_loss": warm["warmup/loss"],
                    "loss": out_m["train/loss"],
                    "grad_norm": out_m["train/grad_norm"],
                    "params": params,
                    "start": start,
                    "balancer": tr.balancer.state_dict()["log_vars"],
                },
                out,
            )
    ddp.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
