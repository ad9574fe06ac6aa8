"""The clipped policy-gradient family: GRPO, DAPO, Dr. GRPO, GSPO, CISPO, PPO in one loss.

Notation, per completion token t of sequence i (shapes (n, T); advantages (n,) are broadcast
over tokens): log-ratio ``lr = logp - logp_old``, ratio ``r = exp(lr)``, advantage ``A``,
``clip(r) = clamp(r, 1 - clip_low, 1 + clip_high)``, ``sg`` = stop-gradient.

Importance ratio (``loss.ratio_level``)
    token      r_it = exp(lr_it)                                    (PPO, GRPO, DAPO, ...)
    sequence   s_i  = exp(1/|o_i| sum_t lr_it), used for every token of i
               (GSPO, Zheng et al. 2025, arXiv:2507.18071 -> clip range ~3e-4 / 4e-4)

Per-token loss (``loss.surrogate``)
    clip       l = -min(r A, clip(r) A)          (PPO, Schulman et al. 2017, arXiv:1707.06347)
               dual-clip (``clip_c`` = c > 1, Ye et al. 2020, arXiv:1912.09729): for A < 0,
               l = -max(min(r A, clip(r) A), c A), so l <= -c A = c |A|
    cispo      l = -sg(clip(r)) * A * logp       (MiniMax-M1, arXiv:2506.13585): every token
               keeps a gradient sg(clip(r)) A grad(logp); the weight, not the update, is
               clipped

Aggregation (``loss.aggregation``): see :mod:`steerl.losses.base` (global-batch denominators).

Penalties (same aggregation and mask as the policy term)
    KL (``kl_in=loss``)     L += kl_coef * agg(k),   k from ``kl_estimator`` (below)
    entropy                 L -= entropy_coef * agg(H),  H (n, T) the policy's entropy
With ``kl_in=reward`` the trainer subtracts kl_coef * sum_t k1 from each sequence's reward
before the advantages instead; the loss then only logs ``kl``.

KL estimators of KL(pi || ref) from tokens sampled from pi (Schulman 2020, "Approximating KL
divergence"), with log r = ref_logp - logp (r = ref / pi):
    k1 = -log r                unbiased, can be negative; its expected gradient on-policy is 0,
                               so use it in the reward, not as a loss penalty
    k2 = 0.5 (log r)^2         biased, >= 0; its gradient is the KL's gradient on-policy
    k3 = (r - 1) - log r       unbiased, >= 0 (GRPO's choice)

Truncated completions (``mask_truncated``, DAPO overlong filtering) get zero weight in every
term and count in no denominator (see :func:`steerl.losses.base.global_counts`).
"""

from __future__ import annotations

import torch

from steerl.config import LossConfig
from steerl.losses.base import LOSSES, LossInputs, aggregate, loss_mask


def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token k1 = logp - ref_logp = -log r: (n, T) -> (n, T); unbiased, any sign."""
    return logprobs - ref_logprobs


def kl_k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token k2 = 0.5 (log r)^2: (n, T) -> (n, T); >= 0, biased."""
    return 0.5 * (ref_logprobs - logprobs) ** 2


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token k3 = r - 1 - log r: (n, T) -> (n, T); >= 0, unbiased.

    As ``expm1(d) - d`` (``d = log r``): ``exp(d) - d - 1`` cancels to a tiny negative value
    when ``d`` is near 0 (-1.1e-16 at d = 5.4e-14, found by the property test)."""
    d = ref_logprobs - logprobs
    return torch.expm1(d) - d


KL_ESTIMATORS = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-token estimate of KL(pi || ref) with estimator ``kind`` (k1, k2 or k3)."""
    return KL_ESTIMATORS[kind](logprobs, ref_logprobs)


class PolicyGradientLoss:
    """Clipped policy-gradient family (presets grpo, dapo, dr_grpo, gspo, cispo, ppo).

    Input: :class:`LossInputs` (logprobs with grad, old_logprobs, advantages, mask: (n, T) /
    (n,)); output: ``(loss, metrics)`` with the loss this micro-batch contributes to the global
    batch loss. Formulas and papers: this module's docstring.
    """

    def __init__(self, cfg: LossConfig):
        self.cfg = cfg

    @property
    def normalize(self) -> str:
        return self.cfg.aggregation

    def __call__(self, x: LossInputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        c = self.cfg
        comp_mask = x.mask.to(x.logprobs.dtype)
        mask = loss_mask(comp_mask, x.truncated, c.mask_truncated)
        adv = x.advantages if x.advantages.dim() == 2 else x.advantages[:, None]
        adv = adv.to(x.logprobs.device, x.logprobs.dtype)

        log_ratio = x.logprobs - x.old_logprobs
        if c.ratio_level == "sequence":  # GSPO: exp of the mean token log-ratio
            seq = (log_ratio * comp_mask).sum(-1) / comp_mask.sum(-1).clamp_min(1)
            log_ratio = seq[:, None].expand_as(x.logprobs)
        ratio = log_ratio.exp()
        clipped = ratio.clamp(1 - c.clip_low, 1 + c.clip_high)

        metrics: dict[str, torch.Tensor] = {}
        if c.surrogate == "cispo":
            per_token = -clipped.detach() * adv * x.logprobs
            is_clipped = clipped != ratio
        else:
            plain, clip_obj = ratio * adv, clipped * adv
            objective = torch.minimum(plain, clip_obj)
            is_clipped = clip_obj < plain
            if c.clip_c is not None:  # dual-clip: bound the loss of negative advantages
                floor = c.clip_c * adv
                dual = (adv < 0) & (objective < floor)
                objective = torch.where(dual, floor, objective)
                with torch.no_grad():
                    metrics["dual_clip_fraction"] = (dual.to(mask.dtype) * mask).sum() / (
                        x.total_tokens
                    )
            per_token = -objective
        with torch.no_grad():
            metrics["clip_fraction"] = (is_clipped.to(mask.dtype) * mask).sum() / x.total_tokens

        pg = aggregate(per_token, mask, c.aggregation, x)
        loss = pg
        metrics["pg_loss"] = pg.detach()
        if x.ref_logprobs is not None:
            kl = aggregate(
                kl_estimate(x.logprobs, x.ref_logprobs, c.kl_estimator), mask, c.aggregation, x
            )
            metrics["kl"] = kl.detach()
            if c.kl_in == "loss" and c.kl_coef > 0:
                loss = loss + c.kl_coef * kl
        if c.entropy_coef > 0:
            if x.entropy is None:
                raise ValueError("loss.entropy_coef > 0 needs LossInputs.entropy (with grad)")
            ent = aggregate(x.entropy, mask, c.aggregation, x)
            metrics["entropy_bonus"] = ent.detach()
            loss = loss - c.entropy_coef * ent
        return loss, metrics

    def __repr__(self) -> str:
        c = self.cfg
        return (
            f"PolicyGradientLoss(preset={c.preset}, surrogate={c.surrogate}, "
            f"ratio={c.ratio_level}, clip=({c.clip_low}, {c.clip_high}, c={c.clip_c}), "
            f"aggregation={c.aggregation}, kl={c.kl_coef}/{c.kl_estimator}/{c.kl_in})"
        )


#: The historical name of the same loss.
GRPOLoss = PolicyGradientLoss

LOSSES.register("pg", "Clipped policy-gradient family, configured by loss.preset and keys")(
    PolicyGradientLoss
)
LOSSES.register("grpo", "Alias of 'pg' (the clipped policy-gradient family)")(PolicyGradientLoss)
