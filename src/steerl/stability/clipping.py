"""Gradient clipping: one ``GradClipper`` for every mode of ``stability.clip``.

Modes:

- ``norm``: scale all gradients so their global L2 norm is at most ``max_grad_norm``
  (``torch.nn.utils.clip_grad_norm_``); ``max_grad_norm: null`` turns clipping off.
- ``value``: clamp every gradient element to ``[-clip_value, clip_value]``
  (``torch.nn.utils.clip_grad_value_``).
- ``adaptive``: global-norm clipping with a threshold learned from the run: the
  ``adaptive.percentile``-th percentile of the last ``adaptive.window`` pre-clip norms (or
  ``adaptive.multiple`` x their median). Until ``adaptive.min_history`` norms are known the
  threshold is ``max_grad_norm`` (null: no clipping). Non-finite norms never enter the history.
- ``agc``: adaptive gradient clipping (Brock et al. 2021, arXiv:2102.06171): per unit,
  ``||g|| <= agc_clip * max(||w||, agc_eps)``; a unit is a row of a weight matrix (dimension
  0 of an N-d tensor), or the whole tensor for 1-d parameters (biases, norms).
- ``none``: no clipping (the norm is still measured).

``clip(params)`` always reports the global gradient L2 norm before and after clipping.
A step with a non-finite norm is left untouched (the non-finite guard skips it).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

CLIP_MODES = ("norm", "value", "adaptive", "agc", "none")


@dataclass(frozen=True)
class ClipResult:
    pre_norm: float  # global L2 norm of the gradients before clipping
    post_norm: float  # ... and after
    clipped: bool  # whether any gradient was changed
    threshold: float | None = None  # norm threshold used (norm/adaptive), clip_value, agc_clip

    def metrics(self, prefix: str = "train/") -> dict[str, float]:
        """``grad_norm``, ``grad_norm_clipped``, ``grad_clipped`` (0/1) and ``clip_threshold``."""
        out = {
            f"{prefix}grad_norm": self.pre_norm,
            f"{prefix}grad_norm_clipped": self.post_norm,
            f"{prefix}grad_clipped": float(self.clipped),
        }
        if self.threshold is not None:
            out[f"{prefix}clip_threshold"] = self.threshold
        return out


def global_grad_norm(params: Iterable[torch.nn.Parameter]) -> float:
    """L2 norm of all gradients together (0.0 when there are none)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    from steerl import distributed as ddp

    if ddp.sharded():  # FSDP: each rank holds shards of some gradients
        from steerl.fsdp import grad_sq_norm

        return math.sqrt(float(grad_sq_norm(grads)))
    dev = grads[0].device
    norms = [torch.linalg.vector_norm(g.detach().float()).to(dev) for g in grads]
    return float(torch.linalg.vector_norm(torch.stack(norms)))


def clip_grad_norm(
    params: list[torch.nn.Parameter], max_norm: float, norm: float | None = None
) -> float:
    """``torch.nn.utils.clip_grad_norm_`` (every gradient times ``min(1, max_norm / (norm +
    1e-6))``; returns the norm before), also where some gradients are FSDP shards, which
    ``clip_grad_norm_`` cannot mix with whole ones. There ``norm``, the caller's
    :func:`global_grad_norm` of ``params``, saves a second pass and its all-reduce."""
    from steerl import distributed as ddp

    if not ddp.sharded():
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    total = global_grad_norm(params) if norm is None else norm
    coef = min(1.0, max_norm / (total + 1e-6))
    if coef < 1.0:
        with torch.no_grad():
            for p in params:
                p.grad.mul_(coef)
    return total


def percentile(values: Iterable[float], q: float) -> float:
    """The ``q``-th percentile (0 < q <= 100) with linear interpolation (numpy's default)."""
    xs = sorted(values)
    if not xs:
        raise ValueError("percentile of no values")
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


