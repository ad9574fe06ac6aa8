"""Levels: whole-number difficulties as they are, continuous ones in quantile bins."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from steerl.config import ConfigError, CurriculumConfig, load_config
from steerl.curriculum import build_curriculum, curriculum_metrics
from steerl.curriculum.difficulty import prompt_levels, quantile_levels
from steerl.tasks.base import Prompt


def pool(difficulties, given=True) -> list[Prompt]:
    return [
        Prompt(id=f"p{i}", text=f"t{i}", answer="", difficulty=float(d), has_difficulty=given)
        for i, d in enumerate(difficulties)
    ]


def test_whole_number_difficulties_are_the_levels():
    assert prompt_levels(pool([1, 2, 3, 3, 7])).tolist() == [1, 2, 3, 3, 7]


def test_pass_rates_fall_into_quantile_levels_easiest_first():
    rng = np.random.default_rng(0)
    d = rng.permutation(np.linspace(0.0, 0.99, 100))
    lv = prompt_levels(pool(d))  # default curriculum.levels_from_difficulty = 4
    assert CurriculumConfig().levels_from_difficulty == 4
    assert sorted(np.bincount(lv).tolist()) == [25, 25, 25, 25]
    order = np.argsort(d)
    assert np.all(np.diff(lv[order]) >= 0)  # harder never in a lower level
    assert prompt_levels(pool(d), bins=10).max() == 9
    assert set(prompt_levels(pool(d), bins=0).tolist()) == {0}  # 0: the integer part


def test_ties_share_a_level_and_levels_have_no_gaps():
    d = [0.0] * 12 + [0.125, 0.25, 0.5, 0.75, 0.875, 1.0, 0.375, 0.625]  # 60% always solved
    lv = prompt_levels(pool(d))
    assert len(set(lv[:12].tolist())) == 1 and lv[0] == 0
    assert sorted(set(lv.tolist())) == list(range(lv.max() + 1))
    assert quantile_levels(np.full(5, 0.3), 4).tolist() == [0] * 5
    with pytest.raises(ValueError, match="levels_from_difficulty=0"):
        quantile_levels(np.zeros(3), 0)


def test_levels_from_a_difficulty_file_when_the_data_has_none(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text("".join(json.dumps({"id": f"p{i}", "difficulty": i / 8}) + "\n" for i in range(8)))
    prompts = pool([0.0] * 8, given=False)  # data rows without a difficulty
    cfg = CurriculumConfig(name="bandit", difficulty_file=str(f), levels_from_difficulty=2)
    cur = build_curriculum(cfg, prompts, 0)
    assert cur.stats.level.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert cur.arms == ["0", "1"]
    # the data's own whole-number levels win over the file (the synthetic task + a profile)
    cur = build_curriculum(cfg, pool([1, 1, 2, 2, 3, 3, 3, 3]), 0)
    assert cur.arms == ["1", "2", "3"]


def test_per_level_metrics_and_bandit_arms_on_continuous_data():
    d = np.linspace(0.0, 0.95, 40)
    cfg = CurriculumConfig.model_validate({"name": "bandit"})
    cur = build_curriculum(cfg, pool(d), 0)
    assert cur.arms == ["0", "1", "2", "3"]
    batch = cur.sample(16, 0)
    cur.update([p.id for p in batch], torch.ones(16, 4), 0)
    m = curriculum_metrics(cur)
    shares = [m[f"curriculum/level_{k}/share"] for k in range(4)]
    assert sum(shares) == pytest.approx(1.0)
    assert any(f"curriculum/level_{k}/pass_rate" in m for k in range(4))


def test_levels_from_difficulty_must_not_be_negative():
    with pytest.raises(ConfigError) as e:
        load_config("default", ["curriculum.levels_from_difficulty=-1"])
    assert "curriculum.levels_from_difficulty" in str(e.value) and "-1" in str(e.value)
