"""Objectives: reward combination, advantages, and balancers of loss terms.

Three levels, each in its own module:

- ``scalarize``   rewards (N, K) -> one reward or advantage per sample: ``weighted_sum``,
                  ``gdpo``, ``tchebycheff``, ``smooth_tchebycheff`` (``build_combiner``);
- ``balancers``   loss level: named terms -> weights -> one backward: ``static``,
                  ``scheduled``, ``uncertainty``, ``dwa``, ``gradnorm``, ``famo``;
- ``aggregators`` gradient level on a restricted tensor set (``restrict``): per-term
                  Jacobian -> a ``weightings`` method on the K x K Gramian -> one gradient:
                  ``pcgrad``, ``mgda``, ``mgda_ub``, ``upgrad``, ``cagrad``, ``nash_mtl``,
                  ``imtl_g``.

Trainer wiring (``steerl/trainer.py``; config keys in ``ObjectivesConfig``)
----------------------------------------------------------------------------

1. ``__init__``, after the model and the loss terms exist::

       self.combiner = build_combiner(cfg.objectives, estimator=cfg.loss.advantage)
       self.balancer = build_balancer(
           cfg.objectives,
           model=self.model,                      # gradnorm / aggregators resolve params here
           total_steps=cfg.train.steps,           # scheduled: schedule length
           term_names=["policy", *[t.name for t in self.aux_terms]],  # validate_terms
       )
       log once: self.balancer.describe()         # aggregated vs plain-sum parameter names

2. ``rl_step`` stage 3-4 (rewards -> advantages). Keep the weighted sum for logging, the
   curriculum update, the zero-variance filter and the aux pairs; use the combiner for the
   training signal::

       w = reward_weights(scored)
       reward = weighted_sum(scored.scores, w)               # as today (logs, curriculum)
       if self.combiner.returns == "reward":                 # weighted_sum / tchebycheff / stch
           signal = self.combiner(scored.scores, w, G)
           shaped, ref_lp, kl_metrics = self._kl_shaped_reward(batch, signal)
           adv = compute_advantages(shaped, G, cfg.loss.advantage)
       else:                                                 # gdpo: already advantages
           adv = self.combiner(scored.scores, w, G)          # (kl_in=reward is refused)
           ref_lp, kl_metrics = None, {}

   With ``objectives.preference`` set, the combiner uses it instead of ``w`` (the config
   refuses scheduled reward weights alongside it). A Pareto sweep just sets
   ``objectives.preference`` per run.

3. ``_policy_update``, per epoch (= per optimizer step)::

       self.optimizer.zero_grad(set_to_none=True)
       self.balancer.begin_step(step)                        # NEW
       for idx in plan:
           ...
           self.balancer.tap(lp, ent)                        # per-token tensors (below)
           weights = self.balancer.combine(terms, self.model.parameters())   # unchanged
           ...
       weights = self.balancer.end_step()                    # NEW: before stability.clip
       clip = self.stability.clip(self.model.parameters())
       ...
       out.update({f"balancer/{k}": v for k, v in weights.items()})
       if hasattr(self.balancer, "conflicts"):               # aggregators: gradient cosines
           out.update({f"balancer/{k}": v for k, v in self.balancer.conflicts().items()})

   ``end_step`` must run on every path that ran ``begin_step`` (also when the update is then
   skipped or rolled back), otherwise the next ``begin_step`` raises; if the micro-batch loop
   itself raises, call ``self.balancer.abort_step()`` in the handler. For gradient-level
   balancers ``combine`` backpropagates only the plain weighted sum into the parameters
   *outside* the restricted set and accumulates the per-term Jacobian of the restricted
   set; ``end_step`` aggregates it and writes the restricted ``.grad``. So clipping, the
   non-finite check and ``optimizer.step()`` must come after ``end_step`` (they do, if the
   call sits right before ``stability.clip``). Nothing else in the backward changes.
   The final hidden state (the decoder's output, which the LM head reads) is captured by a
   forward hook registered by ``bind(model)`` (only between ``begin_step`` and ``end_step``,
   with grad enabled). ``tap(lp, ent)`` hands over the per-token tensors the terms are
   computed from; with them (``objectives.jacobian=auto``) the K per-term gradients cross the
   LM head in one backward per tapped tensor (``factored.py``: exact, checked on the graph)
   instead of one per term. Cost of a gradient-level balancer per micro-batch: that head
   backward plus K backwards from the hidden state into the restricted set (cheap for
   ``last_blocks:1``), plus K x |restricted| float32 accumulated over the step. The weights
   ``combine`` returns are the plain-sum weights; log the ones ``end_step`` returns (the
   aggregator's, on the restricted set).

4. Checkpoints: ``self.balancer.state_dict()`` / ``load_state_dict()`` as today (JSON-safe).
   The adaptive balancers keep their own tiny optimizers; ``balancer.parameters()`` is empty,
   so the model optimizer needs no extra parameter group.

5. ``steerl list balancers`` / ``combiners`` / ``weightings`` read the registries here
   (``cli.list`` imports ``steerl.objectives``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from steerl.objectives.advantages import group_advantages, group_std, weighted_sum
from steerl.objectives.aggregators import (
    AGGREGATOR_METHODS,
    AggregatorBalancer,
    aggregate,
    jacobian,
    make_aggregator,
)
from steerl.objectives.balancers import (
    BALANCERS,
    Balancer,
    BalancerProtocolError,
    DWABalancer,
    FAMOBalancer,
    GradNormBalancer,
    ScheduledBalancer,
    StaticBalancer,
    UncertaintyBalancer,
)
from steerl.objectives.restrict import ParamSelection, resolve_params
from steerl.objectives.scalarize import (
    COMBINERS,
    Combiner,
    build_combiner,
    gdpo,
    smooth_tchebycheff,
    tchebycheff,
)
from steerl.objectives.weightings import WEIGHTINGS, Weighting, make_weighting


class ObjectivesError(ValueError):
    """Objectives configuration does not match the run (unknown term names, ...)."""


def validate_terms(cfg: Any, term_names: Iterable[str]) -> None:
    """Check that ``objectives.weights`` / ``schedules`` / ``min_losses`` name declared terms.

    ``cfg`` is an ``ObjectivesConfig``; ``term_names`` the keys the trainer hands to
    ``combine`` (``policy`` and the ``loss.aux`` names). Raises ``ObjectivesError``.
    """
    names = list(term_names)
    for key in ("weights", "schedules", "min_losses"):
        unknown = [k for k in getattr(cfg, key, {}) if k not in names]
        if unknown:
            raise ObjectivesError(
                f"objectives.{key} names unknown term(s) {', '.join(map(repr, unknown))}; "
                f"declared terms: {', '.join(names)} (policy, then the loss.aux names)"
            )


def build_balancer(
    cfg: Any,
    model: Any = None,
    total_steps: int = 0,
    term_names: Iterable[str] | None = None,
) -> Balancer:
    """The balancer of an ``ObjectivesConfig``, bound to ``model`` when it needs one.

    ``total_steps`` is the run length (``scheduled``: default schedule length);
    ``term_names`` (optional) are checked with ``validate_terms``.
    """
    if term_names is not None:
        validate_terms(cfg, term_names)
    name = cfg.balancer
    common = {"weights": dict(cfg.weights)}
    adaptive = {"min_losses": dict(cfg.min_losses), "loss_floor": cfg.loss_floor}
    if name == "static":
        bal: Balancer = StaticBalancer(cfg.weights)
    elif name == "scheduled":
        from steerl.schedules import CoefSchedule

        schedules = {k: CoefSchedule.from_config(c, total_steps) for k, c in cfg.schedules.items()}
        bal = ScheduledBalancer(schedules, **common)
    elif name == "uncertainty":
        u = cfg.uncertainty
        bal = UncertaintyBalancer(lr=u.lr, max_log_var=u.max_log_var, **common, **adaptive)
    elif name == "dwa":
        bal = DWABalancer(temperature=cfg.dwa.temperature, **common, **adaptive)
    elif name == "gradnorm":
        g = cfg.gradnorm
        spec = cfg.aggregate_params or "last_blocks:1"
        bal = GradNormBalancer(
            alpha=g.alpha, lr=g.lr, aggregate_params=spec, jacobian=cfg.jacobian,
            **common, **adaptive,
        )  # fmt: skip
    elif name == "famo":
        f = cfg.famo
        bal = FAMOBalancer(lr=f.lr, weight_decay=f.weight_decay, **common, **adaptive)
    elif name in AGGREGATOR_METHODS:
        kw: dict[str, Any] = {}
        if name == "pcgrad":
            kw = {"order": cfg.pcgrad.order, "seed": cfg.pcgrad.seed}
        elif name in ("mgda", "mgda_ub"):
            kw = {"normalize": cfg.mgda.normalize}
        elif name == "cagrad":
            kw = {"c": cfg.cagrad.c}
        elif name == "nash_mtl":
            kw = {"iterations": cfg.nash_mtl.iterations}
        bal = make_aggregator(
            name, cfg.aggregate_params, cfg.weights, cfg.backend, cfg.jacobian, **kw
        )
    else:  # a user's "module:Class": constructed with no arguments
        bal = BALANCERS.get(name)()
    if getattr(bal, "needs_model", False):
        if model is None:
            raise ValueError(
                f"objectives.balancer={name} works on the model's parameters: "
                "build_balancer(cfg, model=...) is needed"
            )
        bal.bind(model)
    return bal


__all__ = [
    "AGGREGATOR_METHODS",
    "BALANCERS",
    "COMBINERS",
    "WEIGHTINGS",
    "AggregatorBalancer",
    "Balancer",
    "BalancerProtocolError",
    "Combiner",
    "DWABalancer",
    "FAMOBalancer",
    "GradNormBalancer",
    "ObjectivesError",
    "ParamSelection",
    "ScheduledBalancer",
    "StaticBalancer",
    "UncertaintyBalancer",
    "Weighting",
    "aggregate",
    "build_balancer",
    "build_combiner",
    "gdpo",
    "group_advantages",
    "group_std",
    "jacobian",
    "make_aggregator",
    "make_weighting",
    "resolve_params",
    "smooth_tchebycheff",
    "tchebycheff",
    "validate_terms",
    "weighted_sum",
]
