"""Schedules: pure functions of the step (``value(step) -> float``), plus the KL controller.

Learning-rate schedules (``WarmupDecay``) return a multiplier of the peak rate:

- warm-up over ``warmup_steps``: a straight line from ``warmup_start`` (a fraction of the
  peak, default 0) to the peak, in ``warmup_steps`` equal increments; step ``k < warmup_steps``
  gets ``warmup_start + (1 - warmup_start) * (k + 1) / warmup_steps`` (so the first step is
  never at LR 0, and step ``warmup_steps - 1`` is at the peak);
- then a shape: ``constant`` (the peak), ``linear`` / ``cosine`` decay to ``min_ratio`` at
  ``total_steps``, ``polynomial`` (``(1 - t) ** power``), or ``wsd`` (warmup-stable-decay: the
  peak until the last ``decay_fraction`` of the run, then a linear or cosine decay to
  ``min_ratio`` at ``total_steps``). Steps past ``total_steps`` stay at ``min_ratio``.

``CoefSchedule`` uses the same shapes for absolute values (the KL coefficient, a reward's
weight): warm-up from ``warmup_start`` to ``start``, then from ``start`` to ``end``.

Every schedule is a frozen dataclass whose value depends on the step only, so a resumed run
gets exactly the values of an uninterrupted one without saving anything. The adaptive KL
controller is the stateful exception: it has ``state_dict()`` / ``load_state_dict()``.

``param_groups(model, cfg, base_lr)`` builds torch optimizer parameter groups with per-group
LR scales (``schedule.param_groups``); each group carries ``name``, ``lr_scale`` and
``param_names`` so the trainer sets ``group["lr"] = lr * group["lr_scale"]`` every step.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from steerl.registry import Registry

SCHEDULES: Registry = Registry("schedule")

#: The shapes ``WarmupDecay`` and ``CoefSchedule`` understand.
SHAPES = ("constant", "linear", "cosine", "wsd", "polynomial")
DECAY_SHAPES = ("linear", "cosine")


def _decay(shape: str, frac: float, power: float = 1.0) -> float:
    """1 at ``frac = 0`` falling to 0 at ``frac = 1``."""
    frac = min(1.0, max(0.0, frac))
    if shape == "linear":
        return 1.0 - frac
    if shape == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * frac))
    if shape == "polynomial":
        return (1.0 - frac) ** power
    raise ValueError(f"unknown decay shape {shape!r}")


@dataclass(frozen=True)
class WarmupDecay:
    """Warm-up then a decay shape; ``value(step)`` is the LR multiplier in [min_ratio, 1].

    Positional arguments are ``(shape, total_steps, warmup_steps, min_ratio)``; the rest are
    keywords: ``warmup_start`` (fraction of the peak the warm-up starts from), ``decay_fraction``
    and ``decay_shape`` (``wsd``: the share of the run spent decaying, linear or cosine),
    ``power`` (``polynomial``).
    """

    shape: str
    total_steps: int
    warmup_steps: int = 0
    min_ratio: float = 0.0
    warmup_start: float = 0.0
    decay_fraction: float = 0.2
    decay_shape: str = "linear"
    power: float = 1.0

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(
                f"unknown schedule shape {self.shape!r}; known shapes: {', '.join(SHAPES)}"
            )
        if self.decay_shape not in DECAY_SHAPES:
            raise ValueError(
                f"decay_shape={self.decay_shape!r}; allowed: {', '.join(DECAY_SHAPES)}"
            )
        if self.total_steps < 0 or self.warmup_steps < 0:
            raise ValueError(
                f"total_steps={self.total_steps} and warmup_steps={self.warmup_steps} must be >= 0"
            )
        for name in ("min_ratio", "warmup_start", "decay_fraction"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name}={v} must be in [0, 1] (a fraction of the peak/run)")
        if not self.power > 0:
            raise ValueError(f"power={self.power} must be > 0")

    @property
    def decay_start(self) -> int:
        """First step of the decay phase (``wsd``: after the stable phase)."""
        if self.shape == "wsd":
            decay_steps = wsd_decay_steps(self.total_steps, self.decay_fraction)
            return max(self.warmup_steps, self.total_steps - decay_steps)
        return self.warmup_steps

    def value(self, step: int) -> float:
        w = self.warmup_steps
        if w and step < w:
            s = self.warmup_start
            return s + (1.0 - s) * (max(step, 0) + 1) / w
        if self.shape == "constant":
            return 1.0
        start = self.decay_start
        if step < start:  # wsd's stable phase
            return 1.0
        span = max(1, self.total_steps - start)
        frac = (step - start) / span
        if self.shape == "wsd":
            f = _decay(self.decay_shape, frac)
        else:
            f = _decay(self.shape, frac, self.power)
        return self.min_ratio + (1.0 - self.min_ratio) * f


def wsd_decay_steps(total_steps: int, decay_fraction: float) -> int:
    """Steps ``wsd`` spends decaying: ``decay_fraction`` of the run, rounded, at least 1."""
    if decay_fraction <= 0 or total_steps <= 0:
        return 0
    return max(1, round(decay_fraction * total_steps))


for _shape, _doc in [
    ("constant", "Linear warm-up, then the peak value"),
    ("linear", "Linear warm-up, then linear decay to the minimum"),
    ("cosine", "Linear warm-up, then cosine decay to the minimum"),
    (
        "wsd",
        "Warmup-stable-decay: warm-up, the peak, then linear/cosine decay over the last "
        "decay_fraction of the run",
    ),
    ("polynomial", "Linear warm-up, then (1 - t) ** power decay to the minimum"),
]:
    SCHEDULES.register(_shape, _doc)(WarmupDecay)


def lr_schedule(cfg: Any, total_steps: int) -> WarmupDecay:
    """The LR multiplier of a ``ScheduleConfig`` over a run of ``total_steps`` steps."""
    return WarmupDecay(
        cfg.name,
        total_steps,
        cfg.warmup_steps,
        cfg.min_lr_ratio,
        warmup_start=cfg.warmup_start,
        decay_fraction=cfg.decay_fraction,
        decay_shape=cfg.decay_shape,
        power=cfg.power,
    )


# --------------------------------------------------------------------------- coefficients
@dataclass(frozen=True)
class CoefSchedule:
    """An absolute value over the run: warm-up from ``warmup_start`` to ``start``, then the
    shape from ``start`` to ``end`` (``end=None``: stays at ``start``).

    ``end`` may be above ``start`` (a coefficient that ramps up). ``value(step)`` is a pure
    function of the step, like ``WarmupDecay`` (whose shapes and keywords it shares).
    """

    shape: str
    start: float
    end: float | None = None
    total_steps: int = 0
    warmup_steps: int = 0
    warmup_start: float = 0.0
    decay_fraction: float = 0.2
    decay_shape: str = "linear"
    power: float = 1.0
    _base: WarmupDecay = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        base = WarmupDecay(
            self.shape,
            self.total_steps,
            self.warmup_steps,
            0.0,
            decay_fraction=self.decay_fraction,
            decay_shape=self.decay_shape,
            power=self.power,
        )
        object.__setattr__(self, "_base", base)

    @classmethod
    def from_config(cls, cfg: Any, total_steps: int) -> CoefSchedule:
        """From a ``CoefScheduleConfig``; its ``total_steps`` (if set) wins over the run's."""
        return cls(
            cfg.shape,
            cfg.start,
            cfg.end,
            cfg.total_steps or total_steps,
            cfg.warmup_steps,
            cfg.warmup_start,
            cfg.decay_fraction,
            cfg.decay_shape,
            cfg.power,
        )

    def value(self, step: int) -> float:
        w = self.warmup_steps
        if w and step < w:
            return self.warmup_start + (self.start - self.warmup_start) * (max(step, 0) + 1) / w
        end = self.start if self.end is None else self.end
        return end + (self.start - end) * self._base.value(step)


