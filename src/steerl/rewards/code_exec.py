"""``code_exec``: run the completion's Python against the sample's tests in the sandbox.

The program is the last fenced ```` ```python ```` block of the completion (or ```` ```py ````;
else the last untagged fenced block; else an unclosed block at the end; else the whole
text). The tests come from a dataset column (``tests`` by default, ``tests_field`` to
change it), one entry per sample:

- a string of Python: each top-level ``assert`` is one test; the other top-level statements
  (imports, helpers) run first as setup. A string without any ``assert`` is one test
  (e.g. ``check(candidate)``);
- a list of strings: each is one test.

Each sample runs in its own sandboxed interpreter (:mod:`steerl.rewards.sandbox`): the
solution is executed as module ``solution``, then each test in the solution's namespace; a
test passes when it raises nothing. The tests reach the child on standard input (not as a
file it could read), results come back on lines tagged with a random nonce it never sees,
so printing "passed" or exiting early passes nothing. It still runs in one process with the
tests, so it can tamper with them (e.g. return an object whose ``__eq__`` is always true);
pair it with a format or reward-model check if the policy learns such tricks.
"""

from __future__ import annotations

import ast
import json
import os
import re
import secrets
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from steerl.rewards.base import RewardOutput, reward
from steerl.rewards.sandbox import SandboxResult, run_python

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)```", re.DOTALL)
_OPEN_FENCE = re.compile(r"```[ \t]*(?:python3?|py)[ \t]*\n(.*)\Z", re.DOTALL | re.IGNORECASE)
_PYTHON_TAGS = ("python", "python3", "py")


def extract_code(text: str) -> str:
    """The program in a completion; see the module docstring for the rules."""
    blocks = [(m.group(1).lower(), m.group(2)) for m in _FENCE.finditer(text)]
    tagged = [code for tag, code in blocks if tag in _PYTHON_TAGS]
    if tagged:
        return tagged[-1]
    untagged = [code for tag, code in blocks if not tag]
    if untagged:
        return untagged[-1]
    # a truncated completion: an opening ```python without its closing fence
    last = text.rfind("```")
    if last >= 0:
        m = _OPEN_FENCE.match(text, last)
        if m:
            return m.group(1)
    return text


def split_tests(tests: Any) -> tuple[str, list[str]] | None:
    """(setup, tests) from a string of asserts or a list of test strings; None if empty."""
    if tests is None:
        return None
    if isinstance(tests, (list, tuple)):
        items = [str(t) for t in tests if t is not None and str(t).strip()]
        return ("", items) if items else None
    src = str(tests)
    if not src.strip():
        return None
    try:
        tree = ast.parse(src)
    except SyntaxError:
        return "", [src]
    setup: list[str] = []
    asserts: list[str] = []
    for node in tree.body:
        seg = ast.get_source_segment(src, node) or ""
        (asserts if isinstance(node, ast.Assert) else setup).append(seg)
    if not asserts:
        return "", [src]
    return "\n".join(setup), asserts


# Runs in the sandbox as main.py; the solution is solution.py, the tests come on stdin.
_HARNESS = r"""
import json, os, sys, traceback


def _run():
    spec = json.loads(sys.stdin.readline())
    sys.stdin = open(os.devnull)
    out = os.dup(1)
    tag = spec.pop("nonce")

    def emit(text):
        os.write(out, ("%s %s\n" % (tag, text)).encode())

    with open("solution.py", encoding="utf-8") as f:
        src = f.read()
    g = {"__name__": "solution", "__file__": "solution.py", "__builtins__": __builtins__}
    try:
        exec(compile(src, "solution.py", "exec"), g)
        if spec["setup"]:
            exec(compile(spec["setup"], "setup.py", "exec"), g)
    except BaseException:
        traceback.print_exc()
        emit("load 0")
        return
    emit("load 1")
    for i, test in enumerate(spec["tests"]):
        try:
            exec(compile(test, "test_%d.py" % i, "exec"), g)
            ok = 1
        except BaseException:
            traceback.print_exc(limit=-2)
            ok = 0
        emit("test %d %d" % (i, ok))


_run()
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)
"""


