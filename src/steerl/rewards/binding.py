"""Binding a recipe's reward spec to its function: resolve the name, check the arguments.

:func:`bind_reward` turns one ``rewards`` entry into a :class:`BoundReward` (the function, its
label, weight, bound keyword args and call limits), raising a ``ConfigError`` that names the
entry for an unknown reward, a function that cannot take ``(prompts, completions,
**fields)``, a reserved or unknown argument, or arguments its ``validate_args`` rejects.
:class:`~steerl.rewards.combine.RewardSet` runs the bound rewards.
"""

from __future__ import annotations

import enum
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from steerl.config import ConfigError, RewardSpec
from steerl.registry import RegistryError
from steerl.rewards.base import REWARDS

#: Passed by the trainer to every reward: not allowed in a recipe's ``args``.
_RESERVED = ("prompts", "completions", "step")


class _Inherit(enum.Enum):
    INHERIT = "inherit"


#: ``BoundReward.max_failed_steps`` default: use the :class:`RewardSet`'s value.
INHERIT = _Inherit.INHERIT


@dataclass
class BoundReward:
    """A reward function with its label, weight, bound keyword args and call limits.

    ``timeout``: seconds per call (None: no limit). ``max_failed_steps``: all-unscored calls
    in a row before :class:`RewardFailure` (None: never; ``INHERIT``: the set's value).
    """

    label: str
    fn: Callable[..., Any]
    weight: float = 1.0
    args: dict[str, Any] = field(default_factory=dict)
    name: str | None = None  # as written in the recipe (default: label)
    timeout: float | None = None
    max_failed_steps: int | None | _Inherit = INHERIT
    accepts: frozenset[str] | None = field(init=False, default=None)  # None: any (**kwargs)

    def __post_init__(self) -> None:
        self.name = self.name or self.label
        self.accepts = _keyword_names(self.fn)
        if self.timeout is not None and not self.timeout > 0:
            raise ValueError(f"reward {self.label!r}: timeout must be > 0, got {self.timeout}")
        m = self.max_failed_steps
        if m is not INHERIT and m is not None and m < 1:
            raise ValueError(f"reward {self.label!r}: max_failed_steps must be >= 1, got {m}")

    def kwargs(self, fields: Mapping[str, list[Any]], step: int) -> dict[str, Any]:
        """The keywords of one call: the fields it accepts, ``step``, then the bound args."""
        given: dict[str, Any] = {k: list(v) for k, v in fields.items()}
        given["step"] = step
        if self.accepts is not None:
            given = {k: v for k, v in given.items() if k in self.accepts}
        given.update(self.args)
        return given


def _keyword_names(fn: Callable[..., Any]) -> frozenset[str] | None:
    """Keyword names ``fn`` accepts after (prompts, completions); None if it takes **kwargs."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    rest = positional[2:] + [p for p in params if p.kind is p.KEYWORD_ONLY]
    return frozenset(p.name for p in rest if p.kind is not p.POSITIONAL_ONLY)


def _check_signature(fn: Callable[..., Any], args: Mapping[str, Any], where: str) -> None:
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return  # not introspectable (some C callables): trust it
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) < 2 and not any(p.kind is p.VAR_POSITIONAL for p in params):
        raise ConfigError(
            f"{where}: the function must accept (prompts, completions, **fields), but its "
            f"signature is {inspect.signature(fn)}. See steerl.rewards.base for the protocol."
        )
    first_two = {p.name for p in positional[:2]}
    accepts = _keyword_names(fn)
    shown = ", ".join(sorted((accepts or set()) - {"step"})) or "none"
    for arg in args:
        if arg in _RESERVED or arg in first_two:
            raise ConfigError(
                f"{where}: arg {arg!r} is reserved (it is passed by the trainer); "
                f"remove it from args. Accepted args: {shown}."
            )
        if accepts is not None and arg not in accepts:
            raise ConfigError(
                f"{where}: the reward has no argument {arg!r} (args given: "
                f"{', '.join(args)}). Accepted args: {shown}."
            )


def bind_reward(spec: RewardSpec, index: int | None = None) -> BoundReward:
    """Resolve ``spec.name``, check and bind ``spec.args``; raises ConfigError.

    ``spec.timeout`` is bound; ``spec.max_failed_steps`` only when the recipe sets it (else
    the :class:`RewardSet`'s value applies).
    """
    loc = f"rewards.{index}" if index is not None else "rewards"
    where = f"{loc}: reward {spec.name!r}"
    try:
        fn = REWARDS.get(spec.name)
    except RegistryError as e:
        raise ConfigError(f"{loc}: {e}") from None
    if not callable(fn):
        raise ConfigError(
            f"{where} resolved to a {type(fn).__name__}, not a function; a reward is "
            "fn(prompts, completions, **fields) -> list[float | None]."
        )
    args = dict(spec.args)
    _check_signature(fn, args, where)
    validate = getattr(fn, "validate_args", None)
    if callable(validate):
        try:
            checked = validate(dict(args))
        except Exception as e:  # noqa: BLE001 - a user validator may raise anything
            msg = str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"
            prefix = loc if spec.name in msg else where
            raise ConfigError(f"{prefix}: {msg}") from None
        if checked is not None:
            args = dict(checked)
    own_limit = "max_failed_steps" in spec.model_fields_set
    return BoundReward(
        label=spec.label,
        fn=fn,
        weight=float(spec.weight),
        args=args,
        name=spec.name,
        timeout=spec.timeout,
        max_failed_steps=spec.max_failed_steps if own_limit else INHERIT,
    )
