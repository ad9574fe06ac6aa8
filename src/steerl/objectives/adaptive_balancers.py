"""Adaptive loss-level balancers: weights that follow the full-step loss levels l_i.

``uncertainty`` (Kendall et al. 2018), ``dwa`` (Liu et al. 2019) and ``famo`` (Liu et al.
2023), and ``TinyAdam``, the small optimiser they (and ``gradnorm``) step their state with.
The protocol, the registry and the methods' definitions are in ``steerl.objectives.balancers``,
which re-exports everything here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from steerl.objectives.balancers import BALANCERS, Balancer


# --------------------------------------------------------------------------- helpers
class TinyAdam:
    """Adam (Kingma & Ba 2015) on a small float64 vector, with JSON-serialisable state.

    ``weight_decay`` is L2 added to the gradient, as ``torch.optim.Adam`` does.
    """

    def __init__(
        self, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
        weight_decay: float = 0.0,
    ):  # fmt: skip
        self.lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, weight_decay
        self.t = 0
        self.m: np.ndarray | None = None
        self.v: np.ndarray | None = None

    def step(self, x: np.ndarray, grad: np.ndarray) -> np.ndarray:
        g = np.asarray(grad, dtype=np.float64) + self.weight_decay * x
        if self.m is None or self.m.shape != x.shape:
            self.m, self.v = np.zeros_like(x), np.zeros_like(x)
        b1, b2 = self.betas
        self.t += 1
        self.m = b1 * self.m + (1 - b1) * g
        self.v = b2 * self.v + (1 - b2) * g * g
        m_hat = self.m / (1 - b1**self.t)
        v_hat = self.v / (1 - b2**self.t)
        return x - self.lr * m_hat / (np.sqrt(v_hat) + self.eps)

    def state_dict(self) -> dict[str, Any]:
        return {
            "t": self.t,
            "m": None if self.m is None else self.m.tolist(),
            "v": None if self.v is None else self.v.tolist(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.t = int(state["t"])
        self.m = None if state["m"] is None else np.asarray(state["m"], dtype=np.float64)
        self.v = None if state["v"] is None else np.asarray(state["v"], dtype=np.float64)


# --------------------------------------------------------------------------- uncertainty
@BALANCERS.register(
    "uncertainty", "Uncertainty weighting (Kendall et al. 2018): exp(-s_i), s_i learned"
)
class UncertaintyBalancer(Balancer):
    """Kendall et al. 2018 homoscedastic uncertainty: weights exp(-s_i), s_i learned."""

    name = "uncertainty"
    needs_hooks = True

    def __init__(self, weights=None, lr: float = 0.01, max_log_var: float = 5.0, **kw: Any):
        super().__init__(weights, **kw)
        if not lr > 0 or not max_log_var > 0:
            raise ValueError(f"uncertainty: lr={lr} and max_log_var={max_log_var} must be > 0")
        self.lr, self.max_log_var = float(lr), float(max_log_var)
        self.log_vars = np.zeros(0)
        self.opt = TinyAdam(lr)

    def _init_terms(self, names: list[str]) -> None:
        base = np.array([max(self.weights.get(k, 1.0), 1e-12) for k in names])
        self.log_vars = np.clip(-np.log(base), -self.max_log_var, self.max_log_var)

    def current_weights(self) -> dict[str, float]:
        assert self.names is not None
        return {k: float(math.exp(-s)) for k, s in zip(self.names, self.log_vars)}

    def update(self, losses: dict[str, float]) -> None:
        assert self.names is not None
        lv = np.array([self.level(k, losses[k]) for k in self.names])
        # d/ds [exp(-s) l + s] = 1 - exp(-s) l, clipped: Adam only needs its sign and scale
        grad = np.clip(1.0 - np.exp(-self.log_vars + np.log(lv)), -1e6, 1.0)
        s = self.opt.step(self.log_vars, grad)
        self.log_vars = np.clip(s, -self.max_log_var, self.max_log_var)

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "log_vars": self.log_vars.tolist(),
            "opt": self.opt.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.log_vars = np.asarray(state["log_vars"], dtype=np.float64)
        self.opt.load_state_dict(state["opt"])

    def _repr_args(self) -> str:
        base = super()._repr_args()
        return f"lr={self.lr}, max_log_var={self.max_log_var}" + (f", {base}" if base else "")


# --------------------------------------------------------------------------- DWA
@BALANCERS.register("dwa", "Dynamic Weight Average (Liu et al. 2019): softmax of loss ratios / T")
class DWABalancer(Balancer):
    """Dynamic Weight Average (Liu et al. 2019): softmax of recent loss ratios / T, times K."""

    name = "dwa"
    needs_hooks = True

    def __init__(self, weights=None, temperature: float = 2.0, **kw: Any):
        super().__init__(weights, **kw)
        if not temperature > 0:
            raise ValueError(f"dwa temperature={temperature} must be > 0")
        self.temperature = float(temperature)
        self.history: list[list[float]] = []  # levels of the last two steps, oldest first

    def current_weights(self) -> dict[str, float]:
        assert self.names is not None
        k = len(self.names)
        base = np.array([self.weights.get(n, 1.0) for n in self.names])
        if len(self.history) < 2:
            return dict(zip(self.names, base.tolist()))
        ratio = np.array(self.history[1]) / np.array(self.history[0])
        logits = ratio / self.temperature
        e = np.exp(logits - logits.max())
        return dict(zip(self.names, (base * k * e / e.sum()).tolist()))

    def update(self, losses: dict[str, float]) -> None:
        assert self.names is not None
        self.history = [*self.history, [self.level(n, losses[n]) for n in self.names]][-2:]

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "history": [list(h) for h in self.history]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.history = [list(map(float, h)) for h in state["history"]]

    def _repr_args(self) -> str:
        base = super()._repr_args()
        return f"temperature={self.temperature}" + (f", {base}" if base else "")


# --------------------------------------------------------------------------- FAMO
@BALANCERS.register("famo", "FAMO (Liu et al. 2023): balance the decrease rates of log-losses")
class FAMOBalancer(Balancer):
    """FAMO (Liu et al. 2023): balance the rates at which the log-losses decrease."""

    name = "famo"
    needs_hooks = True
    MAX_LOGIT = 30.0

    def __init__(self, weights=None, lr: float = 0.025, weight_decay: float = 1e-3, **kw: Any):
        super().__init__(weights, **kw)
        if not lr > 0 or weight_decay < 0:
            raise ValueError(f"famo: lr={lr} must be > 0, weight_decay={weight_decay} >= 0")
        self.lr, self.weight_decay = float(lr), float(weight_decay)
        self.logits = np.zeros(0)
        self.prev: list[float] | None = None  # l_i of the previous step
        self.opt = TinyAdam(lr, weight_decay=weight_decay)

    def _init_terms(self, names: list[str]) -> None:
        base = np.array([max(self.weights.get(k, 1.0), 1e-12) for k in names])
        self.logits = np.log(base / base.sum())

    def z(self) -> np.ndarray:
        e = np.exp(self.logits - self.logits.max())
        return e / e.sum()

    def current_weights(self) -> dict[str, float]:
        assert self.names is not None
        k = len(self.names)
        if self.prev is None:
            w = k * self.z()
        else:  # c z_i / l_i with c = 1 / sum_j z_j / l_j, in log space
            a = np.log(self.z() + 1e-300) - np.log(np.array(self.prev))
            e = np.exp(a - a.max())
            w = k * e / e.sum()
        return dict(zip(self.names, w.tolist()))

    def update(self, losses: dict[str, float]) -> None:
        assert self.names is not None
        lv = [self.level(k, losses[k]) for k in self.names]
        if self.prev is not None:
            delta = np.log(self.prev) - np.log(lv)
            z = self.z()
            grad = z * (delta - z @ delta)  # J_softmax^T delta
            if np.all(np.isfinite(grad)):
                xi = self.opt.step(self.logits, grad)
                self.logits = np.clip(xi, -self.MAX_LOGIT, self.MAX_LOGIT)
        self.prev = lv

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "logits": self.logits.tolist(),
            "prev": self.prev,
            "opt": self.opt.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.logits = np.asarray(state["logits"], dtype=np.float64)
        self.prev = state["prev"]
        self.opt.load_state_dict(state["opt"])

    def _repr_args(self) -> str:
        base = super()._repr_args()
        return f"lr={self.lr}, weight_decay={self.weight_decay}" + (f", {base}" if base else "")
