from __future__ import annotations

import json
import random
import re

import pytest

from steerl.config import ArithmeticTaskConfig, ConfigError, FieldNames, FlawConfig, TaskConfig
from steerl.tasks import ArithmeticTask, FileTask, build_task
from steerl.tasks.arithmetic import add_without_carry, format_problem

PROMPT_RE = re.compile(r"(\d+)\+(\d+)=")


def _parse(text: str) -> tuple[int, int]:
    """Operands of a reversed-digit prompt ``"74+58="`` -> (47, 85)."""
    m = PROMPT_RE.fullmatch(text)
    assert m, text
    return int(m.group(1)[::-1]), int(m.group(2)[::-1])


def _task(levels=(1, 2, 3), train=50, evals=10, seed=0, flaw=None, pad=True) -> ArithmeticTask:
    cfg = ArithmeticTaskConfig(
        levels=list(levels), train_per_level=train, eval_per_level=evals, pad=pad
    )
    return ArithmeticTask(cfg, seed=seed, flaw=flaw)


def _has_carry(a: int, b: int) -> bool:
    return add_without_carry(a, b) != a + b


# --------------------------------------------------------------------------- arithmetic
def test_format_problem_reverses_digits():
    assert format_problem(47, 85) == ("74+58=", "231")
    assert format_problem(5, 3, width=2) == ("50+30=", "8")
    assert add_without_carry(47, 85) == 22  # 4+8 -> 2, 7+5 -> 2, carries dropped


@pytest.mark.parametrize("pad", [True, False])
def test_prompts_are_reversed_addition_with_correct_answers(pad):
    task = _task(pad=pad)
    for p in task.train + task.eval:
        a, b = _parse(p.text)
        assert (a, b) == (p.meta["a"], p.meta["b"])
        assert p.answer == str(a + b)[::-1]
        assert int(p.answer[::-1]) == a + b
        if p.level == 1:
            assert (a < 100 and b < 10) or (b < 100 and a < 10)
        else:
            lo, hi = 10 ** (p.level - 1), 10**p.level
            assert lo <= a < hi and lo <= b < hi
        if pad:
            width = 2 if p.level == 1 else p.level
            assert len(PROMPT_RE.fullmatch(p.text).group(1)) == width


def test_levels_present_and_counts():
    task = _task(levels=(3, 1, 2), train=50, evals=10)
    assert task.levels() == [1, 2, 3]
    for level in (1, 2, 3):
        tr = [p for p in task.train if p.level == level]
        ev = [p for p in task.eval if p.level == level]
        assert len(tr) == 50 and len(ev) == 10
        assert all(p.category == f"level_{level}" and p.difficulty == level for p in tr + ev)


def test_train_and_eval_disjoint_and_unique():
    task = _task(train=200, evals=40)
    train, evals = {p.text for p in task.train}, {p.text for p in task.eval}
    assert not train & evals
    assert len(train) == len(task.train) and len(evals) == len(task.eval)


def test_level_one_supports_200_eval_prompts():
    task = _task(levels=(1,), train=4000, evals=200)
    assert len(task.eval) == 200
    assert len(task.train) == 1900 - 200  # every remaining distinct level-1 problem
    assert not {p.text for p in task.train} & {p.text for p in task.eval}


def test_too_many_eval_prompts_is_an_error():
    with pytest.raises(ValueError, match="eval_per_level"):
        _task(levels=(1,), train=10, evals=1000)


def test_task_is_deterministic_in_its_seed():
    a, b, c = _task(seed=5), _task(seed=5), _task(seed=6)
    assert [p.text for p in a.train] == [p.text for p in b.train]
    assert [p.text for p in a.eval] != [p.text for p in c.eval]


def test_flawed_demonstrations_drop_carries_at_the_configured_fraction():
    flaw = FlawConfig(level=2, fraction=0.6)
    task = _task(levels=(1, 2, 3), train=300, evals=10, flaw=flaw)
    rng = random.Random(0)
    carry = [p for p in task.train if p.level == 2 and _has_carry(p.meta["a"], p.meta["b"])]
    assert len(carry) > 50
    flawed = exact = 0
    for _ in range(8):
        for p in carry:
            demo = task.demonstration(p, rng)
            if demo == p.answer:
                exact += 1
            else:
                assert demo == str(add_without_carry(p.meta["a"], p.meta["b"]))[::-1]
                flawed += 1
    frac = flawed / (flawed + exact)
    assert abs(frac - 0.6) < 0.04, frac
    # other levels are always exact
    for p in task.train:
        if p.level != 2:
            assert task.demonstration(p, rng) == p.answer


@pytest.mark.parametrize("flaw", [None, FlawConfig(level=None), FlawConfig(level=2, fraction=0)])
def test_no_flaw_means_exact_demonstrations(flaw):
    task = _task(levels=(2,), train=100, evals=10, flaw=flaw)
    rng = random.Random(0)
    assert all(task.demonstration(p, rng) == p.answer for p in task.train)


def test_build_task_uses_config(tiny_config):
    cfg = tiny_config()
    task = build_task(cfg)
    assert isinstance(task, ArithmeticTask)
    assert len(task.eval) == 10 * len(cfg.task.arithmetic.levels)
    assert task.flaw == cfg.warmup.flaw


# --------------------------------------------------------------------------- files
CUSTOM = FieldNames(prompt="q", answer="sol", difficulty="hard", category="topic", id="uid")


