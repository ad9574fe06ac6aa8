"""Each selector's sampling distribution moves as its rule says, on scripted statistics."""

from __future__ import annotations

import logging
import math
from collections import Counter

import pytest
import torch

from steerl.config import CurriculumConfig
from steerl.curriculum import build_curriculum, curriculum_metrics, open_fraction
from steerl.tasks.base import Prompt

G = 8


def pool(per_level: int = 20, levels=(1, 2, 3)) -> list[Prompt]:
    return [
        Prompt(
            id=f"L{lv}-{i}", text=f"{lv}:{i}", answer="", difficulty=float(lv), category=f"c{lv}"
        )
        for lv in levels
        for i in range(per_level)
    ]


def make(name: str, total_steps: int = 100, seed: int = 0, **sections):
    cfg = CurriculumConfig.model_validate({"name": name, **sections})
    return build_curriculum(cfg, pool(), seed, total_steps=total_steps)


def feed(cur, step: int, pass_rate: dict[int, float], adv: dict[int, float] | None = None):
    """Show the curriculum every prompt once with scripted per-level pass rates."""
    prompts = cur.prompts
    rewards = torch.tensor(
        [[1.0 if g < round(pass_rate[p.level] * G) else 0.0 for g in range(G)] for p in prompts]
    )
    a = None
    if adv is not None:
        a = torch.tensor([[adv[p.level]] * G for p in prompts])
    cur.update([p.id for p in prompts], rewards, step, advantages=a)


def shares(cur, step: int, n: int = 10, rounds: int = 30) -> dict[int, float]:
    c: Counter[int] = Counter()
    for r in range(rounds):
        c.update(p.level for p in cur.sample(n, step * 1000 + r))
    total = sum(c.values())
    return {lv: c[lv] / total for lv in (1, 2, 3)}


# --------------------------------------------------------------------------- competence
def test_competence_prefers_the_band_and_unseen_prompts_get_the_level_prior():
    cur = make("competence", competence={"outside_weight": 0.0})
    assert shares(cur, 0)[1] > 0.2  # nothing seen: prior 0.5 is in the band, all eligible
    feed(cur, 0, {1: 1.0, 2: 0.5, 3: 0.0})
    s = shares(cur, 1)
    assert s[2] == 1.0
    cur = make("competence", competence={"outside_weight": 0.05})
    feed(cur, 0, {1: 1.0, 2: 0.5, 3: 0.0})
    s = shares(cur, 1)
    assert 0.75 < s[2] < 1.0 and s[1] > 0 and s[3] > 0
    assert curriculum_metrics(cur)["curriculum/in_band"] == pytest.approx(1 / 3)


def test_competence_with_no_prompt_in_the_band_falls_back_to_uniform(caplog):
    cur = make("competence", competence={"band": [0.9, 0.95], "outside_weight": 0.0})
    feed(cur, 0, {1: 0.5, 2: 0.5, 3: 0.5})
    with caplog.at_level(logging.WARNING, logger="steerl.curriculum"):
        batch = cur.sample(12, 1)
    assert len(batch) == 12 and len({p.level for p in batch}) > 1
    m = curriculum_metrics(cur)
    assert m["curriculum/fallback"] == 1.0 and m["curriculum/fallbacks"] == 1.0
    assert "no prompt eligible" in caplog.text
    cur.sample(12, 1)  # the same step again: counted once
    cur.sample(12, 2)
    assert curriculum_metrics(cur)["curriculum/fallbacks"] == 2.0


# --------------------------------------------------------------------------- adarft
def test_adarft_target_follows_the_reward_and_nearest_prompts_are_sampled():
    cur = make("adarft")  # eta 0.5, alpha 2, beta 0.5, T0 = 0
    assert {p.level for p in cur.sample(20, 0)} == {1}  # T = 0: the easiest level
    feed(cur, 0, {1: 1.0, 2: 1.0, 3: 1.0})  # batch mean reward 1
    want = 0.5 * math.tanh(2 * (1.0 - 0.5))
    assert cur.target == pytest.approx(want)
    assert curriculum_metrics(cur)["curriculum/target_difficulty"] == pytest.approx(want)
    assert {p.level for p in cur.sample(20, 1)} == {2}  # normalised 0.5 is nearest 0.38
    for step in range(2, 6):
        feed(cur, step, {1: 0.0, 2: 0.0, 3: 0.0})
    assert cur.target == 0.0  # clipped at min
    cur = make("adarft", adarft={"initial": 0.9, "max": 0.95})
    feed(cur, 0, {1: 1.0, 2: 1.0, 3: 1.0})
    assert cur.target == 0.95


