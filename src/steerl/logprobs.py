"""Per-token log-probabilities of completions under a model (teacher-forced forward)."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from steerl.rollout import Rollout, position_ids_from_mask


def gather_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``log softmax(logits)[targets]`` without keeping a full (N, T, V) log-softmax.

    logits: (N, T, V) any float dtype; targets: (N, T) -> (N, T) float32.
    Rows are processed in chunks, so the float32 upcast never holds more than ~16M values.
    """
    n, t, v = logits.shape
    rows = max(1, (1 << 24) // max(1, t * v))  # rows per chunk: at most ~16M float32 values
    out = torch.empty(targets.shape, dtype=torch.float32, device=logits.device)
    for i in range(0, n, rows):
        chunk = logits[i : i + rows].float()
        picked = chunk.gather(-1, targets[i : i + rows, :, None]).squeeze(-1)
        out[i : i + rows] = picked - chunk.logsumexp(-1)
    return out


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of each position's distribution: (N, T, V) -> (N, T)."""
    logp = logits.float().log_softmax(-1)
    return -(logp.exp() * logp).sum(-1)


def completion_logprobs(
    model: PreTrainedModel, batch: Rollout, with_entropy: bool = False, entropy_grad: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probabilities (N, T) of ``batch.completion_ids`` given the prompts.

    Returns ``(logprobs, entropy)``; entropy is ``None`` unless asked for, and detached unless
    ``entropy_grad`` (an entropy bonus in the loss needs its gradient).
    """
    ids = torch.cat([batch.prompt_ids, batch.completion_ids], dim=1)
    mask = torch.cat([batch.prompt_mask, batch.completion_mask], dim=1)
    pos = position_ids_from_mask(mask)
    p, t = batch.prompt_ids.shape[1], batch.completion_ids.shape[1]
    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits
    logits = logits[:, p - 1 : p - 1 + t, :]
    lp = gather_logprobs(logits, batch.completion_ids)
    ent = None
    if with_entropy:
        ent = entropy_from_logits(logits if entropy_grad else logits.detach())
    return lp, ent
