"""The built-in rewards beyond exact_match/format: math, length, repetition, code, reward model."""

from __future__ import annotations

import math
import threading

import pytest
import torch

from steerl.config import ConfigError, RewardSpec
from steerl.rewards import REWARDS, RewardOutput, build_rewards
from steerl.rewards.builtins import (
    length_penalty,
    overlong_penalty,
    repetition_penalty,
    repetition_rate,
)
from steerl.rewards.code_exec import code_exec, extract_code, split_tests
from steerl.rewards.math_answer import gold_text, math_answer

BUILTINS = [
    "exact_match",
    "format",
    "math_answer",
    "length_penalty",
    "repetition_penalty",
    "code_exec",
    "reward_model",
]


def spec(name: str, **kw) -> RewardSpec:
    return RewardSpec(name=name, **kw)


def test_all_registered_with_one_line_descriptions():
    entries = {e.name: e for e in REWARDS.entries()}
    for name in BUILTINS:
        assert name in entries, name
        d = entries[name].description
        assert d and "\n" not in d and len(d) < 100, (name, d)


# --------------------------------------------------------------------------- math_answer
def test_math_answer_equivalence():
    comps = [
        "The answer is \\boxed{42}.",
        "41",
        "so it is 1/2",
        "0.5",
        "I get $\\frac{2}{4}$",
        "Let x = 3, then \\boxed{5} (not 3)",
        "no idea",
        "\\boxed{1,000}",
        "x = \\boxed{\\sqrt{2}}",
    ]
    gold = ["42", "#### 42", "\\frac{1}{2}", "1/2", "0.5", "5", "3", "1000", "\\sqrt{2}"]
    out = math_answer([""] * len(comps), comps, answer=gold)
    assert isinstance(out, RewardOutput)
    assert out.scores == [1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0]
    assert out.metrics["no_answer"] == pytest.approx(1 / len(comps))


def test_math_answer_gsm8k_gold_and_unparsable():
    solution = "Natalia sold 48/2 = 24 clips in May.\n48 + 24 = 72\n#### 1,072"
    assert gold_text(solution) == "1072"
    assert gold_text("  42. ") == "42" and gold_text(None) is None and gold_text("####") is None
    out = math_answer(
        ["", "", "", ""], ["1072", "72", "7", "7"], answer=[solution] * 2 + [None, "??"]
    )
    assert out.scores == [1.0, 0.0, None, None]
    assert out.metrics["bad_gold"] == 0.5
    assert math_answer([""], ["1"]).scores == [None]  # no answer column


def test_math_answer_off_the_main_thread():
    # math-verify's signal-based timeout only works in the main thread; steerl turns it off
    out: list = []
    t = threading.Thread(target=lambda: out.append(math_answer([""], ["\\boxed{7}"], answer=["7"])))
    t.start()
    t.join()
    assert out[0].scores == [1.0]
    res = build_rewards([spec("math_answer", timeout=20)]).score(
        ["p"], ["\\boxed{7}"], {"answer": ["7"]}
    )
    assert res.scores.tolist() == [[1.0]] and res.metrics["reward/math_answer/timed_out"] == 0.0


def test_math_answer_args_checked():
    with pytest.raises(ConfigError, match="parse_timeout"):
        build_rewards([spec("math_answer", args={"parse_timeout": 0})])


# --------------------------------------------------------------------------- length_penalty
def test_length_penalty_linear():
    comps = ["abc", "abcdefgh", "a b c d e f"]
    assert length_penalty([""] * 3, comps, target=4, coef=0.5) == [0.0, -2.0, -3.5]
    assert length_penalty([""] * 3, comps, unit="words", target=2, coef=1.0) == [0.0, 0.0, -4.0]
    assert length_penalty([""], ["xx"]) == [-0.02]  # defaults: target 0, coef 0.01


def test_length_penalty_overlong_matches_dapo():
    # DAPO eq. 13 with L_max = 20, L_cache = 8: 0 up to 12, linear to -1 at 20, -1 beyond
    assert [overlong_penalty(n, 20, 8) for n in (0, 12, 13, 16, 20, 21, 100)] == [
        0.0,
        0.0,
        -1 / 8,
        -0.5,
        -1.0,
        -1.0,
        -1.0,
    ]
    comps = ["x" * n for n in (10, 16, 25)]
    out = length_penalty([""] * 3, comps, mode="overlong", max_len=20, buffer=8)
    assert out == [0.0, -0.5, -1.0]
    assert overlong_penalty(20, 20, 0) == 0.0 and overlong_penalty(21, 20, 0) == -1.0


def test_length_penalty_args_checked():
    with pytest.raises(ConfigError, match="max_len"):
        build_rewards([spec("length_penalty", args={"mode": "overlong"})])
    with pytest.raises(ConfigError, match="buffer"):
        build_rewards(
            [spec("length_penalty", args={"mode": "overlong", "max_len": 4, "buffer": 8})]
        )
    with pytest.raises(ConfigError, match="unit"):
        build_rewards([spec("length_penalty", args={"unit": "tokens"})])
    with pytest.raises(ConfigError, match="mode"):
        build_rewards([spec("length_penalty", args={"mode": "cubic"})])
    with pytest.raises(ConfigError, match="coef"):
        build_rewards([spec("length_penalty", args={"coef": -1})])


