"""Built-in text rewards: ``exact_match``, ``format``, ``length_penalty``, ``repetition_penalty``.

``math_answer``, ``code_exec`` and ``reward_model`` live in their own modules.
"""

from __future__ import annotations

import re
from typing import Any

from steerl.rewards.base import reward


def _normalise(text: Any, first_line: bool) -> str:
    s = str(text)
    if first_line:
        s = s.split("\n", 1)[0]
    return s.strip()


def _validate_exact_match(args: dict[str, Any]) -> dict[str, Any]:
    if "first_line" in args and not isinstance(args["first_line"], bool):
        raise ValueError(
            f"reward 'exact_match': arg first_line={args['first_line']!r} must be true or false"
        )
    return args


@reward("exact_match", validate_args=_validate_exact_match)
def exact_match(
    prompts: list[str],
    completions: list[str],
    answer: list[Any] | None = None,
    *,
    first_line: bool = True,
) -> list[float | None]:
    """1.0 if the completion (its first line, stripped) equals the stripped answer, else 0.0.

    ``answer`` is the dataset column; a missing column or a ``None`` answer leaves the sample
    unscored. ``first_line=false`` compares the whole completion.
    """
    if answer is None:
        return [None] * len(completions)
    out: list[float | None] = []
    for completion, ans in zip(completions, answer, strict=True):
        if ans is None:
            out.append(None)
        else:
            ok = _normalise(completion, first_line) == str(ans).strip()
            out.append(1.0 if ok else 0.0)
    return out


_MODES = ("fullmatch", "search")


def _validate_format(args: dict[str, Any]) -> dict[str, Any]:
    out = dict(args)
    pattern = args.get("pattern")
    tags = args.get("required_tags")
    if pattern is None and not tags:
        raise ValueError(
            "reward 'format' needs args.pattern (a regular expression) and/or "
            "args.required_tags (a list of strings that must appear in order); got neither"
        )
    if pattern is not None:
        if not isinstance(pattern, (str, re.Pattern)):
            raise ValueError(
                f"reward 'format': arg pattern={pattern!r} must be a string (a regular expression)"
            )
        try:
            out["pattern"] = re.compile(pattern, re.DOTALL) if isinstance(pattern, str) else pattern
        except re.error as e:
            raise ValueError(
                f"reward 'format': arg pattern={pattern!r} is not a valid regular expression ({e})"
            ) from None
    mode = args.get("mode", "fullmatch")
    if mode not in _MODES:
        raise ValueError(f"reward 'format': arg mode={mode!r} must be one of {', '.join(_MODES)}")
    if tags is not None and (
        not isinstance(tags, (list, tuple)) or not all(isinstance(t, str) and t for t in tags)
    ):
        raise ValueError(
            f"reward 'format': arg required_tags={tags!r} must be a list of non-empty strings"
        )
    if "strip" in args and not isinstance(args["strip"], bool):
        raise ValueError(f"reward 'format': arg strip={args['strip']!r} must be true or false")
    return out


def _tags_in_order(text: str, tags: list[str]) -> bool:
    pos = 0
    for tag in tags:
        i = text.find(tag, pos)
        if i < 0:
            return False
        pos = i + len(tag)
    return True


@reward("format", validate_args=_validate_format)
def format_reward(
    prompts: list[str],
    completions: list[str],
    *,
    pattern: str | re.Pattern[str] | None = None,
    mode: str = "fullmatch",
    required_tags: list[str] | None = None,
    strip: bool = True,
) -> list[float | None]:
    """1.0 if the completion matches a regex and/or contains tags in order, else 0.0.

    ``pattern`` is compiled with ``re.DOTALL`` and must ``fullmatch`` (default) or ``search``
    (``mode``) the completion (stripped unless ``strip=false``). ``required_tags`` (e.g.
    ``["<think>", "</think>", "<answer>", "</answer>"]``) must each appear, in this order,
    without overlapping.
    """
    checked = _validate_format(
        {"pattern": pattern, "mode": mode, "required_tags": required_tags, "strip": strip}
    )
    rx: re.Pattern[str] | None = checked["pattern"]
    out: list[float | None] = []
    for completion in completions:
        text = completion.strip() if strip else completion
        ok = True
        if rx is not None:
            m = rx.fullmatch(text) if mode == "fullmatch" else rx.search(text)
            ok = m is not None
        if ok and required_tags:
            ok = _tags_in_order(text, list(required_tags))
        out.append(1.0 if ok else 0.0)
    return out


# --------------------------------------------------------------------------- length / repetition
_UNITS = ("chars", "words")


def _length(text: str, unit: str) -> int:
    return len(text) if unit == "chars" else len(text.split())


