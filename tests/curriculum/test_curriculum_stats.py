"""The per-prompt statistics store: EMA, Beta posterior, counts, compact state."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from steerl.config import CurriculumStatsConfig
from steerl.curriculum import PromptStats
from steerl.tasks.base import Prompt

NAN = math.nan


def prompts() -> list[Prompt]:
    return [Prompt(id=f"p{i}", text=str(i), answer="", difficulty=1 + i // 2) for i in range(4)]


def test_update_ema_beta_counts_and_advantages():
    st = PromptStats(prompts(), CurriculumStatsConfig(ema=0.5, prior=(1.0, 1.0)))
    st.update(
        ["p0", "p2"],
        torch.tensor([[1.0, 0.0, 1.0, 1.0], [0.0, 0.0, NAN, 0.0]]),
        3,
        advantages=torch.tensor([[0.5, -1.5, 0.5, 0.5], [0.0, 0.0, 0.0, 0.0]]),
    )
    assert st.ema[0] == 0.75 and st.ema[2] == 0.0 and math.isnan(st.ema[1])
    assert (st.alpha[0], st.beta[0]) == (4.0, 2.0)
    assert (st.alpha[2], st.beta[2]) == (1.0, 4.0)  # the unscored sample is left out
    assert st.count.tolist() == [4, 0, 3, 0] and st.last_seen.tolist() == [3, -1, 3, -1]
    assert st.abs_adv[0] == pytest.approx((0.5 + 1.5 + 0.5 + 0.5) / 4)
    assert st.level_ema == {1: 0.75, 2: 0.0} and st.batch_mean == pytest.approx(3 / 7)
    st.update(["p0"], torch.tensor([[0.0, 0.0, 0.0, 0.0]]), 4, advantages=torch.zeros(1, 4))
    assert st.ema[0] == pytest.approx(0.375) and (st.alpha[0], st.beta[0]) == (4.0, 6.0)
    assert st.abs_adv[0] == 0.0  # the latest visit's mean |A| (PLR's score)
    assert st.level_ema[1] == pytest.approx(0.375)
    # rewards outside [0, 1] count as pass indicators clipped into it
    st.update(["p1"], torch.tensor([[2.0, -1.0, 1.0, 0.0]]), 5)
    assert st.ema[1] == 0.5


def test_estimates_use_the_level_prior_for_unseen_prompts():
    st = PromptStats(prompts(), CurriculumStatsConfig(prior=(1.0, 1.0), prior_from="level"))
    np.testing.assert_allclose(st.posterior_mean(), 0.5)  # nothing known: alpha0/(alpha0+beta0)
    st.update(["p0"], torch.ones(1, 8), 0)
    post = st.posterior_mean()
    assert post[0] == pytest.approx((2 * 1.0 + 8) / (2 + 8))  # prior centred on level 1's 1.0
    assert post[1] == 1.0  # unseen, level 1: the level's pass rate
    assert post[2] == 0.5 and st.ema_estimate()[2] == 0.5  # level 2 unknown
    fixed = PromptStats(prompts(), CurriculumStatsConfig(prior=(1.0, 1.0), prior_from="fixed"))
    fixed.update(["p0"], torch.ones(1, 8), 0)
    assert fixed.posterior_mean()[1] == 0.5 and fixed.posterior_mean()[0] == 0.9


def test_discount_forgets_toward_the_prior():
    st = PromptStats(prompts(), CurriculumStatsConfig(prior=(1.0, 1.0), discount=0.5))
    st.update(["p0"], torch.ones(1, 4), 0)
    st.update(["p0"], torch.zeros(1, 4), 1)
    assert (st.alpha[0], st.beta[0]) == (1.0 + 0.5 * 4, 1.0 + 4.0)


def test_state_dict_is_compact_json_and_round_trips():
    st = PromptStats(prompts())
    st.update(["p3", "p1"], torch.tensor([[1.0, 0.0], [1.0, 1.0]]), 7)
    state = json.loads(json.dumps(st.state_dict()))
    assert sorted(state["prompts"]) == ["p1", "p3"]  # only seen prompts
    other = PromptStats(prompts())
    other.load_state_dict(state)
    for name in ("ema", "alpha", "beta", "count", "last_seen", "abs_adv"):
        np.testing.assert_array_equal(getattr(other, name), getattr(st, name))
    assert other.level_ema == st.level_ema and other.batch_mean == st.batch_mean
    other.load_state_dict({"prompts": {"gone": [1, 2, 3, 4, 5, None]}})  # unknown ids ignored
    assert not other.seen.any()