# --------------------------------------------------------------------------- repetition_penalty
def test_repetition_penalty():
    assert repetition_rate("a b c d e f", 3) == 0.0
    loop = "go " * 20  # 18 word 3-grams, one distinct
    assert repetition_rate(loop, 3) == pytest.approx(1 - 1 / 18)
    assert repetition_rate("a b", 3) == 0.0  # too short to repeat
    assert repetition_rate("abcabc", 3, unit="chars") == pytest.approx(1 - 3 / 4)
    comps = ["a b c d e f", loop, "a b a b a b"]
    pen = repetition_penalty([""] * 3, comps)
    assert pen[0] == 0.0 and all(-1.0 <= p <= 0.0 for p in pen) and pen[1] < pen[2] < 0
    score = repetition_penalty([""] * 3, comps, output="score")
    assert score == pytest.approx([1 + p for p in pen])
    assert repetition_penalty([""], ["a b a b"], n=1) == [pytest.approx(-0.5)]
    with pytest.raises(ConfigError, match="output"):
        build_rewards([spec("repetition_penalty", args={"output": "bonus"})])
    with pytest.raises(ConfigError, match=" n=0"):
        build_rewards([spec("repetition_penalty", args={"n": 0})])


# --------------------------------------------------------------------------- code_exec
def test_extract_code():
    assert extract_code("no fence") == "no fence"
    text = "Plan.\n```python\nx = 1\n```\nthen\n```py\nx = 2\n```\n```\noutput\n```"
    assert extract_code(text) == "x = 2\n"
    assert extract_code("```\ny = 1\n```") == "y = 1\n"
    assert extract_code("text\n```python\ndef f():\n    return 1\n") == "def f():\n    return 1\n"


def test_split_tests():
    setup, tests = split_tests("import math\nassert f(1) == 1\nassert f(4) == math.sqrt(16)")
    assert setup == "import math" and tests == ["assert f(1) == 1", "assert f(4) == math.sqrt(16)"]
    assert split_tests(["assert f(1)", "", "assert f(2)"]) == ("", ["assert f(1)", "assert f(2)"])
    assert split_tests("check(f)") == ("", ["check(f)"])
    assert split_tests("assert (") == ("", ["assert ("])  # not Python: one test
    assert split_tests(None) is None and split_tests([]) is None and split_tests("  ") is None


def test_code_exec_scores():
    good = "```python\ndef add(a, b):\n    return a + b\n```"
    partial = "Here:\n```python\ndef add(a, b):\n    return a + b if a < 5 else 0\n```"
    wrong = "def add(a, b): return a - b"
    syntax = "```python\ndef add(a, b) return\n```"
    tests = "assert add(1, 2) == 3\nassert add(2, 2) == 4\nassert add(10, 1) == 11"
    comps = [good, partial, wrong, syntax, good, good]
    column = [tests, tests, tests, tests, ["assert add(1, 1) == 2", "assert add(0, 0) == 1"], None]
    out = code_exec([""] * 6, comps, tests=column)
    assert out.scores == [1.0, pytest.approx(2 / 3), 0.0, 0.0, 0.5, None]
    assert out.metrics["error"] == pytest.approx(1 / 5)  # the syntax error
    assert out.metrics["all_passed"] == pytest.approx(1 / 5)
    all_mode = code_exec([""] * 2, [good, partial], tests=[tests, tests], mode="all")
    assert all_mode.scores == [1.0, 0.0]


def test_code_exec_through_reward_set():
    rs = build_rewards(
        [spec("code_exec", args={"tests_field": "unit_tests", "time_limit": 1.5, "workers": 2})]
    )
    res = rs.score(
        ["p", "p"],
        ["def f():\n    return 2", "def f():\n    return 3"],
        {"unit_tests": ["assert f() == 2", "assert f() == 2"], "answer": [None, None]},
    )
    assert res.scores[:, 0].tolist() == [1.0, 0.0]
    assert res.metrics["reward/code_exec/all_passed"] == 0.5
    # no tests column: unscored, with the column named in the warning
    res = rs.score(["p"], ["x"], {"answer": ["1"]})
    assert math.isnan(res.scores[0, 0])
    with pytest.raises(ConfigError, match="time_limt"):
        build_rewards([spec("code_exec", args={"time_limt": 1})])
    with pytest.raises(ConfigError, match="mode"):
        build_rewards([spec("code_exec", args={"mode": "some"})])


# --------------------------------------------------------------------------- reward_model
@pytest.fixture(scope="module")
def tiny_rm(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from steerl.models import build_char_tokenizer

    torch.manual_seed(0)
    tok = build_char_tokenizer()
    conf = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        num_labels=2,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    model = LlamaForSequenceClassification(conf).eval()
    path = tmp_path_factory.mktemp("rm")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path), model, tok


def test_reward_model_scores_batched(tiny_rm):
    from steerl.rewards import reward_model as rm

    path, model, tok = tiny_rm
    rm.clear_cache()
    prompts = ["12+3=", "4+4=", "7*(2+1)=", "1="]
    comps = ["15", "8", "21 ", "1"]
    rs = build_rewards(
        [spec("reward_model", args={"model": path, "batch_size": 3, "device": "cpu"})]
    )
    res = rs.score(prompts, comps, {})
    expected = []
    for p, c in zip(prompts, comps):
        enc = tok(p + c, return_tensors="pt")
        with torch.no_grad():
            expected.append(float(model(**enc).logits[0, 0]))
    assert res.scores[:, 0].tolist() == pytest.approx(expected, abs=1e-5)
    # another label, loaded from the cache (one model object)
    out = rm.reward_model(prompts, comps, model=path, label=1, batch_size=4, device="cpu")
    assert len(rm._CACHE) == 1
    assert out != pytest.approx(res.scores[:, 0].tolist())
    with pytest.raises(ValueError, match="label=2"):
        rm.reward_model(prompts, comps, model=path, label=2, device="cpu")
    rm.clear_cache()


def test_reward_model_args_checked():
    with pytest.raises(ConfigError, match="args.model"):
        build_rewards([spec("reward_model")])
    with pytest.raises(ConfigError, match="batch_size"):
        build_rewards([spec("reward_model", args={"model": "x", "batch_size": 0})])
