"""Reward-level combination: weighted sum, GDPO, (smooth) Tchebycheff."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from steerl.config import ObjectivesConfig
from steerl.objectives import (
    build_combiner,
    gdpo,
    smooth_tchebycheff,
    tchebycheff,
    weighted_sum,
)
from steerl.objectives.advantages import compute_advantages

NAN = float("nan")
PROPS = settings(max_examples=40, deadline=None, derandomize=True)


def rewards(n=8, k=3):
    return arrays(
        "float64", (n, k), elements=st.floats(-5, 5, allow_nan=False, allow_infinity=False)
    )


prefs = arrays("float64", 3, elements=st.floats(0.05, 3.0))


# --------------------------------------------------------------------------- tchebycheff
def test_tchebycheff_by_hand():
    R = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]], dtype=torch.float64)
    out = tchebycheff(R, [1.0, 1.0], ideal=[1.0, 1.0])
    torch.testing.assert_close(out, torch.tensor([-1.0, -0.5, -1.0], dtype=torch.float64))
    out = tchebycheff(R, [3.0, 1.0], ideal=[1.0, 1.0])  # objective 1 matters 3x more
    torch.testing.assert_close(out, torch.tensor([-1.0, -1.5, -3.0], dtype=torch.float64))


def test_tchebycheff_default_ideal_is_the_batch_max_and_nan_is_unscored():
    R = torch.tensor([[1.0, NAN], [0.5, 0.5], [0.0, 1.0]])
    out = tchebycheff(R, [1.0, 1.0])  # ideal = (1, 1) from the scored values
    assert math.isnan(out[0])
    torch.testing.assert_close(out[1:], torch.tensor([-0.5, -1.0]))
    # a zero preference drops the column, and its NaN
    torch.testing.assert_close(tchebycheff(R, [1.0, 0.0]), torch.tensor([0.0, -0.5, -1.0]))


@PROPS
@given(R=rewards(), lam=prefs, i=st.integers(0, 7), j=st.integers(0, 2), up=st.floats(0, 3))
def test_tchebycheff_never_punishes_an_improvement(R, lam, i, j, up):
    """Raising one reward of one sample (toward the ideal) never lowers its scalar reward."""
    ideal = [6.0, 6.0, 6.0]
    R = torch.tensor(R)
    better = R.clone()
    better[i, j] = min(better[i, j] + up, 6.0)
    for fn in (tchebycheff, lambda r, p, z: smooth_tchebycheff(r, p, z, mu=0.3)):
        assert fn(better, lam, ideal)[i] >= fn(R, lam, ideal)[i] - 1e-12


@PROPS
@given(R=rewards(), lam=prefs, mu=st.floats(1e-3, 2.0))
def test_smooth_tchebycheff_brackets_tchebycheff(R, lam, mu):
    R = torch.tensor(R)
    tch = tchebycheff(R, lam, [6.0] * 3)
    stch = smooth_tchebycheff(R, lam, [6.0] * 3, mu=mu)
    assert torch.all(stch <= tch + 1e-9)
    assert torch.all(stch >= tch - mu * math.log(3) - 1e-9)


def test_smooth_tchebycheff_tends_to_tchebycheff():
    R = torch.rand(16, 3, dtype=torch.float64)
    tch = tchebycheff(R, [1.0, 2.0, 0.5], [1.0] * 3)
    stch = smooth_tchebycheff(R, [1.0, 2.0, 0.5], [1.0] * 3, mu=1e-4)
    torch.testing.assert_close(stch, tch, atol=2e-4, rtol=0)
    with pytest.raises(ValueError, match="mu"):
        smooth_tchebycheff(R, [1.0, 1.0, 1.0], mu=0.0)
    with pytest.raises(ValueError, match=">= 0"):
        tchebycheff(R, [1.0, -1.0, 1.0])
    with pytest.raises(ValueError, match="one weight per column"):
        tchebycheff(R, [1.0, 1.0])


# --------------------------------------------------------------------------- gdpo
def test_gdpo_normalises_each_reward_in_its_group():
    # group 0: reward 0 varies on a 0/1 scale, reward 1 on a 0/100 scale
    R = torch.tensor([[1.0, 0.0], [0.0, 100.0], [1.0, 100.0], [0.0, 0.0]] * 2, dtype=torch.float64)
    adv = gdpo(R, [1.0, 1.0], group_size=4, batch_norm=False)
    per = [compute_advantages(R[:, c], 4) for c in range(2)]
    torch.testing.assert_close(adv, per[0] + per[1])
    # the weighted sum lets the 0/100 reward decide; gdpo gives both the same say
    assert float(adv[0]) == pytest.approx(float(adv[1]), abs=1e-3)  # each wins one reward
    ws = compute_advantages(weighted_sum(R, torch.tensor([1.0, 1.0], dtype=torch.float64)), 4)
    assert ws[1] > ws[0]


@PROPS
@given(R=rewards(n=8, k=3), c=st.floats(0.01, 100.0), col=st.integers(0, 2))
def test_gdpo_is_invariant_to_rescaling_a_reward(R, c, col):
    R = torch.tensor(R)
    if (R.view(2, 4, 3).std(1) < 1e-2).any():
        return  # eps matters for near-constant groups
    scaled = R.clone()
    scaled[:, col] *= c
    torch.testing.assert_close(
        gdpo(scaled, [1.0, 0.5, 2.0], 4, eps=0.0), gdpo(R, [1.0, 0.5, 2.0], 4, eps=0.0)
    )


def test_gdpo_batch_norm_and_unscored():
    R = torch.tensor([[1.0, 0.0], [0.0, 1.0], [NAN, 1.0], [1.0, 1.0]], dtype=torch.float64)
    adv = gdpo(R, [1.0, 1.0], group_size=4)
    assert adv[2] == 0.0  # unscored sample: advantage 0
    scored = adv[[0, 1, 3]]
    assert abs(float(scored.mean())) < 1e-9
    assert float(scored.std()) == pytest.approx(1.0, rel=1e-3)


# --------------------------------------------------------------------------- combiner
def test_combiner_from_config():
    R = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    w = torch.tensor([2.0, 1.0])
    c = build_combiner(ObjectivesConfig())
    assert c.returns == "reward"
    torch.testing.assert_close(c(R, w, 2), torch.tensor([2.0, 1.0]))
    pref = build_combiner(ObjectivesConfig(preference=[0.0, 1.0]))
    torch.testing.assert_close(pref(R, w, 2), torch.tensor([0.0, 1.0]))  # replaces weights
    g = build_combiner(ObjectivesConfig(combine="gdpo"), estimator="group_mean")
    assert g.returns == "advantage" and g.estimator == "group_mean"
    t = build_combiner(ObjectivesConfig(combine="smooth_tchebycheff", ideal=[1.0, 1.0], mu=0.01))
    out = t(R, w, 2)
    assert out.shape == (2,) and t.returns == "reward"
    torch.testing.assert_close(out, smooth_tchebycheff(R, w, [1.0, 1.0], 0.01))