def _rows(n: int) -> list[dict]:
    return [
        {
            "q": f"question {i}",
            "sol": str(i * 2),
            "hard": i % 3,
            "topic": "even" if i % 2 == 0 else "odd",
            "uid": f"u{i}",
            "source": "unit-test",
        }
        for i in range(n)
    ]


def _write_jsonl(path, rows) -> str:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


def _check_prompts(prompts, rows_by_text):
    for p in prompts:
        r = rows_by_text[p.text]
        assert p.answer == r["sol"] and p.difficulty == float(r["hard"])
        assert p.category == r["topic"] and p.id == r["uid"]
        assert p.meta == {"source": "unit-test"}


def test_file_task_jsonl_custom_fields_with_eval_path(tmp_path):
    rows = _rows(12)
    path = _write_jsonl(tmp_path / "train.jsonl", rows[:9])
    eval_path = _write_jsonl(tmp_path / "eval.jsonl", rows[9:])
    cfg = TaskConfig(kind="file", path=path, eval_path=eval_path, fields=CUSTOM)
    task = FileTask(cfg)
    by_text = {r["q"]: r for r in rows}
    assert [p.text for p in task.train] == [r["q"] for r in rows[:9]]
    assert [p.text for p in task.eval] == [r["q"] for r in rows[9:]]
    _check_prompts(task.train + task.eval, by_text)
    assert task.levels() == [0, 1, 2]


def test_build_task_file_kind(tmp_path, tiny_config):
    path = _write_jsonl(tmp_path / "d.jsonl", [{"prompt": f"p{i}", "answer": i} for i in range(5)])
    task = build_task(tiny_config("task.kind=file", f"task.path={path}"))
    assert isinstance(task, FileTask) and len(task.eval) == 1 and len(task.train) == 4


def test_file_task_split_is_disjoint_and_seeded(tmp_path):
    rows = _rows(40)
    path = _write_jsonl(tmp_path / "data.jsonl", rows)
    cfg = TaskConfig(kind="file", path=path, fields=CUSTOM, eval_fraction=0.25, seed=3)
    a, b = FileTask(cfg), FileTask(cfg)
    assert len(a.eval) == 10 and len(a.train) == 30
    assert not {p.text for p in a.train} & {p.text for p in a.eval}
    assert [p.id for p in a.eval] == [p.id for p in b.eval]
    other = FileTask(cfg.model_copy(update={"seed": 4}))
    assert {p.id for p in other.eval} != {p.id for p in a.eval}


def test_file_task_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rows = _rows(10)
    path = tmp_path / "data.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    cfg = TaskConfig(kind="file", path=str(path), fields=CUSTOM, eval_fraction=0.2)
    task = FileTask(cfg)
    assert len(task.train) + len(task.eval) == 10 and len(task.eval) == 2
    _check_prompts(task.train + task.eval, {r["q"]: r for r in rows})


def test_file_task_default_field_names_and_optional_columns(tmp_path):
    path = _write_jsonl(tmp_path / "d.jsonl", [{"prompt": f"p{i}", "answer": i} for i in range(5)])
    task = FileTask(TaskConfig(kind="file", path=path, eval_fraction=0.2))
    p = task.train[0]
    assert p.difficulty == 0.0 and p.category == "default" and p.id.startswith("d-")
    assert p.answer == p.text[1:]  # numbers become strings


def test_non_numeric_difficulty_names_the_row(tmp_path):
    rows = _rows(4)
    rows[2]["hard"] = "very"
    path = _write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(ConfigError) as e:
        FileTask(TaskConfig(kind="file", path=path, fields=CUSTOM))
    msg = str(e.value)
    assert "row 3" in msg and "'very'" in msg and "task.fields.difficulty" in msg


def test_missing_prompt_field(tmp_path):
    rows = _rows(4)
    del rows[1]["q"]
    path = _write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(ConfigError) as e:
        FileTask(TaskConfig(kind="file", path=path, fields=CUSTOM))
    msg = str(e.value)
    assert "row 2" in msg and "'q'" in msg and "task.fields.prompt" in msg


def test_missing_file_and_bad_suffix(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        FileTask(TaskConfig(kind="file", path=str(tmp_path / "nope.jsonl")))
    csv = tmp_path / "d.csv"
    csv.write_text("prompt,answer\n")
    with pytest.raises(ConfigError, match=r"\.jsonl or \.parquet"):
        FileTask(TaskConfig(kind="file", path=str(csv)))


def test_bad_json_line_names_the_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "a"}\n{not json\n')
    with pytest.raises(ConfigError, match=r"d\.jsonl:2"):
        FileTask(TaskConfig(kind="file", path=str(path)))


def test_train_counts_skew_the_pool_and_keep_the_held_out_prompts():
    from steerl.config import ConfigError, load_config
    from steerl.tasks.arithmetic import ArithmeticTask

    base = load_config("default", ["task.arithmetic.train_per_level=300"]).task.arithmetic
    skew = load_config(
        "default", ["task.arithmetic.train_per_level=300", "task.arithmetic.train_counts={3: 20}"]
    ).task.arithmetic
    a, b = ArithmeticTask(base, seed=0), ArithmeticTask(skew, seed=0)
    count = {lv: sum(p.level == lv for p in b.train) for lv in (1, 2, 3)}
    assert count == {1: 300, 2: 300, 3: 20}
    assert [p.id for p in a.eval] == [p.id for p in b.eval]  # same held-out prompts
    with pytest.raises(ConfigError, match="train_counts"):
        load_config("default", ["task.arithmetic.train_counts={4: 10}"])
