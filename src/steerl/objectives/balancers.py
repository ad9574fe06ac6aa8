r"""Loss-level balancers: named loss terms -> weights -> one backward pass.

Protocol (every balancer; ``Balancer`` gives the defaults)::

    bind(model)                 once, after construction (gradnorm / aggregators resolve their
                                parameter set here; the others ignore it)
    begin_step(step)            before the first micro-batch of an optimizer step
    tap(*tensors)               optional, before combine: the per-token tensors (N, T) the terms
                                are computed from (log-probs, entropies); balancers that take
                                per-term gradients use them (``steerl.objectives.factored``)
    combine(terms, params)      once per micro-batch: does the backward, returns the weights
    end_step() -> weights       after the last micro-batch, before clipping and
                                optimizer.step(): adaptive balancers update their state from
                                the step's losses here; returns the weights used this step
    abort_step()                close an open step without using it (an exception mid-step)
    state_dict() / load_state_dict()   JSON-serialisable state (for trainer_state.json)
    describe() -> dict          what it is and how it is configured (for the run log)

``terms`` maps term names to scalar tensors of *this micro-batch*; their denominators count
the whole batch, so summing a term over the micro-batches of a step gives the full-batch value.
Weights are therefore fixed between ``begin_step`` and ``end_step`` (so micro-batch gradients
still add up to the full-batch gradient), and the adaptive balancers read each term's
full-step value ``L_i`` in ``end_step``. ``static`` works without the hooks (the trainer's
pre-hook behaviour); every other balancer raises a ``RuntimeError`` when they are missing.

Base weights ``objectives.weights`` (default 1 per term) multiply or initialise every balancer.

==============  ===========================================================================
``static``      w_i = base weight.
``scheduled``   w_i = ``CoefSchedule.value(step)`` for the terms in ``objectives.schedules``,
                else the base weight.
``uncertainty`` Kendall, Gal & Cipolla 2018 (arXiv:1705.07115): L = sum_i exp(-s_i) L_i + s_i
                with one learnable s_i = log sigma_i^2 per term, initialised to -log(base
                weight). The model sees the weights exp(-s_i); s is updated in ``end_step`` by
                the balancer's own small Adam (``lr``) on dL/ds_i = 1 - exp(-s_i) l_i, so the
                trainer's optimizer never sees s (``parameters()`` is empty).
``dwa``         Liu, Johns & Davison 2019, Dynamic Weight Average (arXiv:1803.10704):
                w_i(t) = K exp(r_i / T) / sum_j exp(r_j / T), r_i = l_i(t-1) / l_i(t-2), with
                l_i the full-step losses of the two previous optimizer steps; 1 for the first
                two steps; times the base weight.
``gradnorm``    Chen et al. 2018 (arXiv:1711.02257), on a small parameter set W (the last shared
                layer(s): ``objectives.aggregate_params``, default ``last_blocks:1``):
                G_i = w_i ||grad_W L_i||, target G_i* = mean(G) r_i^alpha with
                r_i = (l_i(t)/l_i(0)) / mean_j(l_j(t)/l_j(0)); w_i takes an Adam step (``lr``)
                on d/dw_i sum_j |G_j - G_j*| = sign(G_i - G_i*) ||grad_W L_i||, is kept
                >= 1e-3 and renormalised to sum K. The per-term gradients on W are accumulated
                over the micro-batches (K x |W| floats).
``famo``        Liu et al. 2023, FAMO (arXiv:2306.03792): logits xi, z = softmax(xi); the update
                is sum_i c z_i / l_i grad L_i with c = 1 / sum_j z_j / l_j (a convex
                combination, here scaled to sum K). Approximation forced by micro-batching:
                l_i in those weights is the *previous* step's full loss (the current one is only
                known after the backward; step 0 uses K z). ``end_step`` updates xi with the
                authors' rule: Adam (``lr``, L2 ``weight_decay``) on
                d = J_softmax(xi)^T delta, delta_i = log l_i(t-1) - log l_i(t) (consecutive
                steps, i.e. different batches, instead of a second forward on the same batch).
==============  ===========================================================================

**Loss levels l_i.** Uncertainty weighting, DWA, GradNorm and FAMO were designed for losses
that are >= 0 (likelihoods, distances) and read their *size*: they use
``l_i = max(L_i - b_i, loss_floor)`` with lower bounds ``b_i = objectives.min_losses[name]``
(default 0; FAMO's ``min_losses``). A policy-gradient surrogate is *not* such a loss: it is
about 0 on-policy and often negative. For these balancers set ``min_losses.policy`` to a lower
bound of the policy loss (for instance minus the largest |advantage|), or prefer a gradient-level
balancer, which only looks at gradients. Non-finite losses leave the state unchanged.
Uncertainty weighting additionally keeps s_i in [-max_log_var, max_log_var] (weights within
exp(+-max_log_var)), because for l_i -> 0 its optimum exp(-s_i) = 1 / l_i is unbounded.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import torch

from steerl.registry import Registry

BALANCERS: Registry = Registry("balancer")


class BalancerProtocolError(RuntimeError):
    """The trainer did not call ``begin_step`` / ``end_step`` as the balancer needs."""


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


def _fmt(d: Mapping[str, float]) -> str:
    return "{" + ", ".join(f"{k!r}: {v:.4g}" for k, v in d.items()) + "}"


# --------------------------------------------------------------------------- base
class Balancer:
    """Defaults of the protocol: fixed base weights, optional hooks, no state."""

    name = "balancer"
    needs_hooks = False  # begin_step / end_step are required
    needs_model = False  # bind(model) is required
    #: set by the trainer under torchrun: sums the step's term values over ranks (in place)
    loss_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __init__(
        self,
        weights: Mapping[str, float] | None = None,
        min_losses: Mapping[str, float] | None = None,
        loss_floor: float = 1e-8,
    ):
        self.weights = {k: float(v) for k, v in (weights or {}).items()}
        self.min_losses = {k: float(v) for k, v in (min_losses or {}).items()}
        self.loss_floor = float(loss_floor)
        self.step: int | None = None
        self.names: list[str] | None = None  # term names, fixed at the first combine
        self.last_weights: dict[str, float] = {}
        self._open = False
        self._acc: dict[str, torch.Tensor] = {}

    # ---------------------------------------------------------------- protocol
    def bind(self, model: torch.nn.Module) -> None:
        """Attach to the policy model (no-op unless the balancer needs parameters)."""

    def begin_step(self, step: int) -> None:
        if self._open:
            raise BalancerProtocolError(
                f"balancer {self.name!r}: begin_step({step}) while step {self.step} is still "
                "open; call end_step() after the last micro-batch"
            )
        self.step = int(step)
        self._open = True
        self._acc = {}

    def combine(
        self, terms: Mapping[str, torch.Tensor], params: Iterable[torch.nn.Parameter] = ()
    ) -> dict[str, float]:
        """Backward of ``sum_i w_i * terms[i]``; returns the weights used."""
        self._enter(terms)
        used = self.current_weights()
        _backward(sum(used[k] * terms[k] for k in terms))
        self.last_weights = used
        return dict(used)

    def tap(self, *tensors: torch.Tensor | None) -> None:
        """The per-token tensors (N, T) the next ``combine``'s terms are computed from (the
        policy log-probs, the entropies). Only balancers that take per-term gradients
        (aggregators, gradnorm) use them; ``None`` entries are ignored."""

    def end_step(self) -> dict[str, float]:
        """Close the step, update adaptive state from its losses; the weights used."""
        if not self._open:
            if self.needs_hooks:
                raise BalancerProtocolError(
                    f"balancer {self.name!r}: end_step() without begin_step(step)"
                )
            return dict(self.last_weights)
        self._open = False
        losses = self._step_losses()
        if losses is not None:
            self.update(losses)
        return dict(self.last_weights)

    def abort_step(self) -> None:
        """Close an open step without using it (an exception in the middle of a step)."""
        self._open = False
        self._acc = {}

    # ---------------------------------------------------------------- for subclasses
    def current_weights(self) -> dict[str, float]:
        """Weights for this step's terms (``self.names``)."""
        assert self.names is not None
        return {k: self.weights.get(k, 1.0) for k in self.names}

    def update(self, losses: dict[str, float]) -> None:
        """Adaptive state update from the full-step losses (all finite)."""

    def level(self, name: str, value: float) -> float:
        """``max(L - b, loss_floor)``: the size of a loss, as adaptive balancers read it."""
        return max(value - self.min_losses.get(name, 0.0), self.loss_floor)

    def _enter(self, terms: Mapping[str, torch.Tensor]) -> None:
        if self.needs_hooks and not self._open:
            raise BalancerProtocolError(
                f"balancer {self.name!r} needs begin_step(step) before the first combine() of "
                "an optimizer step and end_step() after the last one (see steerl.objectives)"
            )
        names = list(terms)
        if self.names is None or (not self.needs_hooks and names != self.names):
            self.names = names  # static: any terms; adaptive: fixed at the first combine
            self._init_terms(names)
        elif sorted(names) != sorted(self.names):
            raise ValueError(
                f"balancer {self.name!r} tracks the terms {self.names}; this micro-batch has "
                f"{names}"
            )
        for k, v in terms.items():
            v = v.detach()
            self._acc[k] = self._acc[k] + v if k in self._acc else v

    def _init_terms(self, names: list[str]) -> None:
        """Called once with the term names (first combine or load_state_dict)."""

    def _step_losses(self) -> dict[str, float] | None:
        if not self._acc:
            return None
        keys = list(self._acc)
        stacked = torch.stack([self._acc[k].float().reshape(()) for k in keys])
        if self.loss_reduce is not None:  # data-parallel: each rank holds a share of the sum
            stacked = self.loss_reduce(stacked)
        values = stacked.tolist()
        self._acc = {}
        if not all(math.isfinite(v) for v in values):
            return None
        return dict(zip(keys, values))

    # ---------------------------------------------------------------- state / display
    def parameters(self) -> list[torch.Tensor]:
        """Tensors the trainer's optimizer should also update (none: balancers step their
        own state in ``end_step``)."""
        return []

    def state_dict(self) -> dict[str, Any]:
        return {"names": self.names, "weights": dict(self.weights)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.weights = dict(state.get("weights", self.weights))
        names = state.get("names")
        if names is not None and self.names is None:
            self.names = list(names)
            self._init_terms(self.names)

    def describe(self) -> dict[str, Any]:
        return {"balancer": self.name, "repr": repr(self)}

    def _repr_args(self) -> str:
        return f"weights={_fmt(self.weights)}" if self.weights else ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._repr_args()})"


