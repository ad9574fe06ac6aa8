"""The loss-term protocol and registry.

A loss term takes the batch and the advantages and returns ``(loss, metrics)``. It declares
how it normalizes (``normalize = "token"`` or ``"sequence"``): the denominator is the count
over the *global* batch (passed in as ``total``), so summing the loss over micro-batches
reproduces the full-batch loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from steerl.registry import Registry

LOSSES: Registry = Registry("loss")


@dataclass
class LossInputs:
    """What a policy loss sees for one micro-batch.

    logprobs, old_logprobs, ref_logprobs, mask: (n, T); advantages: (n,) or (n, T);
    total_tokens / total_sequences: the counts over the whole (global) batch.
    """

    logprobs: torch.Tensor
    old_logprobs: torch.Tensor
    advantages: torch.Tensor
    mask: torch.Tensor
    total_tokens: float
    total_sequences: float
    ref_logprobs: torch.Tensor | None = None
    entropy: torch.Tensor | None = None