# --------------------------------------------------------------------------- learnability
def test_learnability_weights_by_p_times_one_minus_p():
    cur = make("learnability")
    feed(cur, 0, {1: 1.0, 2: 0.5, 3: 0.0})
    s = shares(cur, 1)
    assert s[2] > 0.75
    # with the floor raised to the maximum 0.25, every prompt weighs the same
    cur = make("learnability", learnability={"floor": 0.25})
    feed(cur, 0, {1: 1.0, 2: 0.5, 3: 0.0})
    s = shares(cur, 1)
    assert all(0.2 < v < 0.47 for v in s.values())


# --------------------------------------------------------------------------- bandit
@pytest.mark.parametrize("algorithm", ["softmax", "exp3"])
def test_bandit_moves_toward_the_arm_that_is_learning(algorithm):
    cur = make("bandit", bandit={"algorithm": algorithm})
    before = shares(cur, 0)
    assert all(abs(v - 1 / 3) < 0.12 for v in before.values())
    for step in range(8):  # level 2 climbs, levels 1 and 3 stay put
        cur.sample(30, step)
        feed(cur, step, {1: 1.0, 2: min(1.0, 0.1 * step), 3: 0.0})
    s = shares(cur, 100)
    m = curriculum_metrics(cur)
    assert s[2] > 0.5 and s[2] > 2 * max(s[1], s[3])
    assert m["curriculum/arm_2/prob"] > m["curriculum/arm_1/prob"]


def test_bandit_on_categories_driven_by_advantage():
    cur = make("bandit", bandit={"arms": "category", "signal": "advantage"})
    for step in range(5):
        cur.sample(30, step)
        feed(cur, step, {1: 0.5, 2: 0.5, 3: 0.5}, adv={1: 0.0, 2: 0.1, 3: 1.0})
    s = shares(cur, 100)
    assert s[3] > 0.6
    assert "curriculum/arm_c3/prob" in curriculum_metrics(cur)


# --------------------------------------------------------------------------- prioritized
def test_prioritized_replays_high_advantage_prompts_and_new_ones():
    cur = make("prioritized", prioritized={"replay_prob": 0.5, "staleness": 0.0})
    first = cur.sample(30, 0)
    assert curriculum_metrics(cur)["curriculum/replay_share"] == 0.0  # nothing seen yet
    ids = [p.id for p in first]
    rewards = torch.zeros(30, G)
    adv = torch.tensor([[1.0 if p.level == 3 else 0.01] * G for p in first])
    cur.update(ids, rewards, 0, advantages=adv)
    seen_l3 = {p.id for p in first if p.level == 3}
    seen = set(ids)
    counts = Counter()
    for r in range(20):
        batch = cur.sample(10, 1 + r)
        counts.update(
            "top" if p.id in seen_l3 else "seen" if p.id in seen else "new" for p in batch
        )
    # half replayed (the top-ranked ones: 10 prompts against 20 others), half new
    assert 0.35 < counts["new"] / 200 < 0.65
    assert counts["top"] / 10 > 3 * counts["seen"] / 20


def scripted_prioritized(**prioritized):
    """Every prompt seen once at step 0, mean |A| distinct: prompt j has rank ``rank[j]``."""
    cur = make("prioritized", prioritized={"replay_prob": 1.0, **prioritized})
    n = len(cur.prompts)
    score = torch.randperm(n, generator=torch.Generator().manual_seed(0)).double() + 1
    ids = [p.id for p in cur.prompts]
    cur.update(ids, torch.zeros(n, G), 0, advantages=score[:, None].expand(n, G))
    rank = (-score).argsort().argsort() + 1  # 1 = highest |A|
    return cur, rank


@pytest.mark.parametrize("temperature", [0.1, 0.5, 1.0, 2.0])
def test_prioritized_score_term_is_rank_to_the_one_over_temperature(temperature):
    # PLR (Jiang et al. 2021): P_S(j) = h_j^(1/T) / sum_i h_i^(1/T), h_j = 1 / rank_j
    cur, rank = scripted_prioritized(staleness=0.0, temperature=temperature)
    w = torch.as_tensor(cur.replay_weights(1))
    expected = (1.0 / rank.double()) ** (1.0 / temperature)
    torch.testing.assert_close(w, expected / expected.sum())


