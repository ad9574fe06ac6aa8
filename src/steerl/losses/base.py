"""Loss inputs, aggregation over the global batch, the loss-term protocol and registries.

A policy loss takes :class:`LossInputs` for one micro-batch and returns ``(loss, metrics)``.
Every denominator is a count over the *global* batch (``total_tokens``, ``total_sequences``,
``max_len``, passed in by the trainer), so the micro-batch losses -- and their gradients -- sum
to the full-batch loss whatever the micro-batch size.

Aggregation modes (``loss.aggregation``) of a per-token quantity ``l`` (n, T) with loss mask
``m`` (n, T), ``L_i = sum_t m_it`` the number of loss tokens of sequence i, ``N`` the number of
sequences carrying loss and ``T_max`` the constant ``rollout.max_new_tokens``:

    token-mean                sum_{i,t} m l / sum_{i,t} m             (DAPO)
    seq-mean-token-mean       1/N sum_i (sum_t m l / L_i)             (GRPO paper, GSPO)
    seq-mean-token-sum        1/N sum_i  sum_t m l
    seq-mean-token-sum-norm   sum_{i,t} m l / (N * T_max)             (Dr. GRPO)

Length bias: with token-mean every *token* weighs the same, so a sequence's total weight grows
with its length (L_i / sum L); seq-mean-token-mean gives every *sequence* the same total weight
1/N, so each token of a long sequence weighs less (1 / (N L_i)). The two -sum modes weigh every
token 1/N resp. 1/(N T_max) regardless of length (no per-sequence normalisation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import torch

from steerl.registry import Registry

#: Policy losses (``loss.name``) and standalone loss functions.
LOSSES: Registry = Registry("loss")
#: Auxiliary loss terms (``loss.aux[].name``): classes built as ``cls(spec: AuxLossSpec)``.
LOSS_TERMS: Registry = Registry("loss_term")


@dataclass
class LossInputs:
    """What a policy loss sees for one micro-batch.

    logprobs, old_logprobs, ref_logprobs, mask, entropy: (n, T); advantages: (n,) or (n, T);
    truncated: (n,) bool, true where the completion hit max_new_tokens without EOS.
    total_tokens / total_sequences: loss tokens / sequences over the whole (global) batch, as
    :func:`global_counts` computes them; max_len: the -norm constant (``max_new_tokens``).
    """

    logprobs: torch.Tensor
    old_logprobs: torch.Tensor
    advantages: torch.Tensor
    mask: torch.Tensor
    total_tokens: float
    total_sequences: float
    ref_logprobs: torch.Tensor | None = None
    entropy: torch.Tensor | None = None
    max_len: float | None = None
    truncated: torch.Tensor | None = None


def loss_mask(
    mask: torch.Tensor, truncated: torch.Tensor | None, mask_truncated: bool
) -> torch.Tensor:
    """The completion mask, with truncated rows zeroed when ``mask_truncated`` (DAPO)."""
    if mask_truncated and truncated is not None:
        return mask * (~truncated.bool()).to(mask.device, mask.dtype)[:, None]
    return mask


def global_counts(
    mask: torch.Tensor, truncated: torch.Tensor | None = None, mask_truncated: bool = False
) -> tuple[float, float]:
    """``(total_tokens, total_sequences)`` over the global batch, for :class:`LossInputs`.

    With ``mask_truncated`` the truncated completions count in neither: they are dropped from
    the batch as a filtered group would be, so the weight of the others does not shrink with
    the truncation rate. Both counts are at least 1 (an empty batch gives loss 0, not NaN).
    """
    m = loss_mask(mask, truncated, mask_truncated)
    tokens = float(m.sum())
    seqs = float((m.sum(-1) > 0).sum())
    return max(tokens, 1.0), max(seqs, 1.0)


Aggregation = Literal[
    "token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"
]


def aggregate(values: torch.Tensor, mask: torch.Tensor, mode: str, x: LossInputs) -> torch.Tensor:
    """Reduce per-token ``values`` (n, T) under ``mask`` (n, T) to this micro-batch's share."""
    masked = values * mask
    if mode == "token-mean":
        return masked.sum() / x.total_tokens
    if mode == "seq-mean-token-mean":
        per_seq = masked.sum(-1) / mask.sum(-1).clamp_min(1)
        return per_seq.sum() / x.total_sequences
    if mode == "seq-mean-token-sum":
        return masked.sum() / x.total_sequences
    if mode == "seq-mean-token-sum-norm":
        if x.max_len is None:
            raise ValueError("aggregation seq-mean-token-sum-norm needs LossInputs.max_len")
        return masked.sum() / (x.total_sequences * x.max_len)
    raise ValueError(f"unknown aggregation {mode!r}")


# --------------------------------------------------------------------------- loss terms
@dataclass
class DemoInputs:
    """Demonstrations for an SFT term: logprobs, mask (n, T); total_tokens over the batch."""

    logprobs: torch.Tensor
    mask: torch.Tensor
    total_tokens: float


@dataclass
class PairInputs:
    """Preference pairs for a DPO term: sequence log-probs (P,) each; total_pairs globally."""

    policy_chosen_logps: torch.Tensor
    policy_rejected_logps: torch.Tensor
    ref_chosen_logps: torch.Tensor
    ref_rejected_logps: torch.Tensor
    total_pairs: float


@runtime_checkable
class LossTerm(Protocol):
    """One named term of the summed loss.

    The trainer gives each term the inputs it declares (``"rollout"``: :class:`LossInputs`;
    ``"demonstrations"``: :class:`DemoInputs`; ``"pairs"``: :class:`PairInputs`) and hands
    ``{name: coef * loss}`` for all terms to the balancer, which does the backward.
    """

    name: str
    coef: float
    inputs: str

    def __call__(self, x) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...
