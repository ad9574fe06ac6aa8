"""Data-parallel training over ``torch.distributed`` (launched by ``torchrun``).

Every rank holds the whole model, samples its own slice of the step's prompts, generates and
scores whole groups (so group advantages stay local) and backpropagates its share of the
loss. Loss denominators count the *global* batch and gradients are summed over ranks before
clipping, so the update equals the one-process update on the same global batch::

    torchrun --nproc_per_node 2 -m steerl train RECIPE ...

Rank 0 writes the run directory (logs, checkpoints, report); every rank reads the same
reduced metrics, so stop, skip and rollback decisions agree. Without ``torchrun`` (or with
``train.distributed=off``) every helper here is a no-op on one process.

``train.distributed=fsdp`` also shards every decoder layer over the ranks (FSDP2; the
sharding itself lives in :mod:`steerl.fsdp`): :func:`sharded` says whether it is on, and
:func:`all_reduce_grads` leaves the reduce-scattered sharded gradients alone.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

#: ``train.distributed=fsdp`` under torchrun: decoder layers sharded with FSDP2 (set by init).
_SHARDED = False


def launched() -> int:
    """World size announced by ``torchrun`` (``WORLD_SIZE``), 1 without it."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init(mode: str = "auto", device: str = "auto") -> None:
    """Join the process group ``torchrun`` set up (idempotent).

    ``mode``: ``auto`` joins when launched with more than one process, ``off`` refuses to run
    under such a launch (every process would write the same run directory). The backend is
    NCCL when the model goes to CUDA, else gloo; each rank takes GPU ``LOCAL_RANK``.
    """
    from steerl.config import ConfigError

    global _SHARDED
    world = launched()
    if world <= 1 or is_active():
        _SHARDED = _SHARDED or (mode == "fsdp" and world > 1)
        return
    _SHARDED = mode == "fsdp"
    if mode == "off":
        raise ConfigError(
            f"key 'train.distributed': got 'off' but this process was launched with "
            f"WORLD_SIZE={world} (torchrun); use train.distributed=auto or launch one process"
        )
    cuda = torch.cuda.is_available() and device != "cpu"
    if cuda and device not in ("auto", "cuda"):
        raise ConfigError(
            f"key 'model.device': got {device!r}, but under torchrun every rank takes the GPU "
            "LOCAL_RANK; use model.device=auto or cuda"
        )
    timeout = timedelta(minutes=30)
    if cuda:
        local = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(local)
        dist.init_process_group("nccl", timeout=timeout, device_id=local)
    else:
        dist.init_process_group("gloo", timeout=timeout)


def shutdown(together: bool = True) -> None:
    """Tear the process group down; ``together``: after a barrier, on every rank at once.

    Without the barrier a rank could destroy its group (and rank 0 its store) while another
    still runs its last collective, which aborts that rank at exit. After an error on one
    rank pass ``together=False``: the others may never reach the barrier.
    """
    if is_active():
        if together:
            dist.barrier()
        dist.destroy_process_group()


def sharded() -> bool:
    """Whether the decoder layers are sharded over the ranks (``train.distributed=fsdp``)."""
    return _SHARDED and is_active()


def is_active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_active() else 0


def world_size() -> int:
    return dist.get_world_size() if is_active() else 1


def is_main() -> bool:
    """Rank 0 (or the only process): the one that writes files and prints."""
    return rank() == 0


def barrier() -> None:
    if is_active():
        dist.barrier()


def shard(items: list) -> list:
    """This rank's contiguous slice of ``items`` (``len(items)`` divisible by the world)."""
    w = world_size()
    if w == 1:
        return items
    k = len(items) // w
    return items[rank() * k : (rank() + 1) * k]


def shard_uneven(items: list) -> list:
    """Every ``world``-th item from this rank's index on (any length; for evaluation)."""
    return items[rank() :: world_size()] if is_active() else items


