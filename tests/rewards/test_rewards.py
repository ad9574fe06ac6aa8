from __future__ import annotations

import logging
import math
import textwrap

import pytest
import torch

from steerl.config import ConfigError, RewardSpec
from steerl.rewards import (
    REWARDS,
    RewardFailure,
    RewardOutput,
    RewardResult,
    RewardSet,
    build_rewards,
    reward,
)
from steerl.rewards.builtins import exact_match, format_reward


def spec(name: str, **kw) -> RewardSpec:
    return RewardSpec(name=name, **kw)


# --------------------------------------------------------------------------- built-ins
def test_builtins_registered_with_descriptions():
    assert "exact_match" in REWARDS and "format" in REWARDS
    assert all(e.description for e in REWARDS.entries())


def test_exact_match():
    comps = ["  42 \nrest", "41", "42", "x", "7"]
    answers = ["42", "42", " 42 ", None, 7]
    assert exact_match([""] * 5, comps, answer=answers) == [1.0, 0.0, 1.0, None, 1.0]
    assert exact_match(["", ""], ["a", "b"]) == [None, None]  # no answer column
    assert exact_match([""], ["42\nmore"], answer=["42"], first_line=False) == [0.0]


def test_format_pattern_modes():
    comps = ["<a>1</a>", "junk <a>2</a> junk", " <a>\n3</a>\n"]
    assert format_reward([""] * 3, comps, pattern=r"<a>.*</a>") == [1.0, 0.0, 1.0]
    assert format_reward([""] * 3, comps, pattern=r"<a>.*?</a>", mode="search") == [1.0] * 3


def test_format_required_tags_in_order():
    tags = ["<think>", "</think>", "<answer>", "</answer>"]
    comps = [
        "<think>hm</think><answer>4</answer>",
        "<answer>4</answer><think>hm</think>",  # wrong order
        "<think>hm</think> 4",  # missing
        "<think></think>",  # only the first two
    ]
    assert format_reward([""] * 4, comps, required_tags=tags) == [1.0, 0.0, 0.0, 0.0]
    # both pattern and tags must hold
    out = format_reward(["", ""], comps[:2], pattern=r"<think>.*", required_tags=tags)
    assert out == [1.0, 0.0]


def test_builtins_through_reward_set():
    rs = build_rewards(
        [
            spec("exact_match"),
            spec("format", args={"pattern": r"\d+"}, alias="digits", weight=0.5),
        ]
    )
    res = rs.score(["p", "p", "p"], ["12", "13", "ab"], {"answer": ["12", "12", None]}, step=0)
    assert isinstance(res, RewardResult)
    assert res.names == ["exact_match", "digits"]
    assert res.scores.dtype == torch.float32 and res.scores.shape == (3, 2)
    assert res.scores[:2, 0].tolist() == [1.0, 0.0] and math.isnan(res.scores[2, 0])
    assert res.scores[:, 1].tolist() == [1.0, 1.0, 0.0]
    assert torch.equal(res.weights, torch.tensor([1.0, 0.5]))
    m = res.metrics
    assert m["reward/exact_match/mean"] == pytest.approx(0.5)
    assert m["reward/exact_match/std"] == pytest.approx(0.5)
    assert m["reward/exact_match/unscored"] == pytest.approx(1 / 3)
    assert m["reward/digits/mean"] == pytest.approx(2 / 3)
    assert m["reward/digits/unscored"] == 0.0