def _backward(total: Any) -> None:
    if isinstance(total, torch.Tensor) and total.requires_grad:
        total.backward()


# --------------------------------------------------------------------------- static
@BALANCERS.register(
    "static", "Fixed weights (1 per term unless given): backward of the weighted sum"
)
class StaticBalancer(Balancer):
    """Fixed weights (1 for every term unless given): backward of the weighted sum."""

    name = "static"

    def state_dict(self) -> dict[str, Any]:
        return {"weights": dict(self.weights)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.weights = dict(state["weights"])

    def __repr__(self) -> str:
        return f"StaticBalancer(weights={self.weights})"


# --------------------------------------------------------------------------- scheduled
@BALANCERS.register("scheduled", "Per-term weights that follow a schedule of the step")
class ScheduledBalancer(Balancer):
    """Weights that follow a schedule of the step (``objectives.schedules``) per term."""

    name = "scheduled"
    needs_hooks = True

    def __init__(self, schedules: Mapping[str, Any], weights=None, **kw: Any):
        super().__init__(weights, **kw)
        self.schedules = dict(schedules)

    def current_weights(self) -> dict[str, float]:
        assert self.names is not None and self.step is not None
        return {
            k: float(self.schedules[k].value(self.step))
            if k in self.schedules
            else self.weights.get(k, 1.0)
            for k in self.names
        }

    def _repr_args(self) -> str:
        base = super()._repr_args()
        return f"schedules={self.schedules}" + (f", {base}" if base else "")


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


def _flat_grad(loss: torch.Tensor, params: Iterable[torch.Tensor]) -> torch.Tensor:
    """Gradient of ``loss`` w.r.t. ``params`` (zeros where unused), flattened, float32."""
    params = list(params)
    if not (isinstance(loss, torch.Tensor) and loss.requires_grad):
        return torch.cat([p.new_zeros(p.numel(), dtype=torch.float32) for p in params])
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return torch.cat(
        [
            (g if g is not None else torch.zeros_like(p)).reshape(-1).float()
            for g, p in zip(grads, params)
        ]
    )


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