def all_sum(values: list[float] | torch.Tensor) -> Any:
    """Sum of ``values`` over ranks (a list of floats in, a list out; a tensor in place)."""
    if not is_active():
        return values
    if isinstance(values, torch.Tensor):
        dist.all_reduce(values)
        return values
    t = torch.tensor(values, dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return t.tolist()


def all_gather_objects(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` (``[obj]`` on one process)."""
    if not is_active():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def cat_ranks(x: torch.Tensor) -> torch.Tensor:
    """Rows of every rank concatenated in rank order (small tensors: goes through the CPU)."""
    if not is_active():
        return x
    parts = all_gather_objects(x.detach().cpu())
    return torch.cat(parts).to(x.device)


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not is_active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def any_rank(flag: bool) -> bool:
    """True on every rank when it is true on some rank."""
    if not is_active():
        return flag
    t = torch.tensor([float(flag)], device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def sum_dicts(d: dict[str, float]) -> dict[str, float]:
    """Per key, the sum over ranks (keys missing on a rank count as 0; rank 0's order first).

    Through pickled objects, so ranks whose micro-batches produced other metric names (an
    auxiliary term with no demonstrations on this rank) still line up.
    """
    if not is_active():
        return d
    out: dict[str, float] = {}
    for part in all_gather_objects(d):
        for k, v in part.items():
            out[k] = out.get(k, 0.0) + float(v)
    return out


def mean_metrics(m: dict[str, Any]) -> dict[str, Any]:
    """Per key, the mean over the ranks that have it (numbers only; others: rank 0's).

    Values already equal on every rank (global sums, learning rates) stay as they are.
    """
    if not is_active():
        return m
    parts = all_gather_objects(m)
    out: dict[str, Any] = dict(parts[0])
    for k in {k for p in parts for k in p}:
        vals = [p[k] for p in parts if k in p]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
            out[k] = float(sum(vals) / len(vals)) if len({*vals}) > 1 else vals[0]
        elif k not in out:
            out[k] = vals[0]
    return out


def all_reduce_grads(params: Any, bucket_mb: float = 256.0) -> None:
    """Sum every trainable parameter's ``.grad`` over ranks, in flat buckets.

    A parameter without a gradient on this rank counts as zeros, so every rank calls the same
    collectives. Called after the balancer's backward and before clipping, so the clip norm,
    the spike checks and the optimizer see the global gradient on every rank.
    """
    if not is_active():
        return
    # sharded parameters' gradients were reduce-scattered (summed) by FSDP already
    from steerl.fsdp import is_dtensor

    params = [p for p in params if p.requires_grad and not is_dtensor(p)]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    limit = int(bucket_mb * 2**20)
    bucket: list[torch.Tensor] = []
    size = 0
    for p in params:
        if bucket and (size + p.grad.numel() * p.grad.element_size() > limit or
                       p.grad.dtype != bucket[0].dtype):  # fmt: skip
            _reduce_bucket(bucket)
            bucket, size = [], 0
        bucket.append(p.grad)
        size += p.grad.numel() * p.grad.element_size()
    if bucket:
        _reduce_bucket(bucket)


def check_config(cfg: Any, world: int) -> list[str]:
    """Options whose result would differ from one process on the same global batch."""
    if world <= 1:
        return []
    problems = []
    B = cfg.rollout.prompts_per_step
    if B % world:
        problems.append(
            f"rollout.prompts_per_step={B} does not divide by the {world} ranks (WORLD_SIZE); "
            "each rank samples an equal share of the step's prompts"
        )
    wb = cfg.warmup.batch_size
    if cfg.warmup.steps and wb % world:
        problems.append(f"warmup.batch_size={wb} does not divide by the {world} ranks")
    b = cfg.objectives.balancer
    if b not in ("static", "scheduled", "uncertainty", "dwa", "famo"):
        problems.append(
            f"objectives.balancer={b} takes per-term gradients of each rank's share, which do "
            "not add up across ranks; under torchrun use a loss-level balancer (static, "
            "scheduled, uncertainty, dwa, famo)"
        )
    if cfg.loss.advantage == "batch_std":
        problems.append(
            "loss.advantage=batch_std scales by the std over the whole batch, which each rank "
            "only sees a share of; under torchrun use group_mean_std, group_mean or rloo"
        )
    if cfg.train.distributed == "fsdp":
        from steerl.fsdp import config_problems

        problems += config_problems(cfg)
    c = cfg.objectives.combine
    if c == "gdpo":
        problems.append(
            "objectives.combine=gdpo standardises the advantages over the whole batch, which "
            "each rank only sees a share of; under torchrun use weighted_sum or tchebycheff"
        )
    if c in ("tchebycheff", "smooth_tchebycheff") and cfg.objectives.ideal is None:
        problems.append(
            f"objectives.combine={c} with objectives.ideal=null takes the ideal point from the "
            "batch, which each rank only sees a share of; set objectives.ideal under torchrun"
        )
    return problems


def _reduce_bucket(grads: list[torch.Tensor]) -> None:
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset : offset + n].view_as(g))
        offset += n


def _comm_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