def run_tests(
    code: str,
    setup: str,
    tests: list[str],
    *,
    time_limit: float = 2.0,
    memory_mb: int = 512,
    site_packages: bool = False,
) -> tuple[int, SandboxResult]:
    """Run ``tests`` against ``code`` in the sandbox: (number passed, sandbox result)."""
    nonce = secrets.token_hex(16)
    spec = json.dumps({"nonce": nonce, "setup": setup, "tests": tests})
    res = run_python(
        _HARNESS,
        stdin=spec + "\n",
        files={"solution.py": code},
        timeout=time_limit,
        memory_mb=memory_mb,
        site_packages=site_packages,
    )
    passed: set[int] = set()
    for line in res.stdout.splitlines():
        parts = line.split()
        if not parts or parts[0] != nonce:
            continue
        if parts[1:] == ["load", "0"] and res.status == "ok":
            res.status = "error"  # the solution (or the tests' setup) raised
        if len(parts) == 4 and parts[1] == "test" and parts[3] == "1" and parts[2].isdigit():
            if int(parts[2]) < len(tests):
                passed.add(int(parts[2]))
    return len(passed), res


_ARGS = ("tests_field", "mode", "time_limit", "memory_mb", "workers", "site_packages")


def _validate(args: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(args) - set(_ARGS))
    if unknown:
        raise ValueError(
            f"reward 'code_exec' has no argument {unknown[0]!r}. Accepted args: {', '.join(_ARGS)}."
        )
    mode = args.get("mode", "fraction")
    if mode not in ("fraction", "all"):
        raise ValueError(f"reward 'code_exec': arg mode={mode!r} must be one of fraction, all")
    for key, lo in (("time_limit", 0.0), ("memory_mb", 32), ("workers", 1)):
        if key in args:
            v = args[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= lo:
                raise ValueError(f"reward 'code_exec': arg {key}={v!r} must be a number > {lo:g}")
    if not isinstance(args.get("site_packages", False), bool):
        raise ValueError(
            f"reward 'code_exec': arg site_packages={args['site_packages']!r} must be true or false"
        )
    field = args.get("tests_field", "tests")
    if not isinstance(field, str) or not field:
        raise ValueError(f"reward 'code_exec': arg tests_field={field!r} must be a column name")
    return args


@reward(
    "code_exec",
    "share of the sample's tests the completion's Python passes, run in the sandbox",
    validate_args=_validate,
)
def code_exec(
    prompts: list[str],
    completions: list[str],
    *,
    tests_field: str = "tests",
    mode: str = "fraction",
    time_limit: float = 2.0,
    memory_mb: int = 512,
    workers: int | None = None,
    site_packages: bool = False,
    **fields: Any,
) -> RewardOutput:
    """Run the completion's code against the tests in column ``tests_field`` (sandboxed).

    Score: the fraction of tests passed (``mode=fraction``) or 1.0 only if all pass
    (``mode=all``); a sample without tests is unscored. ``time_limit`` (wall seconds) and
    ``memory_mb`` bound each sample's run; ``workers`` sandboxes run at once (default: CPU
    count); ``site_packages=true`` lets the code import the installed packages (numpy, ...).
    Metrics: ``timeout``, ``memory``, ``error`` (share of runs in each state),
    ``all_passed``.
    """
    column = fields.get(tests_field)
    n = len(completions)
    if column is None:
        raise KeyError(
            f"code_exec needs the tests in a column named {tests_field!r} (set args.tests_field);"
            f" columns given: {', '.join(sorted(k for k in fields if k != 'step')) or 'none'}"
        )
    jobs: dict[tuple[str, str, tuple[str, ...]], list[int]] = {}
    for i, (completion, tests) in enumerate(zip(completions, column, strict=True)):
        split = split_tests(tests)
        if split is None:
            continue
        setup, items = split
        jobs.setdefault((extract_code(str(completion)), setup, tuple(items)), []).append(i)

    def one(key: tuple[str, str, tuple[str, ...]]) -> tuple[int, SandboxResult]:
        code, setup, items = key
        return run_tests(
            code,
            setup,
            list(items),
            time_limit=time_limit,
            memory_mb=memory_mb,
            site_packages=site_packages,
        )

    scores: list[float | None] = [None] * n
    counts = {"timeout": 0, "memory": 0, "error": 0, "all_passed": 0}
    keys = list(jobs)
    if keys:
        pool = max(1, min(len(keys), int(workers or os.cpu_count() or 1)))
        with ThreadPoolExecutor(pool, thread_name_prefix="steerl-code-exec") as ex:
            results = list(ex.map(one, keys))
        for key, (passed, res) in zip(keys, results):
            total = len(key[2])
            frac = passed / total
            score = frac if mode == "fraction" else float(passed == total)
            for i in jobs[key]:
                scores[i] = score
                if res.status in counts:
                    counts[res.status] += 1
                counts["all_passed"] += passed == total
    ran = sum(len(v) for v in jobs.values())
    metrics = {k: (v / ran if ran else 0.0) for k, v in counts.items()}
    return RewardOutput(scores, metrics)
