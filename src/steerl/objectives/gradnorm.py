"""GradNorm (Chen et al. 2018): the balancer that reads per-term gradients.

The method's definition is in ``steerl.objectives.balancers``, which re-exports it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from steerl.objectives.adaptive_balancers import TinyAdam
from steerl.objectives.balancers import (
    BALANCERS,
    Balancer,
    BalancerProtocolError,
    _backward,
)


# --------------------------------------------------------------------------- GradNorm
@BALANCERS.register(
    "gradnorm", "GradNorm (Chen et al. 2018): equalise gradient norms on the last layer(s)"
)
class GradNormBalancer(Balancer):
    """GradNorm (Chen et al. 2018): equalise gradient norms on the last shared layer(s)."""

    name = "gradnorm"
    needs_hooks = True
    needs_model = True

    def __init__(
        self, weights=None, alpha: float = 1.5, lr: float = 0.025,
        aggregate_params: str = "last_blocks:1", jacobian: str = "auto", **kw: Any,
    ):  # fmt: skip
        from steerl.objectives.factored import TermJacobian

        super().__init__(weights, **kw)
        if alpha < 0 or not lr > 0:
            raise ValueError(f"gradnorm: alpha={alpha} must be >= 0 and lr={lr} > 0")
        self.alpha, self.lr, self.spec = float(alpha), float(lr), aggregate_params
        self.w = np.zeros(0)
        self.initial: list[float] | None = None  # l_i(0)
        self.opt = TinyAdam(lr)
        self.selection = None
        self.terms_jacobian = TermJacobian(jacobian)
        self._grads: torch.Tensor | None = None

    def bind(self, model: torch.nn.Module) -> None:
        from steerl.objectives.restrict import resolve_params

        sel = resolve_params(model, self.spec, balancer="gradnorm")
        if sel.kind != "params":
            raise ValueError(
                f"objectives.aggregate_params={self.spec!r}: gradnorm needs parameters "
                "(last_blocks:N, lora or regex:<pattern>), not the hidden state"
            )
        self.selection = sel
        self.terms_jacobian.bind(model, sel.params, lambda: self._open)

    def tap(self, *tensors: torch.Tensor | None) -> None:
        """Per-token tensors of the next ``combine`` (see ``AggregatorBalancer.tap``)."""
        self.terms_jacobian.tap(tensors)

    def _init_terms(self, names: list[str]) -> None:
        base = np.array([max(self.weights.get(k, 1.0), 1e-3) for k in names])
        self.w = base * len(names) / base.sum()

    def begin_step(self, step: int) -> None:
        super().begin_step(step)
        self._grads = None
        self.terms_jacobian.reset()

    def abort_step(self) -> None:
        super().abort_step()
        self.terms_jacobian.reset()

    def current_weights(self) -> dict[str, float]:
        assert self.names is not None
        return dict(zip(self.names, self.w.tolist()))

    def combine(self, terms, params=()) -> dict[str, float]:
        if self.selection is None:
            raise BalancerProtocolError("balancer 'gradnorm' needs bind(model) before combine()")
        self._enter(terms)
        assert self.names is not None
        g = self.terms_jacobian.rows([terms[k] for k in self.names], self.selection.params)
        self._grads = g if self._grads is None else self._grads + g
        used = self.current_weights()
        _backward(sum(used[k] * terms[k] for k in self.names))
        self.last_weights = used
        return dict(used)

    def update(self, losses: dict[str, float]) -> None:
        assert self.names is not None
        if self._grads is None:
            return
        norms = self._grads.double().norm(dim=1).cpu().numpy()
        self._grads = None
        if not np.all(np.isfinite(norms)):
            return
        lv = np.array([self.level(k, losses[k]) for k in self.names])
        if self.initial is None:
            self.initial = lv.tolist()
        ratio = lv / np.array(self.initial)
        r = ratio / ratio.mean()
        G = self.w * norms
        target = G.mean() * r**self.alpha
        grad = np.sign(G - target) * norms
        w = np.maximum(self.opt.step(self.w, grad), 1e-3)
        self.w = w * len(w) / w.sum()

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "w": self.w.tolist(),
            "initial": self.initial,
            "opt": self.opt.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.w = np.asarray(state["w"], dtype=np.float64)
        self.initial = state["initial"]
        self.opt.load_state_dict(state["opt"])

    def describe(self) -> dict[str, Any]:
        out = {**super().describe(), "jacobian": self.terms_jacobian.mode}
        if self.selection is not None:
            out.update(self.selection.describe())
        return out

    def _repr_args(self) -> str:
        base = super()._repr_args()
        return f"alpha={self.alpha}, lr={self.lr}, aggregate_params={self.spec!r}" + (
            f", {base}" if base else ""
        )
