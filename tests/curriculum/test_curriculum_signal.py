"""DAPO filtering judges "zero variance" on the signal that trains, not on the raw weights."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from steerl.config import CurriculumConfig
from steerl.curriculum import informative_groups, sample_groups
from steerl.logging import read_metrics
from steerl.objectives.advantages import compute_advantages, weighted_sum
from steerl.objectives.scalarize import build_combiner
from steerl.rewards import RewardResult
from steerl.rollout import Rollout
from steerl.tasks.base import Prompt
from steerl.trainer import Trainer

G = 4


def combiner(combine: str, preference=None, ideal=None):
    cfg = SimpleNamespace(combine=combine, preference=preference, ideal=ideal, mu=0.1)
    return build_combiner(cfg)


def run(groups: list[list[list[float]]], comb, weights=(1.0, 1.0), rounds=0, batch=None):
    """sample_groups over scripted (G, K) reward rows per group, filtered on ``comb``."""
    queue = [torch.tensor(g, dtype=torch.float64) for g in groups]
    w = torch.tensor(weights, dtype=torch.float64)

    def sample(n):
        return [Prompt(id=str(i), text="x", answer="") for i in range(n)]

    def generate(prompts):
        n = len(prompts) * G
        one = torch.ones(n, 1, dtype=torch.long)
        return Rollout(one, one, one, one, torch.zeros(n, 1), torch.zeros(n, dtype=torch.bool)), [
            "c"
        ] * n

    def score(prompts, completions):
        s = torch.cat([queue.pop(0) for _ in prompts])
        reward = weighted_sum(s, w) if comb is None else comb.reward(s, w, G)  # as the trainer
        return reward, RewardResult(s, ["a", "b"], w, {})

    cfg = CurriculumConfig(max_refill_rounds=rounds)
    signal = None if comb is None else (lambda r: comb.signal(r.scores, r.weights, G))
    return sample_groups(sample, generate, score, batch or len(groups), G, cfg, signal=signal)


VARIES_A = [[1, 1], [0, 1], [1, 1], [0, 1]]  # reward a varies, b is constant
SWAP = [[1, 0], [0, 1], [1, 0], [0, 1]]  # both vary, their sum is constant
CONSTANT = [[1, 0], [1, 0], [1, 0], [1, 0]]


def test_preference_decides_what_counts_as_zero_variance():
    # the rewards' own weights (1, 1) see a varying sum; preference (0, 1) trains on b alone
    assert run([VARIES_A], combiner("weighted_sum")).keep.tolist() == [True]
    out = run([VARIES_A, SWAP], combiner("weighted_sum", preference=[0.0, 1.0]))
    assert out.keep.tolist() == [False, True]
    assert out.metrics["curriculum/filtered_fraction"] == 0.5
    # the trainer's reward is the one trained on: b's value, not a + b
    assert out.reward.view(2, G)[0].tolist() == [1.0] * G


def test_gdpo_drops_a_group_only_when_every_reward_is_constant():
    # the weighted sum of SWAP is constant, but GDPO normalises each reward: signal in both
    assert run([SWAP], None).keep.tolist() == [False]  # the old rule: the summed reward
    out = run([SWAP, CONSTANT, VARIES_A], combiner("gdpo"))
    assert out.keep.tolist() == [True, False, True]
    # a reward with weight 0 does not count
    out = run([VARIES_A], combiner("gdpo", preference=[0.0, 1.0]))
    assert out.keep.tolist() == [False]


def test_tchebycheff_constant_shortfall_is_dropped():
    # weighted sum 1.5, 1.0, 1.5, 1.0 varies; the worst shortfall max(1 - a, 1 - b) is 0.5 always
    g = [[1.0, 0.5], [0.5, 0.5], [1.0, 0.5], [0.5, 0.5]]
    assert run([g], combiner("weighted_sum")).keep.tolist() == [True]
    assert run([g], combiner("tchebycheff", ideal=[1.0, 1.0])).keep.tolist() == [False]
    assert run([g], combiner("smooth_tchebycheff", ideal=[1.0, 1.0])).keep.tolist() == [True]


def test_float_noise_in_one_gdpo_column_is_still_zero_variance():
    noisy = [[1.0, 0.0], [1.0 + 1e-9, 0.0], [1.0, 0.0], [1.0 - 1e-9, 0.0]]
    assert run([noisy], combiner("gdpo")).keep.tolist() == [False]
    x = torch.tensor(noisy, dtype=torch.float64)
    assert informative_groups(x, G, tol=0.0).tolist() == [True]


@pytest.mark.filterwarnings("ignore::steerl.curriculum.CurriculumWarning")  # short batches
@pytest.mark.parametrize(
    "comb",
    [
        combiner("weighted_sum", preference=[0.3, 0.7]),
        combiner("tchebycheff", preference=[0.5, 0.5]),  # dynamic ideal: batch-dependent
        combiner("smooth_tchebycheff", preference=[0.2, 0.8], ideal=[1.0, 1.0]),
        combiner("gdpo", preference=[0.4, 0.6]),
    ],
    ids=lambda c: c.name,
)
def test_kept_groups_are_exactly_those_with_nonzero_advantages(comb):
    """Property, over random discrete rewards (many constant groups) and refill rounds: the
    filter keeps a group iff the advantages training computes on the whole step vary in it."""
    gen = torch.Generator().manual_seed(0)
    vals = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    for _ in range(30):
        groups = vals[torch.randint(0, 3, (24, G, 2), generator=gen)]
        const = torch.rand(24, generator=gen) < 0.5  # whole rows repeated
        groups[const] = groups[const][:, :1].expand(-1, G, -1)
        one = torch.rand(24, generator=gen) < 0.3  # one reward constant
        groups[one, :, 1] = groups[one, :1, 1]
        out = run(groups.tolist(), comb, rounds=3, batch=6)
        s = out.scored.scores
        w = out.scored.weights
        if comb.returns == "advantage":
            cols = s[:, comb.lambdas(w, s) != 0]
            adv = torch.stack([compute_advantages(c, G, "group_mean") for c in cols.T], -1)
        else:
            adv = compute_advantages(comb(s, w, G), G, "group_mean")[:, None]
        moving = (adv.abs() > 1e-9).view(-1, G, adv.shape[-1]).any(-1).any(-1)
        assert out.keep.tolist() == (moving & (moving.cumsum(0) <= 6)).tolist()  # first 6


# --------------------------------------------------------------------------- in the trainer
REWARDS = (
    "rewards=[{name: format, alias: low_digit, args: {pattern: '[0-4]', mode: search}}, "
    "{name: format, alias: always, args: {pattern: '.*'}}]"
)


def test_trainer_filters_on_the_preference_weighted_signal(tmp_path, tiny_config):
    base = (REWARDS, "warmup.steps=0", "train.steps=2")
    Trainer(tiny_config(*base), tmp_path / "w").train()
    rl = [r for r in read_metrics(tmp_path / "w") if r.get("phase") == "rl"]
    assert min(r["curriculum/filtered_fraction"] for r in rl) < 1  # low_digit varies
    # preference (0, 1): training sees only the always-1 reward, so nothing carries signal
    Trainer(tiny_config(*base, "objectives.preference=[0, 1]"), tmp_path / "p").train()
    rl = [r for r in read_metrics(tmp_path / "p") if r.get("phase") == "rl"]
    assert len(rl) == 2
    for r in rl:
        assert r["curriculum/filtered_fraction"] == 1 and r["curriculum/kept_groups"] == 0
        assert r["train/reward"] == 1.0  # the preference-weighted reward, not the sum
