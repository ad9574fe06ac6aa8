r"""Gradient-level balancers: aggregate per-objective gradients on a restricted set.

Three layers, as in torchjd, each with one job:

1. **Jacobian** (``TermJacobian`` in ``steerl.objectives.factored``): the K weighted terms
   w_i L_i (w_i = ``objectives.weights``, default 1) are differentiated w.r.t. a *restricted*
   tensor set (``objectives.aggregate_params``, see ``steerl.objectives.restrict``):
   J (K, n), float32. With ``objectives.jacobian=auto`` and the per-token tensors handed to
   ``tap()``, the K gradients cross the LM head in one backward per tapped tensor (exact; see
   ``factored``); otherwise one ``torch.autograd.grad`` per term (``jacobian``), each
   through the head.
2. **Weighting** (``steerl.objectives.weightings``): sees only the Gramian G = J J^T (K, K) and
   returns K weights a.
3. **Aggregation**: d = a^T J (n,) is written to the ``.grad`` of the restricted parameters;
   every other parameter gets the plain weighted sum's gradient, sum_i w_i grad L_i, from one
   ordinary backward restricted to them (``torch.autograd.backward(..., inputs=others)``).

Micro-batching. J is linear in the loss, so the balancer *accumulates* J over the micro-batches
of a step and aggregates once in ``end_step()``: the result is the aggregation of the
full-batch Jacobian, exactly, at the memory cost of K x n floats. So with a gradient-level
balancer ``end_step()`` is what writes the restricted gradients: the trainer must call it
after the last micro-batch and before clipping / ``optimizer.step()``.

``hidden_state`` (MGDA-UB, Sener & Koltun 2018, and the same idea for any weighting): the
per-term gradients are taken w.r.t. the final hidden state (the decoder's output that the LM
head reads, captured by a forward hook that ``bind(model)`` registers; only while a step is
open and grad mode is on; factorised through the taps as above when exact), the weighting's
weights a then scale the losses of one ordinary backward through all
parameters: sum_i a_i w_i L_i. Weights cannot wait for the end of the step there (they scale
the backward itself), so they are solved per micro-batch from that micro-batch's Gramian
(exact when a step is one micro-batch); ``end_step`` reports their mean. A representation can
also be passed explicitly: ``combine(terms, params, representation=h)``.

Methods (``BALANCERS`` names): ``pcgrad``, ``mgda``, ``mgda_ub`` (= mgda on ``hidden_state``),
``upgrad``, ``cagrad``, ``nash_mtl``, ``imtl_g``; the weightings module has the formulas and
papers. Data-parallel training would need J (or G) all-reduced before ``end_step``; not done
here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from steerl.objectives.balancers import (
    BALANCERS,
    Balancer,
    BalancerProtocolError,
    _backward,
    _flat_grad,
)
from steerl.objectives.factored import TermJacobian
from steerl.objectives.restrict import ParamSelection, resolve_params
from steerl.objectives.weightings import Weighting, make_weighting


def jacobian(losses: Sequence[torch.Tensor], inputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """(K, n) float32: row i is d losses[i] / d inputs, flattened (zeros where unused).

    The graph is retained (the caller's final backward frees it).
    """
    if not losses:
        return torch.zeros(0, sum(t.numel() for t in inputs))
    return torch.stack([_flat_grad(loss, inputs) for loss in losses])


def aggregate(J: torch.Tensor, weighting: Weighting) -> tuple[torch.Tensor, torch.Tensor]:
    """``(d, a)``: weights ``a = weighting(J J^T)`` (K,) and the update ``d = a^T J`` (n,)."""
    G = (J @ J.T).double()
    a = weighting(G)
    return a.to(J.dtype) @ J, a


class AggregatorBalancer(Balancer):
    """A weighting applied to the Jacobian of the terms on a restricted tensor set."""

    needs_hooks = True
    needs_model = True

    def __init__(
        self,
        method: str,
        weighting: Weighting,
        aggregate_params: str = "last_blocks:1",
        weights: Mapping[str, float] | None = None,
        backend: str = "auto",
        jacobian: str = "auto",
    ):
        super().__init__(weights)
        self.name = method
        self.weighting = weighting
        self.spec = aggregate_params
        self.backend = backend
        self.selection: ParamSelection | None = None
        self._ids: set[int] = set()
        self._J: torch.Tensor | None = None
        self.terms_jacobian = TermJacobian(jacobian)
        self._alpha_sum: torch.Tensor | None = None
        self._n_mb = 0
        self.last_gramian: torch.Tensor | None = None  # (K, K) of the last aggregation

    # ---------------------------------------------------------------- setup
    def bind(self, model: torch.nn.Module) -> None:
        self.selection = resolve_params(model, self.spec, balancer=self.name)
        self._ids = {id(p) for p in self.selection.params}
        self.terms_jacobian.bind(model, self.selection.params, lambda: self._open)
        if self.selection.kind == "hidden_state" and self.terms_jacobian._hook is None:
            raise ValueError(
                f"objectives.aggregate_params=hidden_state (balancer={self.name}) needs a "
                "model with an LM head (get_output_embeddings()) to capture its input"
            )

    def tap(self, *tensors: torch.Tensor | None) -> None:
        """The per-token tensors (N, T) the next ``combine``'s terms are computed from.

        With them (the policy log-probs, and the entropies when they carry a gradient), the K
        per-term gradients cross the LM head in one backward per tensor instead of one per
        term (``steerl.objectives.factored``); without them, or where that would not be
        exact, each term takes its own backward.
        """
        self.terms_jacobian.tap(tensors)

    def begin_step(self, step: int) -> None:
        super().begin_step(step)
        self._J, self._alpha_sum, self._n_mb = None, None, 0
        self.terms_jacobian.reset()

    # ---------------------------------------------------------------- per micro-batch
    def combine(
        self,
        terms: Mapping[str, torch.Tensor],
        params: Iterable[torch.nn.Parameter] = (),
        representation: torch.Tensor | Sequence[torch.Tensor] | None = None,
    ) -> dict[str, float]:
        if self.selection is None and representation is None:
            raise BalancerProtocolError(
                f"balancer {self.name!r} needs bind(model) before combine() (or an explicit "
                "representation=)"
            )
        self._enter(terms)
        assert self.names is not None
        w = {k: self.weights.get(k, 1.0) for k in self.names}
        weighted = [w[k] * terms[k] for k in self.names]
        if representation is not None or self.selection.kind == "hidden_state":
            return self._combine_hidden(weighted, w, representation)
        J = self.terms_jacobian.rows(weighted, self.selection.params)
        self._J = J if self._J is None else self._J + J
        others = [p for p in params if p.requires_grad and id(p) not in self._ids]
        total = sum(weighted)
        if others and isinstance(total, torch.Tensor) and total.requires_grad:
            torch.autograd.backward(total, inputs=others)
        self.last_weights = dict(w)
        return dict(w)

    def _combine_hidden(self, weighted, w, representation) -> dict[str, float]:
        captured, taps = self.terms_jacobian.take()
        if representation is None:
            reps = captured
        elif isinstance(representation, torch.Tensor):
            reps = [representation]
        else:
            reps = list(representation)
        if not reps:
            raise BalancerProtocolError(
                f"balancer {self.name!r} (aggregate_params=hidden_state) captured no hidden "
                "state in this micro-batch: the policy forward must run after begin_step() "
                "with gradients enabled"
            )
        fact = (
            None
            if representation is not None
            else self.terms_jacobian.head_grads(weighted, reps, taps)
        )
        if fact is not None:  # per-term gradients at h from one head backward per tap
            J = torch.stack([g.reshape(-1).float() for g in fact[1]])
        else:
            J = jacobian(weighted, reps)
        G = (J @ J.T).double()
        a = self.weighting(G).to(torch.float64)
        self.last_gramian = G
        _backward(sum(float(ai) * t for ai, t in zip(a.tolist(), weighted)))
        self._alpha_sum = a if self._alpha_sum is None else self._alpha_sum + a
        self._n_mb += 1
        used = {k: float(ai) * w[k] for k, ai in zip(self.names, a.tolist())}
        self.last_weights = used
        return dict(used)

    # ---------------------------------------------------------------- per step
    def abort_step(self) -> None:
        super().abort_step()
        self._J, self._alpha_sum, self._n_mb = None, None, 0
        self.terms_jacobian.reset()

    def end_step(self) -> dict[str, float]:
        if not self._open:
            raise BalancerProtocolError(f"balancer {self.name!r}: end_step() without begin_step")
        self._open = False
        self._acc = {}
        self.terms_jacobian.reset()
        if self._alpha_sum is not None:  # hidden_state: weights were applied per micro-batch
            a = (self._alpha_sum / self._n_mb).tolist()
            self._alpha_sum = None
            self.last_weights = {k: ai * self.weights.get(k, 1.0) for k, ai in zip(self.names, a)}
            return dict(self.last_weights)
        if self._J is None:
            return {}
        J, self._J = self._J, None
        d, a = aggregate(J, self.weighting)
        self.last_gramian = (J @ J.T).double()
        offset = 0
        for p in self.selection.params:
            n = p.numel()
            g = d[offset : offset + n].view_as(p).to(p.dtype)
            p.grad = g if p.grad is None else p.grad + g
            offset += n
        assert self.names is not None
        self.last_weights = {
            k: float(ai) * self.weights.get(k, 1.0) for k, ai in zip(self.names, a.tolist())
        }
        return dict(self.last_weights)

    def conflicts(self) -> dict[str, float]:
        """Cosines between the terms' gradients of the last aggregation (for logging)."""
        if self.last_gramian is None or self.names is None:
            return {}
        G = self.last_gramian
        n = G.diagonal().clamp_min(1e-30).sqrt()
        C = G / n[:, None] / n[None, :]
        out = {}
        for i in range(len(self.names)):
            for j in range(i + 1, len(self.names)):
                out[f"cos/{self.names[i]}|{self.names[j]}"] = float(C[i, j])
        return out

    # ---------------------------------------------------------------- state / display
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "weighting": self.weighting.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.weighting.load_state_dict(state.get("weighting", {}))

    def describe(self) -> dict[str, Any]:
        out = {
            **super().describe(),
            "weighting": repr(self.weighting),
            "backend": self.backend,
            "jacobian": self.terms_jacobian.mode,
        }
        if self.terms_jacobian.blocked is not None and self.terms_jacobian.mode == "auto":
            out["jacobian_factored"] = f"never: {self.terms_jacobian.blocked}"
        if self.selection is not None:
            out.update(self.selection.describe())
        else:
            out["aggregate_params"] = self.spec
        return out

    def __repr__(self) -> str:
        base = f", weights={self.weights}" if self.weights else ""
        return (
            f"AggregatorBalancer(method={self.name!r}, weighting={self.weighting!r}, "
            f"aggregate_params={self.spec!r}{base})"
        )


#: Balancer name -> (weighting name, default aggregate_params)
AGGREGATOR_METHODS: dict[str, tuple[str, str]] = {
    "pcgrad": ("pcgrad", "last_blocks:1"),
    "mgda": ("mgda", "last_blocks:1"),
    "mgda_ub": ("mgda", "hidden_state"),
    "upgrad": ("upgrad", "last_blocks:1"),
    "cagrad": ("cagrad", "last_blocks:1"),
    "nash_mtl": ("nash_mtl", "last_blocks:1"),
    "imtl_g": ("imtl_g", "last_blocks:1"),
}

_DESCRIPTIONS = {
    "pcgrad": "PCGrad (Yu et al. 2020) on a restricted parameter set: gradient surgery",
    "mgda": "MGDA (Désidéri 2012; Sener & Koltun 2018): min-norm convex combination",
    "mgda_ub": "MGDA-UB (Sener & Koltun 2018): MGDA weights from final-hidden-state gradients",
    "upgrad": "UPGrad (Quinton & Rey 2024): mean of projections onto the dual cone",
    "cagrad": "CAGrad (Liu et al. 2021): conflict-averse update within a ball around the mean",
    "nash_mtl": "Nash-MTL (Navon et al. 2022): Nash bargaining solution G a = 1/a",
    "imtl_g": "IMTL-G (Liu et al. 2021): equal projections on every unit gradient",
}


def make_aggregator(
    method: str,
    aggregate_params: str | None = None,
    weights: Mapping[str, float] | None = None,
    backend: str = "auto",
    jacobian: str = "auto",
    **weighting_kw: Any,
) -> AggregatorBalancer:
    """An aggregator balancer by ``BALANCERS`` name (``mgda_ub`` forces ``hidden_state``)."""
    wname, default_spec = AGGREGATOR_METHODS[method]
    spec = aggregate_params or default_spec
    if method == "mgda_ub" and spec != "hidden_state":
        raise ValueError(
            f"balancer=mgda_ub works on the final hidden state; objectives.aggregate_params="
            f"{spec!r} contradicts it (use balancer=mgda for parameters)"
        )
    weighting = make_weighting(wname, backend, **weighting_kw)
    return AggregatorBalancer(method, weighting, spec, weights, backend, jacobian)


def _register(method: str) -> None:
    def factory(**kw: Any) -> AggregatorBalancer:
        return make_aggregator(method, **kw)

    factory.__name__ = f"{method}_aggregator"
    factory.__doc__ = _DESCRIPTIONS[method]
    BALANCERS.register(method, _DESCRIPTIONS[method])(factory)


for _m in AGGREGATOR_METHODS:
    _register(_m)