def test_prioritized_single_draws_follow_the_rule_at_the_defaults():
    cur, rank = scripted_prioritized()  # temperature 1, staleness 0.1, all equally stale
    n = len(rank)
    h = 1.0 / torch.arange(1, n + 1).double()
    p = 0.9 * h / h.sum() + 0.1 / n  # by rank
    draws = Counter(int(rank[cur.prompts.index(cur.sample(1, 1 + t)[0])]) for t in range(3000))
    for r in (1, 2, 3):
        assert abs(draws[r] / 3000 - float(p[r - 1])) < 0.03
    tail = sum(v for r, v in draws.items() if r > 10) / 3000
    assert abs(tail - float(p[10:].sum())) < 0.04


def test_prioritized_batches_prefer_high_ranks_beyond_the_first():
    """Within a batch drawn without repeats the score still orders the prompts: at the old
    default temperature 0.1 rank 1 took ~all of the score term and the rest of a batch
    followed staleness (here uniform), so rank 2 was drawn barely more than the median."""
    counts = {}
    for temperature in (0.1, 1.0):
        cur, rank = scripted_prioritized(temperature=temperature)
        hits = Counter()
        for t in range(300):
            hits.update(int(rank[cur.prompts.index(q)]) for q in cur.sample(8, 1 + t))
        counts[temperature] = hits
    default = CurriculumConfig().prioritized.temperature
    assert default == 1.0
    hits, mid = counts[default], len(rank) // 2
    assert hits[1] >= hits[2] >= 2 * hits[mid]  # rank 2 far above the median rank
    top8 = sum(hits[r] for r in range(1, 9)) / 300
    assert top8 > 3.0  # of 8 per batch (uniform: 8 * 8 / 60, about 1.1)
    old = counts[0.1]
    assert old[1] == 300 and old[2] < 2 * old[mid]  # the behaviour the default change fixes


def test_prioritized_staleness_brings_back_old_prompts():
    cur = make("prioritized", prioritized={"replay_prob": 1.0, "staleness": 1.0})
    old = cur.sample(5, 0)
    cur.update([p.id for p in old], torch.zeros(5, G), 0, advantages=torch.zeros(5, G))
    newer = cur.sample(5, 9)
    cur.update([p.id for p in newer], torch.zeros(5, G), 9, advantages=torch.zeros(5, G))
    batch = cur.sample(5, 10)  # staleness 10 vs 1: mostly the old ones
    assert sum(p.id in {q.id for q in old} for p in batch) >= 4


# --------------------------------------------------------------------------- pacing
def test_pacing_functions():
    s, T = 0.2, 100
    assert open_fraction("linear", 50, s, T) == pytest.approx(0.6)
    assert open_fraction("root", 50, s, T) == pytest.approx(math.sqrt(0.04 + 0.96 * 0.5))
    assert open_fraction("step", 49, s, T, stages=2) == pytest.approx(0.2)
    assert open_fraction("step", 50, s, T, stages=2) == pytest.approx(0.6)
    assert open_fraction("exponential", 50, s, T) == pytest.approx(0.2**0.5)
    for fn in ("linear", "root", "step", "exponential"):
        assert open_fraction(fn, 0, s, T) == pytest.approx(s)
        assert open_fraction(fn, T, s, T) == 1.0 and open_fraction(fn, 5 * T, s, T) == 1.0
        xs = [open_fraction(fn, t, s, T) for t in range(0, T + 1, 5)]
        assert xs == sorted(xs)


def test_pacing_opens_the_pool_from_the_easiest():
    cur = make("pacing", pacing={"start_fraction": 1 / 3, "pace_steps": 10})
    assert {p.level for p in cur.sample(20, 0)} == {1}
    assert curriculum_metrics(cur)["curriculum/open_fraction"] == pytest.approx(1 / 3)
    mid = {p.level for p in cur.sample(40, 5)}  # 2/3 open
    assert mid == {1, 2}
    assert {p.level for p in cur.sample(60, 10)} == {1, 2, 3}
    # pace_steps defaults to half of train.steps
    assert make("pacing", total_steps=40).pace_steps == 20


def test_pacing_newest_weighting_favours_the_hardest_open():
    cur = make("pacing", pacing={"start_fraction": 1.0, "sampling": "newest", "newest_weight": 9})
    s = shares(cur, 0)
    assert s[3] > s[2] > s[1]
