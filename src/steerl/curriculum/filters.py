"""DAPO dynamic sampling: groups whose rewards do not vary carry no gradient signal.

:func:`sample_groups` runs the first three stages of an RL step (curriculum -> rollout ->
rewards) in rounds: it drops the groups whose training signal does not vary (std at most
``curriculum.zero_variance_tol``) and, up to ``curriculum.max_refill_rounds`` times, samples
further prompts and generates again until ``batch_size`` groups carry signal (Yu et al. 2025,
DAPO, "dynamic sampling"). The training signal is what the advantages are computed from: the
reward scalarised by ``objectives.combine`` with ``objectives.preference`` (when set) as the
weights, or for ``combine: gdpo``, which normalises each reward in its group, every used
reward column (a group is dropped only when all of them are constant). Extra informative
groups beyond ``batch_size`` are not trained on. Only when the cap is hit can the batch be
smaller than requested; that is logged (``curriculum/short_batch``,
``curriculum/missing_groups``) and, with refill on, said once in a :class:`CurriculumWarning`.

A refill round asks for ``ceil(missing / keep_rate)`` prompts (the keep rate of the rounds so
far), at most ``batch_size``: a cheap round when most groups are informative, a full one when
few are.

Under ``torchrun`` (:mod:`steerl.distributed`) every count here is global: ``sample(n)``
returns this rank's share of ``n`` prompts (``n`` rounded up to a multiple of the ranks),
refill decisions use the informative groups of all ranks, and the groups kept are the first
``batch_size`` informative ones in the global order (round, rank, group), so all ranks agree.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, fields

import torch

from steerl import distributed as ddp
from steerl.config import CurriculumConfig
from steerl.objectives.advantages import group_std
from steerl.rewards import RewardResult
from steerl.rollout import Rollout
from steerl.tasks.base import Prompt


class CurriculumWarning(UserWarning):
    """The curriculum could not do what was asked (e.g. fill the batch) and says so."""


SHORT_BATCH_WARNING = (
    "DAPO dynamic sampling: curriculum.max_refill_rounds was reached with fewer informative "
    "groups than rollout.prompts_per_step, so some steps train on a smaller batch (logged as "
    "curriculum/short_batch and curriculum/missing_groups). Raise max_refill_rounds, or use a "
    "selector that avoids always-solved and never-solved prompts."
)


def informative_groups(rewards: torch.Tensor, group_size: int, tol: float) -> torch.Tensor:
    """(B*G,) or (B*G, C) training signal -> (B,) bool: true where the group's std exceeds
    ``tol`` in some column (NaN: unscored, left out).

    A tolerance, not ``!= 0``, so float noise does not let a constant group through.
    """
    if rewards.dim() == 1:
        return group_std(rewards, group_size) > tol
    if rewards.shape[1] == 0:  # nothing is used: no group carries signal
        return torch.zeros(rewards.shape[0] // group_size, dtype=torch.bool)
    cols = [group_std(c.contiguous(), group_size) > tol for c in rewards.unbind(-1)]
    return torch.stack(cols, -1).any(-1)


@dataclass
class SampledGroups:
    """Every group sampled in one step (all rounds, in order) and which are trained on."""

    prompts: list[Prompt]  # one per group
    batch: Rollout  # len(prompts) * G rows
    completions: list[str]
    scored: RewardResult  # every reward's scores, (len(prompts) * G, K)
    reward: torch.Tensor  # (len(prompts) * G,) combined reward, NaN unscored
    keep: torch.Tensor  # (len(prompts),) bool: trained on (informative, at most batch_size)
    group_size: int
    requested: int  # batch_size
    refill_rounds: int = 0
    cap_hit: bool = False  # fewer than requested kept and no refill round left
    generate_seconds: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def prompt_ids(self) -> list[str]:
        return [p.id for p in self.prompts]

    @property
    def texts(self) -> list[str]:
        return [p.text for p in self.prompts for _ in range(self.group_size)]

    def pass_rewards(self) -> torch.Tensor:
        """(groups, G) the first reward's scores: the pass indicator the curriculum tracks."""
        return self.scored.scores[:, 0].reshape(len(self.prompts), self.group_size)

    def kept_rows(self) -> torch.Tensor:
        return self.keep.repeat_interleave(self.group_size).nonzero().squeeze(-1)

    def kept_prompts(self) -> list[Prompt]:
        return [p for p, k in zip(self.prompts, self.keep.tolist()) if k]


