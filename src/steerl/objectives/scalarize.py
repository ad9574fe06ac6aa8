r"""Reward-level combination: a reward matrix R (N, K) -> one number per sample (N,).

R has one column per named reward (``rewards:`` in the recipe), rows in consecutive groups of
``group_size`` completions of one prompt, NaN where a reward could not score a sample. Every
reward is to be **maximised** (a penalty is a negative reward). λ (K,) is
``objectives.preference`` when set, else the rewards' ``weight``\ s.

======================  =====================================================================
``weighted_sum``        r = sum_i λ_i f_i. Returns a *reward* (then ``loss.advantage``
                        normalises it within each group). The default; the usual GRPO
                        multi-reward setup.
``gdpo``                Decoupled normalisation (GDPO, Liu et al. 2026, arXiv:2601.05242):
                        each reward column is normalised within its group first (the
                        ``loss.advantage`` estimator, column by column), then
                        A = sum_i λ_i A_i, then standardised over the batch
                        ((A - mean) / (std + eps) over scored samples). Returns
                        *advantages*: a reward with a large spread no longer drowns the
                        others, and a group where only one reward varies keeps its signal.
``tchebycheff``         r = -max_i λ_i |z*_i - f_i|   (weighted Tchebycheff distance to the
                        ideal point z*, negated so that larger is better). Returns a
                        *reward*. Unlike a weighted sum it can reach every Pareto-optimal
                        trade-off, including non-convex parts of the front, and it
                        improves only by improving the currently worst-weighted objective.
``smooth_tchebycheff``  r = -mu * log sum_i exp(λ_i |z*_i - f_i| / mu)   (Lin et al. 2024,
                        "Smooth Tchebycheff Scalarization", arXiv:2402.19078). Returns a
                        *reward*; smooth in f, with tch - mu log K <= stch <= tch (K used
                        rewards), so it tends to ``tchebycheff`` as mu -> 0.
======================  =====================================================================

Sign convention. The papers state Tchebycheff for *minimisation*: g(x) = max_i λ_i |f_i(x) -
z*_i| with z* the ideal (utopia) point, minimised. Our f_i are rewards to maximise, so z*_i
is the *largest* achievable value of reward i (e.g. 1 for exact match), |z*_i - f_i| = z*_i -
f_i is the shortfall, and the scalar reward is -g. ``ideal=None`` uses the column maxima over
the scored samples of the batch (the "dynamic ideal point" of MOEA/D): prefer a fixed ideal
when the rewards have known maxima, so the reward of a sample does not depend on its batch.

Columns with λ_i = 0 are ignored (their NaNs too); a sample with NaN in a used column is
unscored: NaN in the rewards, advantage 0 from ``gdpo``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from steerl.objectives.advantages import compute_advantages, weighted_sum
from steerl.registry import Registry

COMBINERS: Registry = Registry("combiner")


def _used(scores: torch.Tensor, pref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if scores.dim() != 2 or pref.shape != (scores.shape[1],):
        raise ValueError(
            f"rewards must be (N, K) with one weight per column; got scores "
            f"{tuple(scores.shape)} and weights {tuple(pref.shape)}"
        )
    if (pref < 0).any():
        raise ValueError(f"preference weights must be >= 0, got {pref.tolist()}")
    used = pref > 0
    return scores[:, used], pref[used]


def _ideal(s: torch.Tensor, ideal: torch.Tensor | None, used: torch.Tensor) -> torch.Tensor:
    if ideal is not None:
        return ideal.to(s)[used]
    finite = s.nan_to_num(float("-inf"))
    z = finite.amax(0)
    return torch.where(torch.isfinite(z), z, torch.zeros_like(z))


def _shortfall(
    scores: torch.Tensor, pref: torch.Tensor, ideal: Sequence[float] | torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(λ_i |z*_i - f_i|) over the used columns (N, K'), and the NaN row mask (N,)."""
    pref = torch.as_tensor(pref, dtype=scores.dtype, device=scores.device)
    s, lam = _used(scores, pref)
    z = _ideal(s, None if ideal is None else torch.as_tensor(ideal), pref > 0)
    nan = s.isnan().any(-1)
    return lam * (z - s.nan_to_num(0.0)).abs(), nan


def tchebycheff(
    scores: torch.Tensor,
    preference: Sequence[float] | torch.Tensor,
    ideal: Sequence[float] | torch.Tensor | None = None,
) -> torch.Tensor:
    """``-max_i λ_i |z*_i - f_i|``: (N, K) rewards -> (N,) reward (NaN: unscored)."""
    dist, nan = _shortfall(scores, preference, ideal)
    if dist.shape[1] == 0:
        return torch.zeros(scores.shape[0], dtype=scores.dtype).masked_fill(nan, float("nan"))
    return (-dist.amax(-1)).masked_fill(nan, float("nan"))


def smooth_tchebycheff(
    scores: torch.Tensor,
    preference: Sequence[float] | torch.Tensor,
    ideal: Sequence[float] | torch.Tensor | None = None,
    mu: float = 0.1,
) -> torch.Tensor:
    """``-mu logsumexp_i(λ_i |z*_i - f_i| / mu)``: (N, K) -> (N,) reward (NaN: unscored)."""
    if not mu > 0:
        raise ValueError(f"smooth_tchebycheff mu={mu} must be > 0")
    dist, nan = _shortfall(scores, preference, ideal)
    if dist.shape[1] == 0:
        return torch.zeros(scores.shape[0], dtype=scores.dtype).masked_fill(nan, float("nan"))
    return (-mu * torch.logsumexp(dist / mu, dim=-1)).masked_fill(nan, float("nan"))


