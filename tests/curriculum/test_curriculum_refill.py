"""DAPO dynamic sampling with refill: never a smaller batch than asked unless the cap."""

from __future__ import annotations

import random
import warnings

import pytest
import torch

from steerl.config import CurriculumConfig
from steerl.curriculum import CurriculumWarning, sample_groups
from steerl.curriculum.filters import cat_rollouts, cat_scores
from steerl.rewards import RewardResult
from steerl.rollout import Rollout
from steerl.tasks.base import Prompt

G = 4


class Script:
    """Fake curriculum / rollout / rewards: prompt i is informative iff ``good(i)``."""

    def __init__(self, good, seed: int = 0):
        self.good = good
        self.next = 0
        self.calls: list[int] = []
        self.rng = random.Random(seed)

    def sample(self, n: int) -> list[Prompt]:
        self.calls.append(n)
        out = [
            Prompt(id=str(self.next + i), text="x" * (1 + (self.next + i) % 3), answer="")
            for i in range(n)
        ]
        self.next += n
        return out

    def generate(self, prompts: list[Prompt]) -> tuple[Rollout, list[str]]:
        n, t = len(prompts) * G, 1 + len(prompts) % 3
        p = len(prompts[0].text)
        ro = Rollout(
            torch.ones(n, p, dtype=torch.long),
            torch.ones(n, p, dtype=torch.long),
            torch.full((n, t), 5),
            torch.ones(n, t, dtype=torch.long),
            torch.zeros(n, t),
            torch.zeros(n, dtype=torch.bool),
        )
        return ro, ["c"] * n

    def score(self, prompts: list[Prompt], completions: list[str]):
        r = []
        for p in prompts:
            if self.good(int(p.id)):
                r += [1.0, 0.0, 1.0, 0.0]
            else:
                r += [float(self.rng.random() < 0.5)] * G
        reward = torch.tensor(r)
        return reward, RewardResult(
            reward[:, None].clone(), ["r"], torch.ones(1), {"reward/r/mean": 0.5}
        )


def run(script: Script, batch: int, rounds: int, drop: bool = True):
    cfg = CurriculumConfig(max_refill_rounds=rounds, drop_zero_variance=drop)
    return sample_groups(script.sample, script.generate, script.score, batch, G, cfg)


def test_refill_fills_the_batch():
    s = Script(lambda i: i % 4 == 0)  # a quarter of the prompts informative
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = run(s, 8, rounds=10)
    assert int(out.keep.sum()) == 8 and not out.cap_hit
    assert s.calls[0] == 8 and out.refill_rounds == len(s.calls) - 1 >= 2
    assert s.calls[1] == 8  # ceil(6 missing / keep rate 0.25) capped at the batch size
    kept = out.kept_prompts()
    assert all(int(p.id) % 4 == 0 for p in kept) and len(kept) == 8
    assert out.batch.completion_ids.shape[0] == len(out.prompts) * G == out.reward.shape[0]
    assert out.kept_rows().tolist() == [
        g * G + j for g, k in enumerate(out.keep) if k for j in range(G)
    ]
    m = out.metrics
    assert m["curriculum/kept_groups"] == 8 and m["curriculum/short_batch"] == 0
    assert m["curriculum/refill_rounds"] == out.refill_rounds
    assert m["curriculum/filtered_fraction"] == pytest.approx(1 - 8 / len(out.prompts), abs=0.2)
    assert out.pass_rewards().shape == (len(out.prompts), G)


def test_refill_asks_for_fewer_prompts_when_most_are_informative():
    s = Script(lambda i: i % 8 != 0)
    out = run(s, 8, rounds=3)
    assert s.calls == [8, 2] and int(out.keep.sum()) == 8  # 7 kept: ceil(1 / (7/8)) = 2


def test_cap_hit_says_so():
    s = Script(lambda i: i in (0, 3))
    with pytest.warns(CurriculumWarning, match="max_refill_rounds"):
        out = run(s, 8, rounds=2)
    assert out.cap_hit and len(s.calls) == 3 and int(out.keep.sum()) == 2
    assert (
        out.metrics["curriculum/short_batch"] == 1 and out.metrics["curriculum/missing_groups"] == 6
    )


def test_without_refill_filtering_only_and_no_warning():
    s = Script(lambda i: i < 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = run(s, 8, rounds=0)
    assert (
        s.calls == [8] and int(out.keep.sum()) == 3 and out.metrics["curriculum/short_batch"] == 1
    )
    s = Script(lambda i: False)
    out = run(s, 8, rounds=0, drop=False)
    assert bool(out.keep.all()) and out.metrics["curriculum/filtered_fraction"] == 0


@pytest.mark.parametrize("seed", range(20))
def test_never_smaller_than_requested_unless_the_cap(seed):
    rng = random.Random(seed)
    p = rng.choice([0.0, 0.05, 0.3, 0.7, 1.0])
    informative = {i for i in range(2000) if rng.random() < p}
    batch, rounds = rng.randint(1, 12), rng.randint(0, 6)
    s = Script(lambda i: i in informative, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = run(s, batch, rounds)
    kept = int(out.keep.sum())
    assert kept <= batch
    if kept < batch:
        assert out.cap_hit and out.refill_rounds == rounds
        assert out.metrics["curriculum/short_batch"] == 1
    else:
        assert not out.cap_hit and out.metrics["curriculum/missing_groups"] == 0


def test_cat_rollouts_pads_prompts_left_and_completions_right():
    a = Rollout(
        torch.tensor([[7, 8]]),
        torch.tensor([[1, 1]]),
        torch.tensor([[1, 2, 3]]),
        torch.tensor([[1, 1, 1]]),
        torch.tensor([[0.1, 0.2, 0.3]]),
        torch.tensor([True]),
    )
    b = Rollout(
        torch.tensor([[9, 9, 9]]),
        torch.tensor([[1, 1, 1]]),
        torch.tensor([[4]]),
        torch.tensor([[1]]),
        torch.tensor([[0.4]]),
        torch.tensor([False]),
    )
    c = cat_rollouts([a, b], pad_token_id=0)
    assert c.prompt_ids.tolist() == [[0, 7, 8], [9, 9, 9]]
    assert c.prompt_mask.tolist() == [[0, 1, 1], [1, 1, 1]]
    assert c.completion_ids.tolist() == [[1, 2, 3], [4, 0, 0]]
    assert c.completion_mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    torch.testing.assert_close(c.logprobs, torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.0, 0.0]]))
    assert c.truncated.tolist() == [True, False]


def test_cat_scores_recomputes_reward_metrics():
    a = RewardResult(
        torch.tensor([[1.0], [0.0]]),
        ["r"],
        torch.ones(1),
        {"reward/r/mean": 0.5, "reward/r/extra": 1.0},
    )
    b = RewardResult(
        torch.tensor([[1.0], [float("nan")]]),
        ["r"],
        torch.ones(1),
        {"reward/r/mean": 1.0, "reward/r/extra": 4.0},
    )
    c = cat_scores([a, b])
    assert c.scores.shape == (4, 1)
    assert c.metrics["reward/r/mean"] == pytest.approx(2 / 3)
    assert c.metrics["reward/r/unscored"] == 0.25 and c.metrics["reward/r/extra"] == 2.5