def sample_groups(
    sample: Callable[[int], list[Prompt]],
    generate: Callable[[list[Prompt]], tuple[Rollout, list[str]]],
    score: Callable[[list[Prompt], list[str]], tuple[torch.Tensor, RewardResult]],
    batch_size: int,
    group_size: int,
    cfg: CurriculumConfig,
    pad_token_id: int = 0,
    signal: Callable[[RewardResult], torch.Tensor] | None = None,
) -> SampledGroups:
    """Sample, generate and score groups until ``batch_size`` are informative or the cap.

    ``sample(n)``: n prompts from the curriculum (under torchrun: this rank's share of the n
    drawn on every rank); ``generate(prompts)``: their G completions
    each (a Rollout of n*G rows and the decoded texts); ``score(prompts, completions)``: the
    combined reward (n*G,) and every reward's scores. ``signal(scored)``: every reward's scores
    (N, K) over the rows sampled so far in the step -> what the advantages are computed from,
    (N,) or (N, C) (the trainer's :meth:`~steerl.objectives.scalarize.Combiner.signal`: the
    ``objectives.combine`` / ``preference`` scalarisation, or GDPO's reward columns); a group
    is informative where some column varies within it. Judged over the whole step, so a
    batch-dependent combination (Tchebycheff's dynamic ideal point) sees what training sees.
    Default: the combined reward from ``score``. With ``cfg.drop_zero_variance`` off, one
    round and every group kept.
    """

    def informative(parts: list) -> torch.Tensor:
        if signal is None:
            x = torch.cat([r[3] for r in parts])
        else:
            first = parts[0][4]
            scores = torch.cat([r[4].scores for r in parts])
            x = signal(RewardResult(scores, first.names, first.weights, {}))
        return informative_groups(x, group_size, cfg.zero_variance_tol)

    rounds: list[tuple[list[Prompt], Rollout, list[str], torch.Tensor, RewardResult]] = []
    t_gen = 0.0
    kept = 0
    n_groups = 0  # over all ranks
    world = ddp.world_size()
    n = batch_size
    while True:
        prompts = sample(n)
        t0 = time.perf_counter()
        batch, completions = generate(prompts)
        t_gen += time.perf_counter() - t0
        reward, scored = score(prompts, completions)
        rounds.append((prompts, batch, completions, reward, scored))
        n_groups += len(prompts) * world
        if not cfg.drop_zero_variance:
            break
        kept = int(ddp.all_sum([float(informative(rounds).sum())])[0])
        if kept >= batch_size or len(rounds) > cfg.max_refill_rounds:
            break
        rate = kept / n_groups
        n = min(batch_size, math.ceil((batch_size - kept) / rate)) if rate > 0 else batch_size
        n = math.ceil(n / world) * world  # an equal share for every rank

    prompts = [p for r in rounds for p in r[0]]
    reward = torch.cat([r[3] for r in rounds])
    if cfg.drop_zero_variance:
        useful = informative(rounds)
        before = _informative_before(useful, [len(r[0]) for r in rounds])
        keep = useful & (before < batch_size)  # the first batch_size (globally)
    else:
        useful = keep = torch.ones(len(prompts), dtype=torch.bool)
    n_useful, n_keep = (int(x) for x in ddp.all_sum([float(useful.sum()), float(keep.sum())]))
    cap_hit = n_keep < batch_size
    if cap_hit and cfg.max_refill_rounds:
        warnings.warn(SHORT_BATCH_WARNING, CurriculumWarning, stacklevel=3)
    metrics = {
        "curriculum/filtered_fraction": 1.0 - n_useful / n_groups,
        "curriculum/refill_rounds": float(len(rounds) - 1),
        "curriculum/sampled_groups": float(n_groups),
        "curriculum/kept_groups": float(n_keep),
        "curriculum/missing_groups": float(batch_size - n_keep),
        "curriculum/short_batch": float(cap_hit),
    }
    return SampledGroups(
        prompts=prompts,
        batch=cat_rollouts([r[1] for r in rounds], pad_token_id),
        completions=[c for r in rounds for c in r[2]],
        scored=cat_scores([r[4] for r in rounds]),
        reward=reward,
        keep=keep,
        group_size=group_size,
        requested=batch_size,
        refill_rounds=len(rounds) - 1,
        cap_hit=cap_hit,
        generate_seconds=t_gen,
        metrics=metrics,
    )


def _informative_before(useful: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """(groups,) how many informative groups come before each of this rank's groups in the
    global order: round by round, within a round rank by rank (one process: a cumsum)."""
    per_round = [int(c.sum()) for c in useful.split(sizes)]
    counts = ddp.all_gather_objects(per_round)  # [rank][round]
    r = ddp.rank()
    out, offset, start = [], 0, 0
    for j, size in enumerate(sizes):
        lower = sum(c[j] for c in counts[:r])  # this round, on lower ranks
        u = useful[start : start + size].long()
        out.append(offset + lower + u.cumsum(0) - u)
        offset += sum(c[j] for c in counts)
        start += size
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def cat_rollouts(parts: list[Rollout], pad_token_id: int = 0) -> Rollout:
    """Rollouts stacked by rows: prompts re-padded on the left, completions on the right."""
    if len(parts) == 1:
        return parts[0]
    p_len = max(r.prompt_ids.shape[1] for r in parts)
    c_len = max(r.completion_ids.shape[1] for r in parts)

    def left(t: torch.Tensor, width: int, value: float) -> torch.Tensor:
        return torch.nn.functional.pad(t, (width - t.shape[1], 0), value=value)

    def right(t: torch.Tensor, width: int, value: float) -> torch.Tensor:
        return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)

    return Rollout(
        prompt_ids=torch.cat([left(r.prompt_ids, p_len, pad_token_id) for r in parts]),
        prompt_mask=torch.cat([left(r.prompt_mask, p_len, 0) for r in parts]),
        completion_ids=torch.cat([right(r.completion_ids, c_len, pad_token_id) for r in parts]),
        completion_mask=torch.cat([right(r.completion_mask, c_len, 0) for r in parts]),
        logprobs=torch.cat([right(r.logprobs, c_len, 0.0) for r in parts]),
        truncated=torch.cat([r.truncated for r in parts]),
    )