class GradClipper:
    """Clips gradients in place according to a ``StabilityConfig`` (see the module doc).

    Call ``clip(model.parameters())`` after backward and before ``optimizer.step()``. The
    adaptive mode keeps a history of norms: save ``state_dict()`` with the checkpoint.
    """

    def __init__(self, cfg: Any):
        self.mode: str = cfg.clip
        if self.mode not in CLIP_MODES:
            raise ValueError(f"stability.clip={self.mode!r}; allowed: {', '.join(CLIP_MODES)}")
        self.max_norm: float | None = cfg.max_grad_norm
        self.clip_value: float = cfg.clip_value
        self.agc_clip: float = cfg.agc_clip
        self.agc_eps: float = cfg.agc_eps
        ad = cfg.adaptive
        self.percentile: float = ad.percentile
        self.multiple: float | None = ad.multiple
        self.min_history: int = ad.min_history
        self.history: deque[float] = deque(maxlen=ad.window)
        self.calls = 0
        self.clipped_calls = 0

    # ------------------------------------------------------------------ thresholds
    def threshold(self) -> float | None:
        """The global-norm threshold the next ``clip`` uses (norm/adaptive); None: no clip."""
        if self.mode == "norm":
            return self.max_norm
        if self.mode != "adaptive":
            return None
        if len(self.history) < self.min_history:
            return self.max_norm
        if self.multiple is not None:
            return self.multiple * percentile(self.history, 50.0)
        return percentile(self.history, self.percentile)

    # ------------------------------------------------------------------ clipping
    def clip(self, params: Iterable[torch.nn.Parameter]) -> ClipResult:
        params = [p for p in params if p.grad is not None]
        self.calls += 1
        if not params:
            return ClipResult(0.0, 0.0, False, self.threshold())
        if self.mode in ("norm", "adaptive"):
            res = self._clip_norm(params, self.threshold())
            if self.mode == "adaptive" and math.isfinite(res.pre_norm):
                self.history.append(res.pre_norm)
        elif self.mode == "value":
            res = self._clip_value(params)
        elif self.mode == "agc":
            res = self._clip_agc(params)
        else:
            pre = global_grad_norm(params)
            res = ClipResult(pre, pre, False, None)
        self.clipped_calls += int(res.clipped)
        return res

    def _clip_norm(self, params: list[torch.nn.Parameter], max_norm: float | None) -> ClipResult:
        pre = global_grad_norm(params)
        if max_norm is None or not math.isfinite(pre) or pre <= max_norm:
            return ClipResult(pre, pre, False, max_norm)
        total = clip_grad_norm(params, max_norm, norm=pre)
        return ClipResult(pre, total * min(1.0, max_norm / (total + 1e-6)), True, max_norm)

    @torch.no_grad()
    def _clip_value(self, params: list[torch.nn.Parameter]) -> ClipResult:
        pre = global_grad_norm(params)
        if not math.isfinite(pre):
            return ClipResult(pre, pre, False, self.clip_value)
        dev = params[0].grad.device
        maxes = [p.grad.detach().abs().max().float().to(dev) for p in params if p.grad.numel()]
        if not maxes or float(torch.stack(maxes).max()) <= self.clip_value:
            return ClipResult(pre, pre, False, self.clip_value)
        torch.nn.utils.clip_grad_value_(params, self.clip_value)
        return ClipResult(pre, global_grad_norm(params), True, self.clip_value)

    @torch.no_grad()
    def _clip_agc(self, params: list[torch.nn.Parameter]) -> ClipResult:
        pre = global_grad_norm(params)
        if not math.isfinite(pre):
            return ClipResult(pre, pre, False, self.agc_clip)
        dev = params[0].grad.device
        n_over = torch.zeros((), device=dev)
        for p in params:  # no host sync per parameter: one at the end
            g = p.grad
            if not g.numel():
                continue
            max_g = unit_norms(p.detach()).clamp_min(self.agc_eps) * self.agc_clip
            g_norm = unit_norms(g.detach())
            over = g_norm > max_g
            scale = torch.where(over, max_g / g_norm.clamp_min(1e-6), torch.ones_like(g_norm))
            g.mul_(scale.to(g.dtype))
            n_over += over.sum().to(dev)
        clipped = bool(n_over > 0)
        post = global_grad_norm(params) if clipped else pre
        return ClipResult(pre, post, clipped, self.agc_clip)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "history": list(self.history),
            "calls": self.calls,
            "clipped_calls": self.clipped_calls,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.history.clear()
        self.history.extend(float(x) for x in state.get("history", []))
        self.calls = int(state.get("calls", 0))
        self.clipped_calls = int(state.get("clipped_calls", 0))


def unit_norms(t: torch.Tensor) -> torch.Tensor:
    """AGC unit-wise L2 norms, shaped to broadcast against ``t``: one per row (dimension 0)
    of an N-d tensor (kept dims), a single norm for a 0-d/1-d tensor."""
    x = t.float()
    if x.ndim <= 1:
        return torch.linalg.vector_norm(x).reshape([1] * max(x.ndim, 0))
    return torch.linalg.vector_norm(x, dim=tuple(range(1, x.ndim)), keepdim=True)
