"""From rewards to advantages: combine named rewards, then normalise (``loss.advantage``).

Rewards are (B*G,) with consecutive groups of G completions of one prompt; NaN marks an
unscored sample, which is left out of every statistic and gets advantage 0. Estimators:

    group_mean_std  (r - mean_g) / (std_g + eps)       GRPO (Shao et al. 2024); std with n-1
    group_mean      r - mean_g                          Dr. GRPO (Liu et al. 2025): no std
    batch_std       (r - mean_g) / (std_batch + eps)    REINFORCE++-baseline (Hu et al. 2025):
                    group baseline, scaled by the std of the centred values over the batch
    rloo            r_i - mean_{j != i} r_j             RLOO (Ahmadian et al. 2024):
                    = n/(n-1) (r_i - mean_g) over the n scored samples of the group
"""

from __future__ import annotations

import torch


def weighted_sum(scores: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(N, K) rewards, (K,) weights -> (N,); NaN (unscored) where a weighted column is NaN."""
    used = weights != 0
    s = scores[:, used]
    out = (s.nan_to_num(0.0) * weights[used]).sum(-1)
    return out.masked_fill(s.isnan().any(-1), float("nan"))


def group_advantages(
    rewards: torch.Tensor, group_size: int, scale: bool = True, eps: float = 1e-4
) -> torch.Tensor:
    """GRPO advantages: ``(r - mean_group) / (std_group + eps)`` (or without the std).

    rewards: (B*G,) with consecutive groups of ``group_size``; NaN marks unscored samples,
    which are left out of their group's statistics and get advantage 0.
    """
    r = rewards.view(-1, group_size)
    valid = ~r.isnan()
    n = valid.sum(-1, keepdim=True).clamp_min(1)
    r0 = r.nan_to_num(0.0)
    mean = r0.sum(-1, keepdim=True) / n
    adv = r0 - mean
    if scale:
        var = ((adv * valid) ** 2).sum(-1, keepdim=True) / (n - 1).clamp_min(1)
        adv = adv / (var.sqrt() + eps)
    return (adv * valid).view(-1)


def group_std(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Per-group standard deviation over scored samples: (B*G,) -> (B,)."""
    r = rewards.view(-1, group_size)
    valid = ~r.isnan()
    n = valid.sum(-1).clamp_min(1)
    mean = r.nan_to_num(0.0).sum(-1) / n
    dev = (r.nan_to_num(0.0) - mean[:, None]) * valid
    return ((dev**2).sum(-1) / n).sqrt()


ADVANTAGE_ESTIMATORS = ("group_mean_std", "group_mean", "batch_std", "rloo")


def compute_advantages(
    rewards: torch.Tensor, group_size: int, estimator: str = "group_mean_std", eps: float = 1e-4
) -> torch.Tensor:
    """Advantages (B*G,) by ``estimator`` (see the module docstring); 0 where unscored."""
    if estimator == "group_mean_std":
        return group_advantages(rewards, group_size, scale=True, eps=eps)
    if estimator == "group_mean":
        return group_advantages(rewards, group_size, scale=False)
    if estimator == "batch_std":
        centred = group_advantages(rewards, group_size, scale=False)
        valid = ~rewards.isnan()
        n = int(valid.sum())
        if n < 2:
            return torch.zeros_like(centred)
        std = centred[valid].std()  # centred values have mean 0 over each group
        return centred / (std + eps)
    if estimator == "rloo":
        if group_size < 2:
            raise ValueError(
                f"advantage=rloo needs rollout.group_size >= 2 (a leave-one-out baseline), "
                f"got group_size={group_size}"
            )
        r = rewards.view(-1, group_size)
        n = (~r.isnan()).sum(-1, keepdim=True)
        centred = group_advantages(rewards, group_size, scale=False).view(-1, group_size)
        scale = n / (n - 1).clamp_min(1)
        return (centred * scale * (n > 1)).view(-1)
    raise ValueError(f"unknown advantage estimator {estimator!r}; one of {ADVANTAGE_ESTIMATORS}")