#: ``schedule.coefficients`` keys: ``loss.<field>`` or ``rewards.<label>.weight``.
COEF_KEY = re.compile(r"^(loss\.[A-Za-z_][A-Za-z0-9_]*|rewards\..+\.weight)$")


def parse_coef_key(key: str) -> tuple[str, str]:
    """``"loss.kl_coef"`` -> ``("loss", "kl_coef")``; ``"rewards.fmt.weight"`` -> ``("rewards",
    "fmt")`` (the reward's label, which may itself contain dots)."""
    if not COEF_KEY.match(key):
        raise ValueError(
            f"coefficient key {key!r} must be 'loss.<field>' (e.g. loss.kl_coef) or "
            "'rewards.<label>.weight' (e.g. rewards.format.weight)"
        )
    if key.startswith("loss."):
        return "loss", key[len("loss.") :]
    return "rewards", key[len("rewards.") : -len(".weight")]


def coef_schedules(cfg: Any, total_steps: int) -> dict[str, CoefSchedule]:
    """``schedule.coefficients`` of a ``ScheduleConfig`` as ``{dotted key: CoefSchedule}``."""
    return {k: CoefSchedule.from_config(c, total_steps) for k, c in cfg.coefficients.items()}


# --------------------------------------------------------------------------- KL controller
class AdaptiveKLController:
    """Ziegler et al. 2019 (arXiv:1909.08593): steer the KL coefficient toward a target KL.

    ``update(kl, n)``: ``coef *= 1 + clip(kl / target - 1, -0.2, 0.2) * n / horizon`` where
    ``n`` is the number of steps (or samples: use the same unit as ``horizon``) since the last
    update. A non-finite ``kl`` leaves the coefficient unchanged.
    """

    def __init__(self, init_coef: float, target: float, horizon: int):
        if not init_coef > 0:
            raise ValueError(f"initial KL coefficient {init_coef} must be > 0 (it is multiplied)")
        if not target > 0:
            raise ValueError(f"target KL {target} must be > 0")
        if not horizon >= 1:
            raise ValueError(f"horizon {horizon} must be >= 1")
        self.coef = float(init_coef)
        self.target = float(target)
        self.horizon = int(horizon)

    @classmethod
    def from_config(cls, cfg: Any, default_coef: float) -> AdaptiveKLController:
        """From a ``KLControllerConfig``; ``initial=None`` starts at ``default_coef``."""
        init = cfg.initial if cfg.initial is not None else default_coef
        return cls(init, cfg.target, cfg.horizon)

    def value(self, step: int | None = None) -> float:
        """The current coefficient (``step`` is ignored; for symmetry with schedules)."""
        return self.coef

    def update(self, kl: float, n_steps: int = 1) -> float:
        kl = float(kl)
        if math.isfinite(kl):
            err = min(0.2, max(-0.2, kl / self.target - 1.0))
            self.coef *= 1.0 + err * n_steps / self.horizon
        return self.coef

    def state_dict(self) -> dict[str, float]:
        return {"coef": self.coef}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.coef = float(state["coef"])


