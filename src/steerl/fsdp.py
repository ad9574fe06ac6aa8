"""Sharded decoder layers (``train.distributed=fsdp``, FSDP2) under ``torchrun``.

:func:`shard_layers` applies ``fully_shard`` to every decoder layer; the embeddings, final
norm and LM head stay whole on every rank (the chunked LM head reads the head's weight
directly) and keep :func:`steerl.distributed.all_reduce_grads`. Gradients of sharded
parameters arrive reduce-scattered as sums, norms count each shard once
(:func:`grad_sq_norm`), and checkpoints hold whole tensors: gathered to rank 0
(:func:`full_state_dict`, :func:`full_optimizer_state`) and cut back into shards on load
(:func:`load_full_state_dict`, :func:`shard_optimizer_state`). Whether sharding is on is
:func:`steerl.distributed.sharded`.

The static sampler reads whole layers and captures their addresses in a CUDA graph, so under
sharding it runs on :class:`RolloutWeights`: a whole copy of the policy (its decoder layers
copied, the rest shared) taken before sharding and refreshed in place (every sharded
parameter gathered, one at a time) before each rollout.
"""

from __future__ import annotations

import copy
import os
from typing import Any

import torch
import torch.distributed as dist

from steerl.distributed import is_main, sharded


def is_dtensor(t: Any) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a sharded tensor; any other tensor as it is."""
    return t.to_local() if is_dtensor(t) else t


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules :func:`shard_layers` shards: those of the model's ``_no_split_modules``
    classes (its decoder layers)."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    return [m for m in model.modules() if type(m).__name__ in names]


def _layer_param_ids(layers: list[torch.nn.Module]) -> set[int]:
    return {id(p) for layer in layers for p in layer.parameters()}


def shard_layers(model: torch.nn.Module) -> int:
    """FSDP2 over every decoder layer of ``model`` (``fully_shard`` per layer), summing the
    gradients over ranks as :func:`all_reduce_grads` does. The rest (embeddings, final norm,
    LM head: read directly by the chunked head) stays replicated. Returns the layers sharded.

    The module holding the layers (``model.model`` of a causal LM: every forward, including
    the chunked head's hidden-state pass, goes through it) is then wrapped as FSDP's root with
    its own parameters ignored (they stay whole): without a root every layer is its own root,
    and FSDP keeps a root's parameters gathered from its forward to its backward, so the whole
    model would be gathered at once (measured on a 14B model: 120 GiB per rank, as much as
    unsharded).
    """
    import inspect

    from torch.distributed.fsdp import fully_shard

    layers = decoder_layers(model)
    in_layers = _layer_param_ids(layers)
    for layer in layers:
        fully_shard(layer)
        layer.set_gradient_divide_factor(1.0)  # sum, as the loss denominators are global
        force_sum = getattr(layer, "set_force_sum_reduction_for_comms", None)  # torch >= 2.8
        if force_sum is not None:
            force_sum(True)  # plain SUM (gloo has no PREMUL_SUM; NCCL's is a sum here too)
    if not layers:
        return 0
    if "ignored_params" in inspect.signature(fully_shard).parameters:  # torch >= 2.7
        root = _holder(model, layers)
        fully_shard(root, ignored_params={p for p in root.parameters() if id(p) not in in_layers})
    else:
        import warnings

        warnings.warn(
            f"torch {torch.__version__}: fully_shard has no ignored_params, so the sharded "
            "layers have no common FSDP root and each stays gathered from its forward to its "
            "backward (as much memory as unsharded weights); use torch >= 2.7",
            stacklevel=2,
        )
    return len(layers)


def _holder(model: torch.nn.Module, layers: list[torch.nn.Module]) -> torch.nn.Module:
    """The innermost module with a forward of its own that contains all of ``layers``."""
    names = [n.split(".") for n, m in model.named_modules() if any(m is x for x in layers)]
    prefix = os.path.commonprefix(names)  # element-wise: the common leading name parts
    while prefix:
        module = model.get_submodule(".".join(prefix))
        if (
            not isinstance(module, (torch.nn.ModuleList, torch.nn.ModuleDict))
            and module not in layers
        ):
            return module
        prefix = prefix[:-1]
    return model  # the layers sit directly in the top module (or it is their container)


class RolloutWeights:
    """A whole, frozen copy of the policy for the static sampler under sharded layers.

    Made from the policy before :func:`shard_layers`: the decoder layers are copied, the rest
    (embeddings, final norm, LM head: never sharded) is the policy's own parameters, shared,
    so it costs nothing and is always current. :meth:`refresh` copies the current layer
    weights into the copy in place (the addresses the sampler's CUDA graph captured stay
    valid), gathering each sharded parameter on every rank in turn: a collective, so every
    rank refreshes together. Costs one copy of the decoder layers' weights per rank (bf16: 2
    bytes per parameter, against the ~8 of the sharded training state it lets a card hold).
    """

    def __init__(self, model: torch.nn.Module) -> None:
        in_layers = _layer_param_ids(decoder_layers(model))
        shared = {id(p): p for p in model.parameters() if id(p) not in in_layers}
        self.model = copy.deepcopy(model, memo=dict(shared)).eval()  # the memo: not copied
        for p in self.model.parameters():
            if id(p) not in shared:
                p.requires_grad_(False)

    @torch.no_grad()
    def refresh(self, policy: torch.nn.Module) -> torch.nn.Module:
        """Copy ``policy``'s current layer weights (sharded or not) into the copy; returns it."""
        mine = dict(self.model.named_parameters())
        for name, p in policy.named_parameters():
            if mine[name] is not p:  # the shared (never sharded) ones are the policy's
                mine[name].copy_(p.full_tensor() if is_dtensor(p) else p)
        return self.model


