"""Curricula inside the trainer: exact resume, refill, metrics, the report's heat map."""

from __future__ import annotations

import json
import warnings

import pytest

from steerl.config import ConfigError
from steerl.curriculum import CurriculumWarning
from steerl.logging import read_metrics
from steerl.trainer import Callback, Trainer

#: The format reward first (it is the pass indicator the curriculum tracks): it varies between
#: samples of an untrained model, so the statistics and the selectors have something to see.
REWARDS = (
    "rewards=[{name: format, alias: low_digit, args: {pattern: '[0-4]', mode: search}}, "
    "{name: exact_match}]"
)


class SampledIds(Callback):
    """The prompt ids the curriculum sampled at every RL step (global step -> ids)."""

    def __init__(self):
        self.ids: dict[int, list[str]] = {}

    def on_step_end(self, trainer, step, metrics):
        if metrics.get("phase") == "rl":
            self.ids[step] = list(trainer.curriculum.last_sampled_ids)


def _numeric(rec: dict) -> dict:
    return {k: v for k, v in rec.items() if not k.startswith("time/") and not isinstance(v, str)}


@pytest.mark.parametrize(
    "name", ["uniform", "pacing", "competence", "adarft", "learnability", "bandit", "prioritized"]
)
def test_resume_restores_the_curriculum_exactly(tmp_path, tiny_config, name):
    extra = (
        REWARDS,
        f"curriculum.name={name}",
        "train.save_every=1",
        "train.steps=5",
        "warmup.steps=0",
        "curriculum.max_refill_rounds=1",
        "curriculum.bandit.algorithm=exp3",
    )
    full, part = SampledIds(), SampledIds()
    Trainer(tiny_config(*extra), tmp_path / "a", callbacks=[full]).train()
    Trainer(tiny_config(*extra, "train.stop_after=2"), tmp_path / "b", callbacks=[part]).train()
    Trainer(tiny_config(*extra), tmp_path / "b", callbacks=[part]).train()
    assert sorted(part.ids) == sorted(full.ids) == [1, 2, 3, 4, 5]
    assert part.ids == full.ids  # steps 3-5 sampled after the resume from step_2
    ra = [_numeric(r) for r in read_metrics(tmp_path / "a") if r["step"] > 2]
    rb = [_numeric(r) for r in read_metrics(tmp_path / "b") if r["step"] > 2]
    assert ra == rb and len(ra) == 4
    assert any(k.startswith("curriculum/level_") for k in ra[0])
    state = json.loads((tmp_path / "b/checkpoints/step_5/trainer_state.json").read_text())
    seen = state["components"]["curriculum"]["stats"]["prompts"]
    assert 0 < len(seen) <= 5 * 4 * 2  # compact: only the prompts seen (<= 2 rounds x 5 steps)


def test_curriculum_metrics_are_logged_every_rl_step(tmp_path, tiny_config):
    cfg = tiny_config(REWARDS, "curriculum.name=adarft", "warmup.steps=0", "train.steps=3")
    Trainer(cfg, tmp_path).train()
    rl = [r for r in read_metrics(tmp_path) if r.get("phase") == "rl"]
    for r in rl:
        shares = [r[f"curriculum/level_{k}/share"] for k in (1, 2, 3)]
        assert sum(shares) == pytest.approx(1.0)
        assert "curriculum/target_difficulty" in r and "curriculum/filtered_fraction" in r
        assert r["curriculum/refill_rounds"] == 0 and r["curriculum/fallbacks"] == 0
    assert any(f"curriculum/level_{k}/pass_rate" in rl[-1] for k in (1, 2, 3))


def test_refill_fills_the_trained_batch(tmp_path, tiny_config):
    cfg = tiny_config(REWARDS, "warmup.steps=0", "train.steps=3", "curriculum.max_refill_rounds=5")
    Trainer(cfg, tmp_path).train()
    rl = [r for r in read_metrics(tmp_path) if r.get("phase") == "rl"]
    for r in rl:
        assert r["curriculum/kept_groups"] == 4 or r["curriculum/short_batch"] == 1
        assert r["train/kept_groups"] == r["curriculum/kept_groups"] / 4
        assert r["curriculum/sampled_groups"] >= 4


def test_refill_cap_hit_is_logged_and_warned_once(tmp_path, tiny_config):
    # exact_match alone: the untrained model never answers right, every group is constant
    cfg = tiny_config("warmup.steps=0", "train.steps=2", "curriculum.max_refill_rounds=2")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        Trainer(cfg, tmp_path).train()
    ours = [w for w in caught if issubclass(w.category, CurriculumWarning)]
    assert len(ours) == 1 and "max_refill_rounds" in str(ours[0].message)
    rl = [r for r in read_metrics(tmp_path) if r.get("phase") == "rl"]
    assert all(r["curriculum/short_batch"] == 1 and r["curriculum/refill_rounds"] == 2 for r in rl)
    assert all(
        r["curriculum/missing_groups"] == 4 and r["curriculum/sampled_groups"] == 12 for r in rl
    )


def test_report_has_the_curriculum_heat_map(tmp_path, tiny_config):
    cfg = tiny_config(
        REWARDS,
        "curriculum.name=learnability",
        "warmup.steps=0",
        "train.steps=3",
        "logging.report=true",
    )
    Trainer(cfg, tmp_path).train()
    assert (tmp_path / "curriculum.png").stat().st_size > 0
    assert 'src="curriculum.png"' in (tmp_path / "report.html").read_text()


def test_difficulty_missing_on_some_rows_stops_pacing(tmp_path, tiny_config):
    rows = [{"prompt": f"{i}+1=", "answer": str(i + 1), "id": f"r{i}"} for i in range(30)]
    for i, row in enumerate(rows):
        if i % 3:
            row["difficulty"] = i
    path, held = tmp_path / "data.jsonl", tmp_path / "eval.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    held.write_text(json.dumps({"prompt": "x", "answer": "y"}) + "\n")
    base = (
        "task.kind=file",
        f"task.path={path}",
        f"task.eval_path={held}",
        "warmup.steps=0",
        "curriculum.name=pacing",
    )
    with pytest.raises(
        ConfigError, match="10 of 30 training prompts have no difficulty.*e.g. id 'r0'"
    ):
        Trainer(tiny_config(*base), tmp_path / "run")
    trainer = Trainer(tiny_config(*base, "curriculum.missing_difficulty=mean"), tmp_path / "run")
    assert trainer.curriculum.difficulty is not None
    # the uniform curriculum does not need a difficulty
    Trainer(tiny_config(*base[:-1]), tmp_path / "run2")
