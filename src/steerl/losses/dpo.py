"""The DPO family on sequence log-probabilities: sigmoid (DPO / cDPO), IPO and hinge (SLiC).

Inputs are summed completion log-probs, shape (P,) each, for P preference pairs: the policy's
and the frozen reference's on the chosen (y_w) and the rejected (y_l) completion. With the
log-ratio margin

    h = (logpi(y_w) - logref(y_w)) - (logpi(y_l) - logref(y_l))

the per-pair losses are

    sigmoid  -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)
             DPO, Rafailov et al. 2023, arXiv:2305.18290; eps = label_smoothing is
             conservative DPO (cDPO, Mitchell 2023): labels flipped with probability eps
    ipo      (h - 1 / (2 beta))^2
             IPO, Azar et al. 2023, arXiv:2310.12036 (beta plays the role of tau)
    hinge    max(0, 1 - beta h)
             SLiC, Zhao et al. 2023, arXiv:2305.10425 (beta = 1 / margin delta)

and the loss is their sum over pairs divided by ``total_pairs`` (default P: the mean), so
micro-batches of pairs add up to the full-batch loss. Metrics follow TRL's naming: the implicit
rewards ``beta * (logpi - logref)`` of chosen and rejected, their margin, and the accuracy
(share of pairs with a positive margin), all averaged over ``total_pairs``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from steerl.losses.base import LOSS_TERMS, LOSSES, PairInputs

DPO_VARIANTS = ("sigmoid", "ipo", "hinge")


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    variant: str = "sigmoid",
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    total_pairs: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DPO-family loss over P pairs of sequence log-probs (P,) -> ``(loss, metrics)``."""
    if variant not in DPO_VARIANTS:
        raise ValueError(f"unknown DPO variant {variant!r}; choose one of {DPO_VARIANTS}")
    if label_smoothing and variant != "sigmoid":
        raise ValueError(f"label_smoothing is defined for variant=sigmoid only, not {variant}")
    total = float(policy_chosen_logps.numel()) if total_pairs is None else total_pairs
    total = max(total, 1.0)
    chosen = policy_chosen_logps - ref_chosen_logps
    rejected = policy_rejected_logps - ref_rejected_logps
    h = chosen - rejected
    if variant == "sigmoid":
        per_pair = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * (
            F.logsigmoid(-beta * h)
        )
    elif variant == "ipo":
        per_pair = (h - 1 / (2 * beta)) ** 2
    else:
        per_pair = torch.relu(1 - beta * h)
    loss = per_pair.sum() / total
    with torch.no_grad():
        r_c, r_r = beta * chosen, beta * rejected
        metrics = {
            "loss": loss.detach(),
            "rewards_chosen": r_c.sum() / total,
            "rewards_rejected": r_r.sum() / total,
            "reward_margin": (r_c - r_r).sum() / total,
            "accuracy": (h > 0).to(h.dtype).sum() / total,
        }
    return loss, metrics


LOSSES.register("dpo", "DPO family (sigmoid/cDPO, IPO, hinge) on preference pairs")(dpo_loss)


@LOSS_TERMS.register("dpo", "Auxiliary DPO on pairs (RL: best vs worst completion per group)")
class DPOTerm:
    """``coef * dpo_loss`` on preference pairs (:class:`PairInputs`) as a named loss term.

    ``spec.args``: ``variant`` (sigmoid | ipo | hinge), ``beta``, ``label_smoothing``.
    """

    inputs = "pairs"

    def __init__(self, spec):
        from steerl.config import DPOArgs

        self.name, self.coef = spec.name, spec.coef
        self.args = DPOArgs.model_validate(spec.args)

    def __call__(self, x: PairInputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        a = self.args
        return dpo_loss(
            x.policy_chosen_logps,
            x.policy_rejected_logps,
            x.ref_chosen_logps,
            x.ref_rejected_logps,
            variant=a.variant,
            beta=a.beta,
            label_smoothing=a.label_smoothing,
            total_pairs=x.total_pairs,
        )

    def __repr__(self) -> str:
        return f"DPOTerm(coef={self.coef}, {self.args!r})"
