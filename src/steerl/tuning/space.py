"""Search spaces: check them against the recipe, sample them with an Optuna trial.

``check_space(data, space)`` builds the recipe once per bound (``low``, ``high``) or choice
of every parameter, so an unknown key or a value the recipe would reject is an error before
the first trial, naming the key, the value and what is allowed. ``suggest(trial, space)``
asks the trial for each parameter whose ``when`` condition holds and returns the overrides.
"""

from __future__ import annotations

import copy
from typing import Any

from steerl.config import ConfigError, apply_overrides, build_config
from steerl.tuning.spec import ParamSpec


def _yaml_value(v: Any) -> str:
    import yaml

    return yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()


def as_overrides(values: dict[str, Any]) -> list[str]:
    """``{"optim.lr": 1e-4}`` -> ``["optim.lr=0.0001"]`` (values written as YAML)."""
    return [f"{k}={_yaml_value(v)}" for k, v in values.items()]


def check_space(data: dict[str, Any], space: dict[str, ParamSpec]) -> None:
    """Raise ConfigError unless every key exists and accepts each bound / choice."""
    for key, p in space.items():
        if key.split(".")[0] == "tune":
            raise ConfigError(f"tune.space.{key}: the tune section itself cannot be searched")
        probes = p.choices if p.type == "categorical" else [_cast(p, p.low), _cast(p, p.high)]
        for value in probes:
            trial = copy.deepcopy(data)
            try:
                apply_overrides(trial, as_overrides({key: value}))
                build_config(trial)
            except ConfigError as e:
                raise ConfigError(
                    f"tune.space.{key}: the recipe rejects {key}={value!r} "
                    f"(a {'choice' if p.type == 'categorical' else 'bound'} of the space):\n{e}"
                ) from None


def _cast(p: ParamSpec, v: float | None) -> Any:
    return int(v) if p.type == "int" and v is not None else v


def active(p: ParamSpec, chosen: dict[str, Any]) -> bool:
    """Whether a conditional parameter is sampled given the values chosen so far."""
    for key, want in p.when.items():
        allowed = want if isinstance(want, list) else [want]
        if key not in chosen or chosen[key] not in allowed:
            return False
    return True


def suggest(trial: Any, space: dict[str, ParamSpec]) -> dict[str, Any]:
    """Sample the space with an Optuna trial: {dotted key: value} of the active parameters."""
    chosen: dict[str, Any] = {}
    for key, p in space.items():
        if not active(p, chosen):
            continue
        if p.type == "categorical":
            chosen[key] = trial.suggest_categorical(key, p.choices)
        elif p.type == "int":
            chosen[key] = trial.suggest_int(
                key, int(p.low), int(p.high), step=int(p.step or 1), log=p.log
            )
        else:
            chosen[key] = trial.suggest_float(key, p.low, p.high, step=p.step, log=p.log)
    return chosen


def sample_random(space: dict[str, ParamSpec], rng: Any) -> dict[str, Any]:
    """One uniform (log-uniform) draw of the space with a ``random.Random`` (used by PBT)."""
    chosen: dict[str, Any] = {}
    for key, p in space.items():
        if not active(p, chosen):
            continue
        chosen[key] = draw(p, rng)
    return chosen


def draw(p: ParamSpec, rng: Any) -> Any:
    """One value of one parameter, uniform (log-uniform with ``log``)."""
    import math

    if p.type == "categorical":
        return rng.choice(p.choices)
    if p.log:
        v = math.exp(rng.uniform(math.log(p.low), math.log(p.high)))
    else:
        v = rng.uniform(p.low, p.high)
    return clip(p, v)


def clip(p: ParamSpec, v: float) -> Any:
    """Clamp to [low, high], snap to ``step`` and cast ints."""
    v = min(max(v, p.low), p.high)
    if p.step:
        v = p.low + round((v - p.low) / p.step) * p.step
        v = min(v, p.high)
    return int(round(v)) if p.type == "int" else float(v)
