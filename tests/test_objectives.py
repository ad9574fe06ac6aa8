from __future__ import annotations

import math

import pytest
import torch

from steerl.config import CurriculumConfig, ObjectivesConfig
from steerl.curriculum import UniformCurriculum, build_curriculum, informative_groups
from steerl.objectives import StaticBalancer, build_balancer, group_advantages, group_std
from steerl.objectives import weighted_sum as wsum
from steerl.tasks import Prompt

NAN = float("nan")


def _t(*rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


# --------------------------------------------------------------------------- weighted sum
def test_weighted_sum():
    scores = _t([1.0, 0.0, 0.5], [0.0, 1.0, 1.0])
    out = wsum(scores, torch.tensor([2.0, 1.0, -1.0]))
    torch.testing.assert_close(out, torch.tensor([1.5, 0.0]))


def test_weighted_sum_propagates_nan_of_weighted_columns_only():
    scores = _t([1.0, NAN, 1.0], [1.0, 1.0, NAN], [NAN, NAN, NAN], [0.5, 0.5, 0.5])
    out = wsum(scores, torch.tensor([1.0, 2.0, 0.0]))  # column 2 has weight 0
    assert math.isnan(out[0]) and math.isnan(out[2])
    assert out[1].item() == pytest.approx(3.0)  # NaN in the zero-weight column is ignored
    assert out[3].item() == pytest.approx(1.5)


# --------------------------------------------------------------------------- advantages
def test_group_advantages_zero_mean_unit_std():
    g = torch.Generator().manual_seed(0)
    rewards = torch.rand(5 * 8, generator=g, dtype=torch.float64)
    adv = group_advantages(rewards, 8, eps=0.0).view(5, 8)
    torch.testing.assert_close(adv.mean(-1), torch.zeros(5, dtype=torch.float64))
    torch.testing.assert_close(adv.std(-1), torch.ones(5, dtype=torch.float64))
    # default eps: std slightly below 1, same ordering as the rewards
    adv_eps = group_advantages(rewards, 8).view(5, 8)
    assert ((adv_eps.std(-1) < 1) & (adv_eps.std(-1) > 0.99)).all()
    assert torch.equal(adv_eps.argsort(-1), rewards.view(5, 8).argsort(-1))


def test_group_advantages_by_hand():
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64), 4, eps=0.0)
    # mean 0.25, sample std sqrt(0.25) = 0.5
    torch.testing.assert_close(adv, torch.tensor([1.5, -0.5, -0.5, -0.5], dtype=torch.float64))
    mean_only = group_advantages(torch.tensor([1.0, 0.0, 0.0, 3.0]), 2, scale=False)
    torch.testing.assert_close(mean_only, torch.tensor([0.5, -0.5, -1.5, 1.5]))


def test_unscored_samples_get_zero_and_are_excluded():
    r = torch.tensor([1.0, NAN, 0.0, 2.0, NAN, NAN, 5.0, 5.0], dtype=torch.float64)
    adv = group_advantages(r, 4)
    assert not adv.isnan().any()
    assert adv[1] == 0 and adv[4] == 0 and adv[5] == 0
    # group 0 = (1, 0, 2): mean 1, sample std 1
    want = torch.tensor([0.0, -1.0, 1.0], dtype=torch.float64) / (1 + 1e-4)
    torch.testing.assert_close(adv[[0, 2, 3]], want)
    assert (adv[4:] == 0).all()  # group 1: two equal scored samples -> no signal


def test_constant_and_unscored_groups_give_zeros():
    r = torch.tensor([0.7] * 4 + [NAN] * 4 + [1.0, NAN, NAN, NAN])
    for scale in (True, False):
        adv = group_advantages(r, 4, scale=scale)
        assert torch.equal(adv, torch.zeros(12))


def test_group_std_is_population_std_over_scored():
    r = torch.tensor([0.0, 2.0, NAN, 1.0, 3.0, 3.0])
    torch.testing.assert_close(group_std(r, 3), torch.tensor([1.0, math.sqrt(8 / 9)]))


# --------------------------------------------------------------------------- informative groups
def test_informative_groups_with_tolerance():
    r = torch.tensor(
        [0.0, 1.0, 0.0, 1.0]  # varied
        + [1.0] * 4  # constant
        + [0.0, 2e-9, 0.0, 2e-9]  # std 1e-9: float noise, counts as zero variance
        + [0.3, NAN, 0.7, NAN]  # varied among scored
        + [0.3, NAN, NAN, NAN]  # a single scored sample
    )
    keep = informative_groups(r, 4, tol=1e-6)
    assert keep.tolist() == [True, False, False, True, False]
    assert informative_groups(r, 4, tol=0.0).tolist() == [True, False, True, True, False]


# --------------------------------------------------------------------------- balancer
def test_static_balancer_backward_and_state():
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    bal = build_balancer(ObjectivesConfig())
    assert isinstance(bal, StaticBalancer)
    used = bal.combine({"a": (w**2).sum(), "b": w.sum()}, [w])
    assert used == {"a": 1.0, "b": 1.0}
    torch.testing.assert_close(w.grad, torch.tensor([3.0, 5.0]))
    w.grad = None
    bal2 = StaticBalancer({"b": 0.5})
    assert bal2.combine({"a": (w**2).sum(), "b": w.sum()}, [w]) == {"a": 1.0, "b": 0.5}
    torch.testing.assert_close(w.grad, torch.tensor([2.5, 4.5]))
    bal.load_state_dict(bal2.state_dict())
    assert bal.weights == {"b": 0.5}


# --------------------------------------------------------------------------- curriculum
def _prompts(n: int) -> list[Prompt]:
    return [Prompt(id=str(i), text=f"p{i}", answer="", difficulty=1 + i % 2) for i in range(n)]


def test_uniform_curriculum_epochs_and_resume():
    cur = UniformCurriculum(_prompts(5), seed=0)
    first = cur.sample(5, 0)
    assert sorted(p.id for p in first) == ["0", "1", "2", "3", "4"]  # one epoch
    cur.sample(3, 1)
    state = cur.state_dict()
    want = [p.id for p in cur.sample(7, 2)]
    other = UniformCurriculum(_prompts(5), seed=99)
    other.load_state_dict(state)
    assert [p.id for p in other.sample(7, 2)] == want


def test_build_curriculum_levels():
    cur = build_curriculum(CurriculumConfig(levels=[2]), _prompts(6), seed=0)
    assert {p.level for p in cur.sample(10, 0)} == {2}
    from steerl.config import ConfigError

    with pytest.raises(ConfigError, match="curriculum.levels"):
        build_curriculum(CurriculumConfig(levels=[7]), _prompts(6), seed=0)