def split_groups(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each optimizer parameter group as two with the same settings: its sharded parameters
    and its whole ones (torch's multi-tensor optimizer kernels refuse a list that mixes
    DTensors and plain tensors). Empty halves are left out, so without sharding every group
    comes back as it was."""
    out = []
    for g in groups:
        names = g.get("param_names")
        for want in (True, False):
            idx = [i for i, p in enumerate(g["params"]) if is_dtensor(p) == want]
            if idx:
                half = {**g, "params": [g["params"][i] for i in idx]}
                if names is not None:
                    half["param_names"] = [names[i] for i in idx]
                out.append(half)
    return out


def _whole(v: Any) -> Any:
    """A sharded tensor gathered (every rank takes part) to the CPU on rank 0; None on the
    other ranks, so no rank holds more than one whole tensor on its device at a time."""
    if not is_dtensor(v):
        return v.detach() if torch.is_tensor(v) else v
    t = v.full_tensor()
    return t.detach().cpu() if is_main() else None


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's state for rank 0 to write (a collective when layers are sharded;
    the other ranks get ``None`` for the sharded entries)."""
    return {k: _whole(v) for k, v in model.state_dict().items()}


def load_full_state_dict(model: torch.nn.Module, sd: dict[str, torch.Tensor]) -> None:
    """Copy whole tensors into ``model``, each rank keeping its shard of sharded ones."""
    from torch.distributed.tensor import distribute_tensor

    with torch.no_grad():
        for k, v in model.state_dict().items():
            if k not in sd:
                continue
            src = sd[k].to(device=local(v).device, dtype=v.dtype)
            if is_dtensor(v):
                src = distribute_tensor(src, v.device_mesh, v.placements)
            v.copy_(src)


def full_optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``optimizer.state_dict()`` with every sharded state tensor made whole for rank 0 (a
    collective, as :func:`full_state_dict`)."""
    sd = optimizer.state_dict()
    state = {i: {k: _whole(v) for k, v in st.items()} for i, st in sd["state"].items()}
    return {**sd, "state": state}


def shard_optimizer_state(optimizer: torch.optim.Optimizer, sd: dict[str, Any]) -> dict[str, Any]:
    """A whole-tensor optimizer state (:func:`full_optimizer_state`) cut to this rank's shards
    of the sharded parameters, ready for ``optimizer.load_state_dict``."""
    from torch.distributed.tensor import distribute_tensor

    params = [p for g in optimizer.param_groups for p in g["params"]]
    state = {}
    for i, st in sd["state"].items():
        p = params[int(i)]
        state[i] = {
            k: distribute_tensor(v.to(local(p).device), p.device_mesh, p.placements)
            if is_dtensor(p) and torch.is_tensor(v) and v.shape == p.shape
            else v
            for k, v in st.items()
        }
    return {**sd, "state": state}


def grad_sq_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """Sum of squares of ``grads`` over the whole model: shards summed over ranks, replicated
    gradients counted once (float32, on the first gradient's device)."""
    dev = local(grads[0]).device
    whole = torch.zeros((), device=dev)
    shards = torch.zeros((), device=dev)
    for g in grads:
        sq = local(g).detach().float().pow(2).sum().to(dev)
        if is_dtensor(g):
            shards += sq
        else:
            whole += sq
    if sharded():
        dist.all_reduce(shards)
    return whole + shards


def config_problems(cfg: Any) -> list[str]:
    """What ``train.distributed=fsdp`` does not support (yet)."""
    out = []
    if cfg.model.lora.enabled:
        out.append("model.lora.enabled=true with train.distributed=fsdp is not supported")
    if cfg.stability.clip in ("value", "agc"):
        out.append(
            f"stability.clip={cfg.stability.clip} with train.distributed=fsdp is not supported; "
            "use norm, adaptive or off"
        )
    if cfg.optim.name == "adafactor":
        out.append(
            "optim.name=adafactor factors each matrix over rows and columns, which "
            "train.distributed=fsdp shards; use adamw, adam or sgd"
        )
    return out