def gdpo(
    scores: torch.Tensor,
    weights: Sequence[float] | torch.Tensor,
    group_size: int,
    estimator: str = "group_mean_std",
    batch_norm: bool = True,
    eps: float = 1e-4,
) -> torch.Tensor:
    """Per-reward group normalisation, weighted sum, batch standardisation: (N, K) -> (N,)
    *advantages* (0 for unscored samples)."""
    w = torch.as_tensor(weights, dtype=scores.dtype, device=scores.device)
    if scores.dim() != 2 or w.shape != (scores.shape[1],):
        raise ValueError(
            f"rewards must be (N, K) with one weight per column; got scores "
            f"{tuple(scores.shape)} and weights {tuple(w.shape)}"
        )
    used = w != 0
    s = scores[:, used]
    nan = s.isnan().any(-1)
    s = s.masked_fill(nan[:, None], float("nan"))  # a sample is scored by all or none
    adv = torch.zeros(scores.shape[0], dtype=scores.dtype, device=scores.device)
    for col, wi in zip(s.unbind(-1), w[used]):
        adv = adv + wi * compute_advantages(col, group_size, estimator, eps=eps)
    scored = ~nan
    if batch_norm and int(scored.sum()) > 1:
        a = adv[scored]
        adv = torch.where(scored, (adv - a.mean()) / (a.std() + eps), torch.zeros_like(adv))
    return adv.masked_fill(nan, 0.0)


# --------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class Combiner:
    """A configured reward combination: ``combiner(scores, weights, group_size)``.

    ``returns`` is ``"reward"`` (normalise with ``loss.advantage`` afterwards, KL-in-reward
    shaping applies) or ``"advantage"`` (use the output as advantages directly).
    ``preference`` (when set) replaces ``weights``; ``ideal``/``mu`` are for Tchebycheff.
    """

    name: str
    returns: str
    preference: tuple[float, ...] | None = None
    ideal: tuple[float, ...] | None = None
    mu: float = 0.1
    estimator: str = "group_mean_std"
    extra: dict[str, Any] = field(default_factory=dict)

    def __call__(
        self, scores: torch.Tensor, weights: torch.Tensor | Sequence[float], group_size: int
    ) -> torch.Tensor:
        lam = self.lambdas(weights, scores)
        if self.name == "weighted_sum":
            return weighted_sum(scores, lam)
        if self.name == "gdpo":
            return gdpo(scores, lam, group_size, self.estimator)
        if self.name == "tchebycheff":
            return tchebycheff(scores, lam, self.ideal)
        if self.name == "smooth_tchebycheff":
            return smooth_tchebycheff(scores, lam, self.ideal, self.mu)
        raise ValueError(f"unknown combine {self.name!r}; one of {', '.join(COMBINE_NAMES)}")

    def lambdas(self, weights: torch.Tensor | Sequence[float], like: torch.Tensor) -> torch.Tensor:
        """λ (K,): ``preference`` when set, else the rewards' ``weights``."""
        lam = self.preference if self.preference is not None else weights
        return torch.as_tensor(lam, dtype=like.dtype, device=like.device)

    def reward(
        self, scores: torch.Tensor, weights: torch.Tensor | Sequence[float], group_size: int
    ) -> torch.Tensor:
        """(N, K) -> (N,) the scalar reward the run maximises (NaN: unscored): this
        combiner's output, or for ``gdpo`` (whose output is advantages) sum_i λ_i f_i."""
        if self.returns == "advantage":
            return weighted_sum(scores, self.lambdas(weights, scores))
        return self(scores, weights, group_size)

    def signal(
        self, scores: torch.Tensor, weights: torch.Tensor | Sequence[float], group_size: int
    ) -> torch.Tensor:
        """(N, K) -> (N, C) what the advantages are computed from: a group's advantages are
        all zero exactly when every column is constant within the group (NaN: unscored).

        C = 1, :meth:`reward`, for the combiners that return a reward; for ``gdpo``, which
        normalises each reward in its group, the used reward columns (λ_i != 0), a sample
        being scored by all of them or by none.
        """
        if self.returns != "advantage":
            return self.reward(scores, weights, group_size)[:, None]
        s = scores[:, self.lambdas(weights, scores) != 0]
        return s.masked_fill(s.isnan().any(-1, keepdim=True), float("nan"))


COMBINE_NAMES = ("weighted_sum", "gdpo", "tchebycheff", "smooth_tchebycheff")
COMBINERS.register("weighted_sum", "Weighted sum of the raw rewards (then group-normalised)")(
    weighted_sum
)
COMBINERS.register("gdpo", "GDPO: normalise each reward in its group, then weighted sum")(gdpo)
COMBINERS.register("tchebycheff", "Weighted Tchebycheff distance to the ideal point, negated")(
    tchebycheff
)
COMBINERS.register("smooth_tchebycheff", "Smooth Tchebycheff (log-sum-exp, temperature mu)")(
    smooth_tchebycheff
)


def build_combiner(cfg: Any, estimator: str = "group_mean_std") -> Combiner:
    """From an ``ObjectivesConfig`` (``combine``, ``preference``, ``ideal``, ``mu``);
    ``estimator`` is ``loss.advantage`` (used by ``gdpo`` per column)."""
    name = cfg.combine
    return Combiner(
        name=name,
        returns="advantage" if name == "gdpo" else "reward",
        preference=None if cfg.preference is None else tuple(cfg.preference),
        ideal=None if cfg.ideal is None else tuple(cfg.ideal),
        mu=cfg.mu,
        estimator=estimator,
    )