def _number(args: dict[str, Any], key: str, name: str, *, minimum: float, integer: bool) -> None:
    if key not in args:
        return
    v = args[key]
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and v >= minimum
    if integer:
        ok = ok and float(v).is_integer()
    if not ok:
        kind = "an integer" if integer else "a number"
        raise ValueError(f"reward {name!r}: arg {key}={v!r} must be {kind} >= {minimum:g}")


def _validate_length(args: dict[str, Any]) -> dict[str, Any]:
    mode = args.get("mode", "linear")
    if mode not in ("linear", "overlong"):
        raise ValueError(
            f"reward 'length_penalty': arg mode={mode!r} must be one of linear, overlong"
        )
    unit = args.get("unit", "chars")
    if unit not in _UNITS:
        raise ValueError(
            f"reward 'length_penalty': arg unit={unit!r} must be one of {', '.join(_UNITS)}"
        )
    for key in ("target", "max_len", "buffer"):
        _number(args, key, "length_penalty", minimum=0, integer=True)
    _number(args, "coef", "length_penalty", minimum=0, integer=False)
    if mode == "overlong":
        if "max_len" not in args:
            raise ValueError(
                "reward 'length_penalty': mode=overlong needs args.max_len (the length at "
                "which the penalty reaches -1) and args.buffer (the soft zone before it)"
            )
        if args.get("buffer", 0) > args["max_len"]:
            raise ValueError(
                f"reward 'length_penalty': arg buffer={args['buffer']!r} must be <= "
                f"max_len={args['max_len']!r}"
            )
    return args


def overlong_penalty(length: int, max_len: int, buffer: int) -> float:
    """DAPO's soft overlong punishment (Yu et al. 2025, arXiv:2503.14476, eq. 13).

    0 up to ``max_len - buffer``, then linear down to -1 at ``max_len``, -1 beyond.
    """
    start = max_len - buffer
    if length <= start:
        return 0.0
    if length > max_len or buffer == 0:
        return -1.0
    return (start - length) / buffer


@reward(
    "length_penalty",
    "<= 0: linear penalty past a target length, or DAPO's soft overlong punishment",
    validate_args=_validate_length,
)
def length_penalty(
    prompts: list[str],
    completions: list[str],
    *,
    mode: str = "linear",
    unit: str = "chars",
    target: int = 0,
    coef: float = 0.01,
    max_len: int | None = None,
    buffer: int = 0,
) -> list[float | None]:
    """A penalty (<= 0) for long completions, measured in ``unit`` (chars or words).

    ``mode=linear``: ``-coef * max(0, length - target)``. ``mode=overlong`` (DAPO): 0 up to
    ``max_len - buffer``, linear down to -1 at ``max_len``, -1 beyond.
    """
    out: list[float | None] = []
    for completion in completions:
        n = _length(str(completion), unit)
        if mode == "overlong":
            if max_len is None:
                raise ValueError("length_penalty: mode=overlong needs max_len")
            out.append(overlong_penalty(n, int(max_len), int(buffer)))
        else:
            excess = max(0, n - int(target))
            out.append(-float(coef) * excess if excess else 0.0)
    return out


def repetition_rate(text: str, n: int = 3, unit: str = "words") -> float:
    """Share of the text's n-grams that repeat an earlier one (0: none, -> 1: a loop)."""
    seq: list[str] = list(text) if unit == "chars" else text.split()
    total = len(seq) - n + 1
    if total <= 1:
        return 0.0
    grams = [tuple(seq[i : i + n]) for i in range(total)]
    return 1.0 - len(set(grams)) / total


def _validate_repetition(args: dict[str, Any]) -> dict[str, Any]:
    _number(args, "n", "repetition_penalty", minimum=1, integer=True)
    unit = args.get("unit", "words")
    if unit not in _UNITS:
        raise ValueError(
            f"reward 'repetition_penalty': arg unit={unit!r} must be one of {', '.join(_UNITS)}"
        )
    output = args.get("output", "penalty")
    if output not in ("penalty", "score"):
        raise ValueError(
            f"reward 'repetition_penalty': arg output={output!r} must be one of penalty, score"
        )
    return args


@reward(
    "repetition_penalty",
    "in [-1, 0]: minus the share of repeated n-grams (output=score: 1 - share)",
    validate_args=_validate_repetition,
)
def repetition_penalty(
    prompts: list[str],
    completions: list[str],
    *,
    n: int = 3,
    unit: str = "words",
    output: str = "penalty",
) -> list[float | None]:
    """Minus the share of the completion's n-grams that repeat an earlier one.

    n-grams of ``unit`` (words: whitespace-split; chars). ``output=score`` returns
    ``1 - share`` in [0, 1] instead. A text shorter than ``n + 1`` units has no repetition.
    """
    rates = [repetition_rate(str(c), int(n), unit) for c in completions]
    if output == "score":
        return [1.0 - r for r in rates]
    return [0.0 - r for r in rates]
