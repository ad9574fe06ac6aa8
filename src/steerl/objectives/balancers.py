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

Modules: this one holds the protocol (``Balancer``), the registry ``BALANCERS`` and the
fixed-weight balancers (``static``, ``scheduled``); ``adaptive_balancers`` the ones that adapt
to the loss levels (``uncertainty``, ``dwa``, ``famo``) and their optimiser ``TinyAdam``;
``gradnorm`` the one that reads per-term gradients. All of them are importable from here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from steerl.registry import Registry

BALANCERS: Registry = Registry("balancer")


class BalancerProtocolError(RuntimeError):
    """The trainer did not call ``begin_step`` / ``end_step`` as the balancer needs."""


# --------------------------------------------------------------------------- helpers
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


# --------------------------------------------------------------------------- re-exports
# The adaptive balancers register themselves into ``BALANCERS`` when their modules run. They
# import from this module, so they are imported here, at the end, once everything they take
# from it is defined: importing this module (or the ``steerl.objectives`` package, which does)
# fills the registry, and their names stay importable from here.
from steerl.objectives.adaptive_balancers import (  # noqa: E402, F401 - re-exported
    DWABalancer,
    FAMOBalancer,
    TinyAdam,
    UncertaintyBalancer,
)
from steerl.objectives.gradnorm import GradNormBalancer  # noqa: E402, F401 - re-exported
