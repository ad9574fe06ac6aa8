"""``math_answer``: answer equivalence through Hugging Face's ``math-verify``.

The completion's answer is extracted by ``math_verify.parse`` (``\\boxed{}`` first, then
LaTeX in math mode, then the last plain number or expression) and compared with the gold
answer by ``math_verify.verify`` (numeric, symbolic, set and interval equality), so ``1/2``,
``0.5``, ``\\frac{2}{4}`` and ``\\boxed{\\tfrac12}`` all match a gold ``1/2``.

math-verify bounds each parse/verify with ``signal.alarm``, which only works in the main
thread. steerl uses it there (``parse_timeout`` seconds) and switches it off in any other
thread (e.g. when the reward runs under ``RewardSpec.timeout``, whose own deadline applies).
"""

from __future__ import annotations

import contextlib
import re
import threading
from typing import Any

from steerl.rewards.base import RewardOutput, reward

_NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?")


def _math_verify() -> Any:
    try:
        import math_verify
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise ImportError(
            "reward 'math_answer' needs the math-verify package: pip install 'math-verify>=0.7'"
        ) from e
    # steerl enforces its own timeouts off the main thread; silence the one-time warning
    # math-verify logs when its signal-based timeout is switched off.
    for mod in ("parser", "grader"):
        with contextlib.suppress(AttributeError, ImportError):
            getattr(math_verify, mod).TIMEOUT_WARNING_SHOWN = True
    return math_verify


def gold_text(answer: Any) -> str | None:
    """The gold answer as text: the part after GSM8K's last ``####``, commas out of numbers."""
    if answer is None:
        return None
    s = str(answer)
    if "####" in s:
        s = s.rsplit("####", 1)[1]
    s = s.strip().rstrip(".").strip()
    if _NUMBER.fullmatch(s):
        s = s.replace(",", "")
    return s or None


def _parse_gold(mv: Any, gold: str, timeout: int | None) -> list[Any]:
    """Parsed gold answer ([] if it has no mathematical reading): LaTeX first if it looks so."""
    latex = "\\" in gold or "{" in gold or "^" in gold
    for text in [f"${gold}$", gold] if latex else [gold, f"${gold}$"]:
        parsed = mv.parse(text, fallback_mode="no_fallback", parsing_timeout=timeout)
        if parsed:
            return parsed
    return []


def _validate(args: dict[str, Any]) -> dict[str, Any]:
    t = args.get("parse_timeout", 5)
    if t is not None and (isinstance(t, bool) or not isinstance(t, int) or t < 1):
        raise ValueError(
            f"reward 'math_answer': arg parse_timeout={t!r} must be a whole number of seconds "
            ">= 1, or null (no math-verify timeout)"
        )
    try:
        _math_verify()
    except ImportError as e:
        raise ValueError(str(e)) from None
    return args


@reward(
    "math_answer",
    "1/0: the completion's final answer (\\boxed{} first) equals the gold answer (math-verify)",
    validate_args=_validate,
)
def math_answer(
    prompts: list[str],
    completions: list[str],
    answer: list[Any] | None = None,
    *,
    parse_timeout: int | None = 5,
) -> RewardOutput:
    """1.0 if the completion's answer is mathematically equal to ``answer``, else 0.0.

    ``answer`` (the dataset column) may be plain (``42``, ``1/2``, ``\\frac{1}{2}``) or a
    GSM8K solution ending in ``#### 42``. A missing or unparsable gold answer leaves the
    sample unscored (``None``). Metrics: ``no_answer`` (share of completions with nothing
    to extract), ``bad_gold`` (share of unparsable gold answers).
    """
    mv = _math_verify()
    timeout = parse_timeout if threading.current_thread() is threading.main_thread() else None
    pred_cfg = [
        mv.LatexExtractionConfig(boxed_match_priority=0),
        mv.ExprExtractionConfig(),
    ]
    n = len(completions)
    if answer is None:
        return RewardOutput([None] * n, {"no_answer": 0.0, "bad_gold": 1.0 if n else 0.0})

    golds: dict[str, list[Any]] = {}
    preds: dict[str, list[Any]] = {}
    scores: list[float | None] = []
    no_answer = bad_gold = 0
    for completion, ans in zip(completions, answer, strict=True):
        g = gold_text(ans)
        if g is None:
            scores.append(None)
            bad_gold += 1
            continue
        if g not in golds:
            golds[g] = _parse_gold(mv, g, timeout)
        gold = golds[g]
        if not gold:
            scores.append(None)
            bad_gold += 1
            continue
        text = str(completion)
        if text not in preds:
            preds[text] = mv.parse(text, extraction_config=pred_cfg, parsing_timeout=timeout)
        pred = preds[text]
        if not pred:
            no_answer += 1
            scores.append(0.0)
            continue
        ok = mv.verify(gold, pred, timeout_seconds=timeout)
        scores.append(1.0 if ok else 0.0)
    metrics = {"no_answer": no_answer / n if n else 0.0, "bad_gold": bad_gold / n if n else 0.0}
    return RewardOutput(scores, metrics)
