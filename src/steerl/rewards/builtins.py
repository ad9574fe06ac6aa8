"""Built-in rewards: ``exact_match`` and ``format``."""

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
