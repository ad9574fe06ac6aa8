"""Supervised fine-tuning: negative log-likelihood of demonstration tokens (token-mean)."""

from __future__ import annotations

import torch

from steerl.losses.base import LOSSES


def sft_loss(
    logprobs: torch.Tensor, mask: torch.Tensor, total_tokens: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``-sum(mask * logprobs) / total_tokens``; logprobs, mask: (n, T)."""
    nll = -(logprobs * mask).sum() / total_tokens
    return nll, {"nll": nll.detach()}


LOSSES.register("sft", "Negative log-likelihood of demonstrations (token-mean)")(sft_loss)