# --------------------------------------------------------------------------- resolution
USER_MODULE = """
def myreward(prompts, completions, answer, *, bonus=0.0, step=0):
    return [float(len(c)) + bonus + step for c in completions]

def noargs(prompts, completions):
    return [1.0 for _ in completions]
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    name = f"steerl_test_usermod_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_user_reward_from_module(user_module):
    rs = build_rewards([spec(f"{user_module}:myreward", args={"bonus": 10.0})])
    assert rs.names == [f"{user_module}.myreward"]
    res = rs.score(["p", "p"], ["ab", "abc"], {"answer": ["x", "y"], "category": ["a", "b"]}, 5)
    assert res.scores[:, 0].tolist() == [17.0, 18.0]
    # a function without **fields only receives what it names
    res = build_rewards([spec(f"{user_module}:noargs")]).score(["p"], ["c"], {"answer": ["x"]}, 1)
    assert res.scores.tolist() == [[1.0]]


def test_unknown_name_lists_registered():
    with pytest.raises(ConfigError, match="exact_match") as ei:
        build_rewards([spec("exact_matchh")])
    assert "exact_matchh" in str(ei.value) and "rewards.0" in str(ei.value)


def test_unimportable_module():
    with pytest.raises(ConfigError, match="no_such_module_xyz") as ei:
        build_rewards([spec("no_such_module_xyz:fn")])
    assert "PYTHONPATH" in str(ei.value)


def test_missing_attribute(user_module):
    with pytest.raises(ConfigError, match="nope"):
        build_rewards([spec(f"{user_module}:nope")])


def test_bad_kwarg_named(user_module):
    with pytest.raises(ConfigError, match="'bonsu'") as ei:
        build_rewards([spec(f"{user_module}:myreward", args={"bonsu": 1})])
    assert "bonus" in str(ei.value)  # accepted args are listed
    with pytest.raises(ConfigError, match="first_lin"):
        build_rewards([spec("exact_match", args={"first_lin": False})])
    with pytest.raises(ConfigError, match="reserved"):
        build_rewards([spec("exact_match", args={"step": 1})])


def test_invalid_regex_at_build_time():
    with pytest.raises(ValueError, match=r"format.*pattern.*'\('"):
        build_rewards([spec("format", args={"pattern": "("})])
    with pytest.raises(ConfigError, match="mode"):
        build_rewards([spec("format", args={"pattern": "a", "mode": "match"})])
    with pytest.raises(ConfigError, match="required_tags"):
        build_rewards([spec("format", args={"required_tags": "<think>"})])
    with pytest.raises(ConfigError, match="pattern"):
        build_rewards([spec("format")])  # neither pattern nor tags


def test_duplicate_labels():
    with pytest.raises(ConfigError, match="unique"):
        build_rewards([spec("exact_match"), spec("exact_match")])


# --------------------------------------------------------------------------- isolation
def make_set(*fns, weights=None, max_failed_steps=3) -> RewardSet:
    from steerl.rewards import BoundReward

    weights = weights or [1.0] * len(fns)
    return RewardSet(
        [BoundReward(label=f.__name__, fn=f, weight=w) for f, w in zip(fns, weights, strict=True)],
        max_failed_steps=max_failed_steps,
    )


def ones(prompts, completions, **fields):
    return [1.0] * len(completions)


def boom(prompts, completions, **fields):
    raise KeyError("no such column")


def test_raising_reward_unscored_then_failure(caplog):
    rs = make_set(ones, boom, max_failed_steps=10)
    with caplog.at_level(logging.WARNING, logger="steerl.rewards"):
        for step in (0, 0, 1):  # two calls at step 0, one at step 1
            res = rs.score(["p"] * 4, ["c"] * 4, {}, step)
            assert torch.isnan(res.scores[:, 1]).all()
            assert res.scores[:, 0].tolist() == [1.0] * 4
            assert res.metrics["reward/boom/unscored"] == 1.0
            assert math.isnan(res.metrics["reward/boom/mean"])
            assert res.metrics["reward/ones/unscored"] == 0.0
    # one warning per step, with the exception text
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and "no such column" in warnings[0].getMessage()

    rs = make_set(ones, boom, max_failed_steps=3)
    rs.score(["p"], ["c"], {}, 0)
    rs.score(["p"], ["c"], {}, 1)
    with pytest.raises(RewardFailure, match=r"'boom'.*3 consecutive.*no such column") as ei:
        rs.score(["p"], ["c"], {}, 2)
    assert isinstance(ei.value, RuntimeError) and ei.value.steps == 3
    assert "Fix the reward" in str(ei.value)


def test_intermittent_failures_do_not_trip():
    calls = {"n": 0}

    def flaky(prompts, completions, step, **fields):
        calls["n"] += 1
        if step % 3 != 2:
            raise RuntimeError("flaky")
        return [0.5] * len(completions)

    rs = make_set(flaky, max_failed_steps=3)
    for step in range(12):
        res = rs.score(["p", "p"], ["a", "b"], {}, step)
        scored = step % 3 == 2
        assert bool(torch.isnan(res.scores).all()) is not scored
    assert calls["n"] == 12


def test_bad_outputs_unscored():
    def with_nan(prompts, completions, **fields):
        return [1.0, float("nan"), float("inf"), "high", None, True]

    def short(prompts, completions, **fields):
        return [1.0]

    def not_a_list(prompts, completions, **fields):
        return 1.0

    def as_tensor(prompts, completions, **fields):
        return torch.arange(len(completions), dtype=torch.float64)

    rs = make_set(with_nan, short, not_a_list, as_tensor)
    res = rs.score(["p"] * 6, ["c"] * 6, {}, 0)
    col = res.scores[:, 0]
    assert col[0] == 1.0 and col[5] == 1.0 and torch.isnan(col[1:5]).all()
    assert res.metrics["reward/with_nan/unscored"] == pytest.approx(4 / 6)
    assert torch.isnan(res.scores[:, 1]).all() and torch.isnan(res.scores[:, 2]).all()
    assert res.metrics["reward/short/unscored"] == 1.0
    assert res.scores[:, 3].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]


def test_fields_and_step_passed():
    seen = {}

    def spy(prompts, completions, **fields):
        seen.update(fields)
        completions.clear()  # mutating its inputs must not affect other rewards
        return [0.0, 0.0]

    rs = make_set(spy, ones)
    res = rs.score(["p", "q"], ["a", "b"], {"answer": ["1", "2"], "difficulty": [1, 2]}, step=7)
    assert seen == {"answer": ["1", "2"], "difficulty": [1, 2], "step": 7}
    assert res.scores[:, 1].tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="answer"):
        rs.score(["p", "q"], ["a", "b"], {"answer": ["1"]}, 0)


def test_extra_metrics():
    @reward("test_with_metrics")
    def with_metrics(prompts, completions, **fields):
        """Scores plus metrics."""
        return RewardOutput([1.0, 0.0], {"parsed": 0.5, "bad": "x"})

    rs = build_rewards([spec("test_with_metrics", alias="wm")])
    res = rs.score(["p", "p"], ["a", "b"], {}, 0)
    assert res.metrics["reward/wm/parsed"] == 0.5
    assert "reward/wm/bad" not in res.metrics
    assert res.metrics["reward/wm/mean"] == 0.5
    assert any(e.description == "Scores plus metrics." for e in REWARDS.entries())


def test_all_none_counts_as_failure():
    rs = build_rewards([spec("exact_match")], max_failed_steps=2)
    rs.score(["p"], ["1"], {}, 0)  # no answer column
    with pytest.raises(RewardFailure, match="None .*every sample.*fields given: none"):
        rs.score(["p"], ["1"], {}, 1)


def test_empty_batch():
    res = make_set(boom, max_failed_steps=1).score([], [], {}, 0)
    assert res.scores.shape == (0, 1) and res.metrics["reward/boom/unscored"] == 0.0


# --------------------------------------------------------------------------- combined
def test_combined_weights_and_nan():
    nan = float("nan")
    result = RewardResult(
        scores=torch.tensor([[1.0, 0.0, nan], [0.5, 1.0, 3.0], [nan, 1.0, 0.0], [1.0, nan, 1.0]]),
        names=["a", "b", "c"],
        weights=torch.tensor([2.0, 0.5, 0.0]),
    )
    out = RewardSet.combined(result)
    assert out.shape == (4,)
    assert out[:2].tolist() == [2.0, 1.5]  # zero-weight NaN column ignored
    assert torch.isnan(out[2:]).all()

    def twos(prompts, completions, **fields):
        return [2.0] * len(completions)

    rs = make_set(ones, twos, weights=[1.0, 2.0])
    res = rs.score(["p"], ["c"], {}, 0)
    assert rs.combined(res).tolist() == [5.0]
    with pytest.raises(ValueError, match="unique"):
        make_set(ones, ones)


# --------------------------------------------------------------------------- timeouts / limits
def test_spec_timeout_and_limit_validated():
    from pydantic import ValidationError

    assert RewardSpec(name="exact_match").timeout is None
    assert RewardSpec(name="exact_match").max_failed_steps == 3
    for bad in ({"timeout": 0}, {"timeout": -1.0}, {"max_failed_steps": 0}):
        with pytest.raises(ValidationError):
            RewardSpec(name="exact_match", **bad)
    assert RewardSpec(name="exact_match", max_failed_steps=None).max_failed_steps is None


def test_slow_reward_times_out_and_run_goes_on(caplog):
    import threading
    import time

    release = threading.Event()

    def slow(prompts, completions, **fields):
        release.wait(10)
        return [1.0] * len(completions)

    from steerl.rewards import BoundReward

    rs = RewardSet(
        [BoundReward("slow", slow, timeout=0.2, max_failed_steps=2), BoundReward("ones", ones)]
    )
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="steerl.rewards"):
        res = rs.score(["p"] * 3, ["c"] * 3, {}, 0)
    assert time.monotonic() - t0 < 2.0
    assert torch.isnan(res.scores[:, 0]).all() and res.scores[:, 1].tolist() == [1.0] * 3
    assert res.metrics["reward/slow/timed_out"] == 1.0
    assert res.metrics["reward/slow/unscored"] == 1.0
    assert "reward/ones/timed_out" not in res.metrics  # only rewards with a timeout
    assert any("timed out after 0.2 s" in r.getMessage() for r in caplog.records)
    with pytest.raises(RewardFailure, match=r"'slow'.*2 consecutive.*timed out"):
        rs.score(["p"], ["c"], {}, 1)
    release.set()


def test_timeout_reward_in_time_and_raising():
    def quick(prompts, completions, step, **fields):
        return [float(step)] * len(completions)

    from steerl.rewards import BoundReward

    rs = RewardSet([BoundReward("quick", quick, timeout=5.0), BoundReward("boom", boom, timeout=5)])
    res = rs.score(["p", "p"], ["a", "b"], {}, 4)
    assert res.scores[:, 0].tolist() == [4.0, 4.0]
    assert res.metrics["reward/quick/timed_out"] == 0.0
    assert torch.isnan(res.scores[:, 1]).all() and res.metrics["reward/boom/timed_out"] == 0.0


def test_timeout_from_spec(user_module):
    rs = build_rewards([spec(f"{user_module}:myreward", timeout=3.0, alias="m")])
    assert rs.rewards[0].timeout == 3.0
    res = rs.score(["p"], ["ab"], {"answer": ["x"]}, 1)
    assert res.scores.tolist() == [[3.0]] and res.metrics["reward/m/timed_out"] == 0.0


def test_max_failed_steps_per_reward():
    def boom2(prompts, completions, **fields):
        raise RuntimeError("also broken")

    # from specs: each reward's own value; unset ones use build_rewards' default
    rs = build_rewards(
        [
            spec("exact_match", alias="lenient", max_failed_steps=5),
            spec("exact_match", alias="strict", max_failed_steps=2),
            spec("exact_match", alias="never", max_failed_steps=None),
        ]
    )
    assert [rs.limit(r) for r in rs.rewards] == [5, 2, None]
    rs.score(["p"], ["1"], {}, 0)  # no answer column: every reward unscored
    with pytest.raises(RewardFailure, match="'strict'.*now 2"):
        rs.score(["p"], ["1"], {}, 1)
    inherited = build_rewards([spec("exact_match")], max_failed_steps=7)
    assert inherited.limit(inherited.rewards[0]) == 7

    from steerl.rewards import BoundReward

    rs = RewardSet(
        [BoundReward("boom", boom, max_failed_steps=None), BoundReward("boom2", boom2)],
        max_failed_steps=4,
    )
    for step in range(3):
        rs.score(["p"], ["c"], {}, step)
    with pytest.raises(RewardFailure, match="'boom2'.*4 consecutive"):
        rs.score(["p"], ["c"], {}, 3)
    with pytest.raises(ValueError, match="timeout"):
        BoundReward("x", ones, timeout=0)