def cat_scores(parts: list[RewardResult]) -> RewardResult:
    """Reward results stacked by rows; per-reward mean/std/unscored recomputed over all rows,
    the rewards' own metrics averaged weighted by rows."""
    if len(parts) == 1:
        return parts[0]
    scores = torch.cat([r.scores for r in parts])
    rows = [r.scores.shape[0] for r in parts]
    metrics: dict[str, float] = {}
    keys = {k for r in parts for k in r.metrics}
    for k in sorted(keys):
        vals = [(r.metrics[k], w) for r, w in zip(parts, rows) if k in r.metrics]
        finite = [(v, w) for v, w in vals if isinstance(v, (int, float)) and math.isfinite(v)]
        total = sum(w for _, w in finite)
        metrics[k] = sum(v * w for v, w in finite) / total if total else math.nan
    for j, name in enumerate(parts[0].names):
        col = scores[:, j]
        ok = col[~col.isnan()]
        metrics[f"reward/{name}/mean"] = float(ok.mean()) if len(ok) else math.nan
        metrics[f"reward/{name}/std"] = float(ok.std(unbiased=False)) if len(ok) else math.nan
        metrics[f"reward/{name}/unscored"] = 1.0 - len(ok) / max(len(col), 1)
    return RewardResult(
        scores=scores, names=parts[0].names, weights=parts[0].weights, metrics=metrics
    )


def rebalance(
    batch: Rollout,
    adv: torch.Tensor,
    ref_lp: torch.Tensor | None,
    reward: torch.Tensor,
    kept: list[Prompt],
    group_size: int,
    pad_token_id: int,
    device: torch.device,
) -> tuple[Rollout, torch.Tensor, torch.Tensor | None, torch.Tensor, list[Prompt]]:
    """Under torchrun: the kept groups of all ranks, dealt out in equal contiguous shares.

    Dynamic sampling keeps a different number of groups on each rank; this gathers them
    (through the CPU: token ids, masks, log-probs, advantages, rewards) and gives rank r the
    groups ``r*K//world .. (r+1)*K//world`` of the K kept. When K is smaller than the
    number of ranks, no rank trains this step (every rank sees the same K).
    Returns ``(batch, advantages, reference log-probs, rewards, kept prompts)`` of this rank.
    """
    G = group_size
    cpu = lambda t: None if t is None else t.detach().cpu()  # noqa: E731
    mine = (
        Rollout(*(cpu(getattr(batch, f.name)) for f in fields(batch))),
        cpu(adv),
        cpu(ref_lp),
        cpu(reward),
        kept,
    )
    parts = [p for p in ddp.all_gather_objects(mine) if len(p[4])]
    K, w, r = sum(len(p[4]) for p in parts), ddp.world_size(), ddp.rank()
    if K < w:
        return batch.index(torch.arange(0)), adv[:0], ref_lp, reward[:0], []
    pad = pad_token_id
    full = cat_rollouts([p[0] for p in parts], pad)
    width = full.completion_ids.shape[1]

    def cat_rows(i: int, value: float) -> torch.Tensor | None:
        if parts[0][i] is None:
            return None
        ts = [p[i] for p in parts]
        if ts[0].dim() == 2:  # (rows, T): right-pad to the common completion width
            ts = [torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value) for t in ts]
        return torch.cat(ts)

    all_adv, all_ref, all_reward = cat_rows(1, 0.0), cat_rows(2, 0.0), cat_rows(3, 0.0)
    all_kept = [p for part in parts for p in part[4]]
    g0, g1 = r * K // w, (r + 1) * K // w
    rows = torch.arange(g0 * G, g1 * G)
    dev = device
    share = full.index(rows)
    share = Rollout(*(getattr(share, f.name).to(dev) for f in fields(share)))
    return (
        share,
        all_adv[rows].to(adv.device),
        None if all_ref is None else all_ref[rows].to(dev),
        all_reward[rows],
        all_kept[g0:g1],
    )
