"""Supervised fine-tuning: negative log-likelihood of demonstration tokens (token-mean)."""

from __future__ import annotations

import torch

from steerl.losses.base import LOSS_TERMS, LOSSES, DemoInputs


def sft_loss(
    logprobs: torch.Tensor, mask: torch.Tensor, total_tokens: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``L = -sum(mask * logprobs) / total_tokens``; logprobs, mask: (n, T) -> scalar.

    ``total_tokens`` is the demonstration-token count of the global batch, so micro-batch
    losses add up to the full-batch loss.
    """
    nll = -(logprobs * mask).sum() / total_tokens
    return nll, {"nll": nll.detach()}


LOSSES.register("sft", "Negative log-likelihood of demonstrations (token-mean)")(sft_loss)


@LOSS_TERMS.register("sft", "Auxiliary SFT on demonstrations (RL: the prompts' reference answers)")
class SFTTerm:
    """``coef * sft_loss`` on demonstrations (:class:`DemoInputs`) as a named loss term."""

    inputs = "demonstrations"

    def __init__(self, spec):
        self.name, self.coef = spec.name, spec.coef

    def __call__(self, x: DemoInputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return sft_loss(x.logprobs, x.mask, x.total_tokens)

    def __repr__(self) -> str:
        return f"SFTTerm(coef={self.coef})"
