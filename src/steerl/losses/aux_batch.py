"""The data of the auxiliary loss terms (``loss.aux``) for one RL batch, and their values.

An RL batch is ``groups x G`` sampled rows (group ``g`` = rows ``g*G .. g*G+G-1``, one prompt
each). Auxiliary terms read one of three inputs (:attr:`LossTerm.inputs`):

- ``demonstrations``: each prompt's reference answer as a teacher-forcing batch (SFT);
- ``pairs``: per group, the best- vs the worst-rewarded completion where they differ (DPO);
- ``rollout``: the policy loss's own inputs.

:func:`build_aux_batch` prepares the first two once per step; :func:`aux_term_value` computes
one term on the groups of one micro-batch (micro-batches always hold whole groups).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from steerl import distributed as ddp
from steerl.logprobs import completion_logprobs
from steerl.losses.base import DemoInputs, LossInputs, LossTerm, PairInputs
from steerl.rollout import Rollout, encode_prompts
from steerl.tasks import Prompt


@dataclass
class AuxBatch:
    """Data of the auxiliary loss terms for one RL batch (group g = rows g*G .. g*G+G-1)."""

    demos: Rollout | None = None  # reference answers as a teacher-forcing batch
    demo_group: torch.Tensor | None = None  # (D,) group of each demonstration row
    demo_tokens: float = 1.0  # demonstration tokens in the whole batch
    pairs: torch.Tensor | None = None  # (P, 3): group, chosen row, rejected row
    num_pairs: float = 1.0  # pairs in the whole batch


def teacher_forcing_batch(
    tokenizer, prompts: list[str], completions: list[str], device, chat_template: bool
) -> Rollout:
    """Prompts left-padded, completions + EOS right-padded, as a :class:`Rollout`."""
    p_ids, p_mask = encode_prompts(tokenizer, prompts, device, chat_template)
    comp = tokenizer(completions, add_special_tokens=False).input_ids
    t = max(len(c) for c in comp) + 1
    ids = torch.full((len(comp), t), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(comp), t), dtype=torch.long)
    for i, c in enumerate(comp):
        ids[i, : len(c) + 1] = torch.tensor([*c, tokenizer.eos_token_id])
        mask[i, : len(c) + 1] = 1
    zeros = torch.zeros(ids.shape, dtype=torch.float32)
    trunc = torch.zeros(len(comp), dtype=torch.bool)
    return Rollout(p_ids, p_mask, ids.to(device), mask.to(device), zeros.to(device), trunc)


def build_aux_batch(
    terms: list[LossTerm],
    reward: torch.Tensor,
    prompts: list[Prompt],
    group_size: int,
    make_batch: Callable[[list[str], list[str]], Rollout],
) -> AuxBatch | None:
    """Data of ``terms`` for the kept groups (one prompt per group); None without aux terms.

    Demonstrations: each prompt's reference answer (prompts without one are skipped).
    Pairs: per group, the best- vs the worst-rewarded completion, where they differ. The
    counts (demonstration tokens, pairs) are summed over ranks under torchrun.
    """
    kinds = {t.inputs for t in terms}
    if not kinds:
        return None
    G = group_size
    aux = AuxBatch()
    if "demonstrations" in kinds:
        groups = [g for g, p in enumerate(prompts) if p.answer is not None]
        if groups:
            aux.demos = make_batch(
                [prompts[g].text for g in groups], [str(prompts[g].answer) for g in groups]
            )
            aux.demo_group = torch.tensor(groups)
        demo_tokens = float(aux.demos.completion_mask.sum()) if groups else 0.0
        aux.demo_tokens = max(ddp.all_sum([demo_tokens])[0], 1.0)
    if "pairs" in kinds:
        r = reward.view(-1, G)
        hi, lo = r.nan_to_num(-math.inf), r.nan_to_num(math.inf)
        groups = (hi.amax(-1) > lo.amin(-1)).nonzero().squeeze(-1)
        chosen = groups * G + hi.argmax(-1)[groups]
        rejected = groups * G + lo.argmin(-1)[groups]
        aux.pairs = torch.stack([groups, chosen, rejected], -1)
        aux.num_pairs = ddp.all_sum([float(len(groups))])[0]
    return aux


def aux_term_value(
    term: LossTerm,
    model,
    idx: torch.Tensor,
    x: LossInputs,
    aux: AuxBatch | None,
    group_size: int,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One auxiliary term on the groups of micro-batch ``idx`` (always whole groups)."""
    G, start = group_size, int(idx[0])
    g0, g1 = start // G, int(idx[-1]) // G + 1
    zero = x.logprobs.new_zeros(())
    if term.inputs == "demonstrations":
        if aux is None or aux.demos is None:
            return zero, {}
        rows = ((aux.demo_group >= g0) & (aux.demo_group < g1)).nonzero().squeeze(-1)
        if not len(rows):
            return zero, {}
        demos = aux.demos.index(rows)
        lp, _ = completion_logprobs(model, demos)
        return term(DemoInputs(lp, demos.completion_mask.float(), aux.demo_tokens))
    if term.inputs == "pairs":
        if aux is None or aux.pairs is None or x.ref_logprobs is None:
            return zero, {}
        sel = aux.pairs[(aux.pairs[:, 0] >= g0) & (aux.pairs[:, 0] < g1)]
        c, r = sel[:, 1] - start, sel[:, 2] - start
        seq = (x.logprobs * x.mask).sum(-1)
        ref = (x.ref_logprobs * x.mask).sum(-1)
        return term(PairInputs(seq[c], seq[r], ref[c], ref[r], aux.num_pairs))
    return term(x)  # "rollout": the same inputs as the policy loss
