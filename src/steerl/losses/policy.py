"""The clipped policy-gradient surrogate (GRPO) with a k3 KL penalty.

For completion tokens t of sample i with importance ratio r = exp(logp - logp_old) and
advantage A_i (group-normalised reward),

    L_PG = - 1/|tokens| * sum_{i,t} min(r * A_i, clip(r, 1 - eps_low, 1 + eps_high) * A_i)

(token-mean over the global batch; DAPO, Yu et al. 2025, for the asymmetric clip), and the
KL penalty uses Schulman's unbiased, non-negative k3 estimator of KL(pi || ref):

    k3 = exp(ref - logp) - (ref - logp) - 1,   L = L_PG + beta * 1/|tokens| * sum k3

GRPO: Shao et al. 2024, "DeepSeekMath", arXiv:2402.03300.
"""

from __future__ import annotations

import torch

from steerl.config import LossConfig
from steerl.losses.base import LOSSES, LossInputs


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(pi || ref): (n, T) -> (n, T), >= 0."""
    d = ref_logprobs - logprobs
    return d.exp() - d - 1


class GRPOLoss:
    """Clipped surrogate with group-normalised advantages, token-mean, k3 KL penalty."""

    normalize = "token"

    def __init__(self, cfg: LossConfig):
        self.cfg = cfg

    def __call__(self, x: LossInputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        c = self.cfg
        mask = x.mask.to(x.logprobs.dtype)
        adv = x.advantages if x.advantages.dim() == 2 else x.advantages[:, None]
        ratio = (x.logprobs - x.old_logprobs).exp()
        clipped = ratio.clamp(1 - c.clip_low, 1 + c.clip_high)
        per_token = -torch.minimum(ratio * adv, clipped * adv)
        metrics: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            is_clipped = (ratio * adv != torch.minimum(ratio * adv, clipped * adv)).float()
            metrics["clip_fraction"] = (is_clipped * mask).sum() / x.total_tokens
        pg = (per_token * mask).sum() / x.total_tokens
        loss = pg
        metrics["pg_loss"] = pg.detach()
        if x.ref_logprobs is not None:
            kl = (kl_k3(x.logprobs, x.ref_logprobs) * mask).sum() / x.total_tokens
            metrics["kl"] = kl.detach()
            if c.kl_coef > 0:
                loss = loss + c.kl_coef * kl
        return loss, metrics

    def __repr__(self) -> str:
        c = self.cfg
        return f"GRPOLoss(clip=({c.clip_low}, {c.clip_high}), kl_coef={c.kl_coef})"


LOSSES.register("grpo", "GRPO clipped surrogate, token-mean, k3 KL penalty")(GRPOLoss)
