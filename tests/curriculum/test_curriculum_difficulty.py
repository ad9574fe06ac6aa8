"""Difficulty sources, the difficulty file, and the configuration's bad-input checks."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from steerl.config import ConfigError, CurriculumConfig, load_config
from steerl.curriculum import build_curriculum, read_difficulty_file, resolve_difficulty
from steerl.curriculum.difficulty import append_rows, done_ids, normalise
from steerl.tasks.base import Prompt


def prompts(n: int = 6) -> list[Prompt]:
    return [Prompt(id=f"p{i}", text=f"t{i}", answer="", difficulty=float(i % 3)) for i in range(n)]


def hardness(p: Prompt) -> float:  # used as curriculum.difficulty_fn
    return 10.0 - int(p.id[1:])


def bad_hardness(p: Prompt):
    return "hard" if p.id == "p4" else 1.0


def write(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_difficulty_file_source(tmp_path):
    f = write(tmp_path / "d.jsonl", [{"id": f"p{i}", "difficulty": i / 10} for i in range(6)])
    cfg = CurriculumConfig(name="pacing", difficulty_file=f)
    np.testing.assert_allclose(resolve_difficulty(prompts(), cfg), [i / 10 for i in range(6)])
    cur = build_curriculum(cfg, prompts(), 0, total_steps=10)
    assert cur.order[0] == 0 and cur.order[-1] == 5  # easiest first


def test_difficulty_file_errors(tmp_path):
    f = write(
        tmp_path / "d.jsonl", [{"id": "p0", "difficulty": 0.1}, {"id": "p1", "difficulty": "x"}]
    )
    with pytest.raises(ConfigError, match=r"d.jsonl:2: difficulty 'x' of id 'p1' is not a number"):
        read_difficulty_file(f)
    f = write(tmp_path / "e.jsonl", [{"id": "p0"}])
    with pytest.raises(ConfigError, match="needs the keys 'id' and 'difficulty'"):
        read_difficulty_file(f)
    with pytest.raises(ConfigError, match="does not exist.*steerl curriculum profile"):
        read_difficulty_file(tmp_path / "missing.jsonl")
    f = write(
        tmp_path / "f.jsonl", [{"id": "p0", "difficulty": 0.1}, {"id": "p3", "difficulty": 1}]
    )
    cfg = CurriculumConfig(name="adarft", difficulty_file=f)
    with pytest.raises(
        ConfigError, match=r"4 of 6 training prompts have no difficulty .*e\.g\. id 'p1'"
    ):
        resolve_difficulty(prompts(), cfg)


def test_missing_difficulty_mean_fills_and_logs(tmp_path, caplog):
    f = write(
        tmp_path / "d.jsonl", [{"id": "p0", "difficulty": 0.2}, {"id": "p1", "difficulty": 0.4}]
    )
    cfg = CurriculumConfig(name="pacing", difficulty_file=f, missing_difficulty="mean")
    with caplog.at_level(logging.WARNING, logger="steerl.curriculum"):
        d = resolve_difficulty(prompts(), cfg)
    np.testing.assert_allclose(d, [0.2, 0.4, 0.3, 0.3, 0.3, 0.3])
    assert "4 of 6 training prompts have no difficulty" in caplog.text and "mean" in caplog.text


def test_no_difficulty_at_all_is_an_error_even_with_mean():
    ps = [Prompt(id=f"p{i}", text="t", answer="", has_difficulty=False) for i in range(3)]
    cfg = CurriculumConfig(name="pacing", missing_difficulty="mean")
    with pytest.raises(ConfigError, match="none of the 3 training prompts has one"):
        build_curriculum(cfg, ps, 0)
    build_curriculum(CurriculumConfig(name="competence"), ps, 0)  # needs no difficulty


def test_difficulty_fn_source():
    cfg = CurriculumConfig(name="pacing", difficulty_fn=f"{__name__}:hardness")
    np.testing.assert_allclose(resolve_difficulty(prompts(), cfg), [10, 9, 8, 7, 6, 5])
    cfg = CurriculumConfig(name="pacing", difficulty_fn=f"{__name__}:bad_hardness")
    with pytest.raises(ConfigError, match="returned 'hard' for prompt id 'p4'"):
        resolve_difficulty(prompts(), cfg)
    cfg = CurriculumConfig(name="pacing", difficulty_fn="no_such_module_xyz:f")
    with pytest.raises(ConfigError, match="cannot import module"):
        resolve_difficulty(prompts(), cfg)


def test_normalise():
    np.testing.assert_allclose(normalise(np.array([2.0, 4.0, 3.0])), [0, 1, 0.5])
    np.testing.assert_allclose(normalise(np.array([7.0, 7.0])), [0, 0])


def test_profile_file_helpers_resume_after_a_torn_line(tmp_path):
    f = tmp_path / "p.jsonl"
    append_rows(f, [{"id": "a", "difficulty": 0.5}])
    with f.open("a") as fh:
        fh.write('{"id": "b", "diffic')  # killed mid-line
    assert done_ids(f) == {"a"}
    append_rows(f, [{"id": "b", "difficulty": 1.0}])
    assert read_difficulty_file(f) == {"a": 0.5, "b": 1.0}
    assert done_ids(f) == {"a", "b"}


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("curriculum.competence.band=[0.9,0.1]", "low 0.9 is above high 0.1"),
        ("curriculum.competence.band=[-0.1,0.5]", "must lie within [0, 1]"),
        ("curriculum.competence.band=[0.2,1.5]", "must lie within [0, 1]"),
        ("curriculum.name=easiest_first", "allowed values are uniform, pacing"),
        ("curriculum.pacing.fn=cubic", "linear"),
        ("curriculum.pacing.start_fraction=0", "greater than 0"),
        ("curriculum.adarft={min: 0.8, max: 0.5}", "min=0.8 is above max=0.5"),
        ("curriculum.bandit.fast=0.05", "fast=0.05 must be above slow"),
        ("curriculum.stats.prior=[0,1]", "must be > 0"),
        ("curriculum.difficulty_fn=nomodule", "package.module:function"),
        ("curriculum.max_refill_rounds=-1", "greater than or equal to 0"),
    ],
)
def test_config_rejects_bad_values(override, needle):
    with pytest.raises(ConfigError) as e:
        load_config("default", [override])
    assert needle in str(e.value)


def test_config_cross_checks():
    with pytest.raises(ConfigError, match="both set the difficulty"):
        load_config("default", ["curriculum.difficulty_fn=a:b", "curriculum.difficulty_file=x"])
    with pytest.raises(ConfigError, match="drop_zero_variance, which is false"):
        load_config(
            "default", ["curriculum.max_refill_rounds=2", "curriculum.drop_zero_variance=false"]
        )
    cfg = load_config("default", ["curriculum.name=my_pkg.cur:Mine"])
    assert cfg.curriculum.name == "my_pkg.cur:Mine"


class Mine:
    """A user's curriculum without the advantages keyword (the old protocol)."""

    def __init__(self, prompts, seed):
        self.prompts, self.seen = prompts, []

    def sample(self, n, step):
        return self.prompts[:n]

    def update(self, prompt_ids, rewards, step):
        self.seen.append((list(prompt_ids), step))

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def test_user_curriculum_by_module_path():
    import torch

    cur = build_curriculum(CurriculumConfig(name=f"{__name__}:Mine"), prompts(), 0)
    assert [p.id for p in cur.sample(2, 0)] == ["p0", "p1"]
    cur.update(["p0"], torch.zeros(1, 2), 3, advantages=torch.zeros(1, 2))
    assert cur.seen == [(["p0"], 3)]