# --------------------------------------------------------------------------- param groups
def param_groups(model: Any, cfg: Any, base_lr: float) -> list[dict[str, Any]]:
    """Torch optimizer parameter groups with per-pattern LR scales.

    ``cfg`` is a ``ScheduleConfig`` (its ``param_groups``) or a list of specs with ``pattern``
    and ``lr_scale`` (objects or dicts). Each trainable parameter goes to the first spec whose
    regex ``re.search``-matches its name; unmatched parameters form a ``default`` group at
    scale 1 (left out when empty). Raises ``ValueError`` when a pattern matches no trainable
    parameter, or only parameters an earlier pattern already took.

    Returns ``[{"name", "params", "param_names", "lr", "lr_scale"}, ...]``; pass it to any
    ``torch.optim`` class, then each step set ``g["lr"] = lr * g["lr_scale"]``.
    """
    specs = getattr(cfg, "param_groups", cfg) or []
    specs = [(_get(s, "pattern"), float(_get(s, "lr_scale", 1.0))) for s in specs]
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    regexes = [re.compile(pat) for pat, _ in specs]
    buckets: list[list[tuple[str, Any]]] = [[] for _ in specs]
    default: list[tuple[str, Any]] = []
    for name, p in named:
        for i, rx in enumerate(regexes):
            if rx.search(name):
                buckets[i].append((name, p))
                break
        else:
            default.append((name, p))
    groups = []
    for (pat, scale), rx, bucket in zip(specs, regexes, buckets):
        if not bucket:
            anywhere = [n for n, _ in named if rx.search(n)]
            if anywhere:
                raise ValueError(
                    f"schedule.param_groups pattern {pat!r} only matches parameters an earlier "
                    f"pattern already took (first match wins), e.g. {anywhere[0]!r}"
                )
            sample = ", ".join(n for n, _ in named[:5])
            raise ValueError(
                f"schedule.param_groups pattern {pat!r} matches no trainable parameter "
                f"(names look like: {sample}, ...)"
            )
        groups.append(_group(pat, bucket, scale, base_lr))
    if default:
        groups.append(_group("default", default, 1.0, base_lr))
    return groups


def _group(name: str, items: Iterable[tuple[str, Any]], scale: float, base_lr: float) -> dict:
    items = list(items)
    return {
        "name": name,
        "params": [p for _, p in items],
        "param_names": [n for n, _ in items],
        "lr": base_lr * scale,
        "lr_scale": scale,
    }


def _get(spec: Any, key: str, default: Any = None) -> Any:
    if isinstance(spec, Mapping):
        return spec.get(key, default)
    return getattr(spec, key, default)
