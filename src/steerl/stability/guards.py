"""Guards: the non-finite step guard (with a diagnosis) and threshold guards on metrics."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

#: What a tripped threshold guard asks for.
GUARD_ACTIONS = ("skip", "lower_lr", "rollback", "stop")


class StabilityError(RuntimeError):
    """The run cannot go on safely (too many skips or rollbacks, a guard asked to stop)."""


class NonFiniteError(StabilityError):
    """Too many consecutive non-finite steps."""


def grad_norm_and_clip(
    params: Iterable[torch.nn.Parameter], max_norm: float | None
) -> tuple[float, float]:
    """Global L2 norm of the gradients before and after clipping to ``max_norm``.

    Kept for existing callers; ``GradClipper`` implements every clipping mode.
    """
    params = [p for p in params if p.grad is not None]
    if not params:
        return 0.0, 0.0
    from steerl.stability.clipping import clip_grad_norm

    pre_f = clip_grad_norm(params, max_norm if max_norm else float("inf"))
    post = min(pre_f, max_norm) if max_norm and math.isfinite(pre_f) else pre_f
    return pre_f, post


# --------------------------------------------------------------------------- non-finite
@dataclass
class Diagnosis:
    """Where the non-finite values of a step are."""

    terms: list[str] = field(default_factory=list)  # loss terms with a non-finite value
    groups: list[str] = field(default_factory=list)  # parameter groups touched, in order
    grads: list[str] = field(default_factory=list)  # parameters with a non-finite gradient
    weights: list[str] = field(default_factory=list)  # parameters whose values are non-finite

    @property
    def empty(self) -> bool:
        return not (self.terms or self.grads or self.weights)

    def __str__(self) -> str:
        if self.empty:
            return "no non-finite loss term or parameter found"
        parts = []
        if self.terms:
            parts.append(f"non-finite loss term(s): {', '.join(self.terms)}")
        if self.grads:
            parts.append(
                f"non-finite gradients in {len(self.grads)} parameter(s): {_few(self.grads)}"
            )
        if self.weights:
            parts.append(
                f"non-finite weights in {len(self.weights)} parameter(s): {_few(self.weights)}"
            )
        if self.groups:
            parts.append(f"parameter group(s): {_few(self.groups)}")
        return "; ".join(parts)


def _few(names: list[str], n: int = 8) -> str:
    more = f" (+{len(names) - n} more)" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def param_group_of(name: str) -> str:
    """The group of a parameter name: up to the first layer index (``model.layers.3``), else
    its module (``model.embed_tokens``, ``lm_head``)."""
    parts = name.split(".")
    for i, p in enumerate(parts):
        if p.isdigit():
            return ".".join(parts[: i + 1])
    return ".".join(parts[:-1]) or name


def diagnose(
    terms: Mapping[str, float] | None = None,
    named_params: Iterable[tuple[str, torch.Tensor]] | None = None,
) -> Diagnosis:
    """Name the loss terms and parameters (and their groups) holding NaN/inf values.

    ``terms``: loss term name -> value (``{"policy": 0.3, "kl": nan}``); ``named_params``:
    ``model.named_parameters()`` (checks each gradient and each weight).
    """
    d = Diagnosis()
    for k, v in (terms or {}).items():
        try:
            if not math.isfinite(float(v)):
                d.terms.append(k)
        except (TypeError, ValueError):
            continue
    for name, p in named_params or ():
        bad = False
        with torch.no_grad():
            if p.grad is not None and not all_finite(p.grad):
                d.grads.append(name)
                bad = True
            if not all_finite(p.detach()):
                d.weights.append(name)
                bad = True
        g = param_group_of(name)
        if bad and g not in d.groups:
            d.groups.append(g)
    return d


def all_finite(t: torch.Tensor, chunk: int = 1 << 22) -> bool:
    """True when every value of ``t`` is finite, checked in chunks of ``chunk`` values.

    ``torch.isfinite`` on a whole tensor allocates several temporaries of its size (0.63 GiB
    for a 152k x 896 bf16 gradient, on a step that is already near the memory peak).
    """
    from steerl.fsdp import local

    flat = local(t.detach()).reshape(-1)  # a sharded tensor: this rank's shard
    ok = torch.ones((), dtype=torch.bool, device=flat.device)
    for part in flat.split(chunk):
        ok &= torch.isfinite(part).all()
    return bool(ok)


class NonFiniteGuard:
    """Skips steps whose loss or gradient norm is NaN/inf; stops after N in a row.

    ``check(loss, grad_norm) -> bool`` (True: apply the step). Pass ``terms`` and
    ``named_params`` to ``check`` (or call ``diagnose`` yourself on a bad step) and the stop
    error names the loss terms and parameters that went non-finite.
    """

    def __init__(self, enabled: bool, max_consecutive: int):
        self.enabled = enabled
        self.max_consecutive = max_consecutive
        self.skipped = 0
        self.consecutive = 0
        self.last_diagnosis: Diagnosis | None = None

    def diagnose(
        self,
        terms: Mapping[str, float] | None = None,
        named_params: Iterable[tuple[str, torch.Tensor]] | None = None,
    ) -> Diagnosis:
        """Diagnose the current step and remember it for the stop message."""
        self.last_diagnosis = diagnose(terms, named_params)
        return self.last_diagnosis

    def check(
        self,
        loss: float,
        grad_norm: float,
        *,
        terms: Mapping[str, float] | None = None,
        named_params: Iterable[tuple[str, torch.Tensor]] | None = None,
    ) -> bool:
        """True if the step may be applied."""
        ok = math.isfinite(loss) and math.isfinite(grad_norm)
        if ok or not self.enabled:
            self.consecutive = 0
            self.last_diagnosis = None
            return True
        if terms is not None or named_params is not None:
            self.diagnose(terms, named_params)
        self.skipped += 1
        self.consecutive += 1
        if self.consecutive >= self.max_consecutive:
            last = self.last_diagnosis
            diag = f" Diagnosis of the last one: {last}." if last is not None else ""
            raise NonFiniteError(
                f"{self.consecutive} consecutive steps had a non-finite loss ({loss}) or "
                f"gradient norm ({grad_norm}); stopping.{diag} Lower optim.lr, set "
                "stability.max_grad_norm, or check rewards for inf values."
            )
        return False

    def state_dict(self) -> dict:
        return {"skipped": self.skipped, "consecutive": self.consecutive}

    def load_state_dict(self, state: dict) -> None:
        self.skipped, self.consecutive = int(state["skipped"]), int(state["consecutive"])


# --------------------------------------------------------------------------- thresholds
class ThresholdGuard:
    """Trips when ``metric`` goes above ``limit`` (``kind="max"``) or below it (``"min"``).

    ``observe(value) -> bool``: True when tripped. Non-finite values do not trip it.
    """

    def __init__(self, metric: str, limit: float, kind: str, action: str = "skip"):
        if kind not in ("max", "min"):
            raise ValueError(f"guard {metric}: kind={kind!r}, allowed: max, min")
        if action not in GUARD_ACTIONS:
            raise ValueError(f"guard {metric}: action={action!r}, allowed: {GUARD_ACTIONS}")
        self.metric, self.limit, self.kind, self.action = metric, float(limit), kind, action
        self.hits = 0

    def observe(self, value: float) -> bool:
        value = float(value)
        if not math.isfinite(value):
            return False
        tripped = value > self.limit if self.kind == "max" else value < self.limit
        self.hits += int(tripped)
        return tripped

    def describe(self, value: float) -> str:
        rel = "above the maximum" if self.kind == "max" else "below the minimum"
        return f"guard {self.metric}={value:.6g} is {rel} {self.limit:.6g}"

    def state_dict(self) -> dict[str, Any]:
        return {"hits": self.hits}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.hits = int(state.get("hits", 0))


#: ``stability.guards`` keys -> (metric, kind).
GUARD_METRICS = {
    "kl_max": ("train/kl", "max"),
    "entropy_min": ("train/entropy", "min"),
    "clip_fraction_max": ("train/clip_fraction", "max"),
}


def build_threshold_guards(cfg: Any) -> list[ThresholdGuard]:
    """The guards a ``GuardsConfig`` sets (keys left null are off)."""
    out = []
    for key, (metric, kind) in GUARD_METRICS.items():
        limit = getattr(cfg, key)
        if limit is not None:
            out.append(ThresholdGuard(metric, limit, kind, cfg.action))
    return out
