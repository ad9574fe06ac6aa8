"""Run the rewards in isolation and collect their scores.

``build_rewards(specs)`` binds the recipe's ``rewards`` list (:mod:`steerl.rewards.binding`:
names resolved, arguments checked) into a :class:`RewardSet`; its
``score(prompts, completions, fields, step)`` returns a :class:`RewardResult` with one column
per reward (NaN: unscored). A failing reward never stops training by itself: an exception, a
malformed return value, a NaN/inf/non-numeric score or a call slower than the reward's
``timeout`` only leaves samples unscored (with a warning on the ``steerl.rewards`` logger, once
per step). Only a reward that scores no sample for its ``max_failed_steps`` consecutive calls
raises :class:`RewardFailure`.

Timeouts: a reward with ``timeout`` set runs in a fresh daemon thread; past the deadline its
samples are unscored, the call is counted as failed (``reward/<label>/timed_out`` is 1) and the
thread is abandoned. Python cannot stop a thread, so a CPU-bound reward keeps running (and
holding the GIL between bytecodes) in the background until it returns on its own; for hard
isolation run the work in a subprocess, as ``code_exec`` does with
:mod:`steerl.rewards.sandbox`.
"""

from __future__ import annotations

import logging
import math
import numbers
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from steerl.config import ConfigError, RewardSpec
from steerl.rewards.base import RewardOutput
from steerl.rewards.binding import INHERIT, BoundReward, bind_reward

logger = logging.getLogger("steerl.rewards")


class RewardFailure(RuntimeError):
    """A reward scored no sample for ``max_failed_steps`` consecutive calls."""

    def __init__(self, message: str, label: str, steps: int, last_error: str):
        super().__init__(message)
        self.label = label
        self.steps = steps
        self.last_error = last_error


@dataclass
class RewardResult:
    """Scores of N samples by K rewards.

    ``scores``: float32 [N, K], NaN where a reward could not score a sample; ``names``: the K
    labels; ``weights``: float32 [K]; ``metrics``: ``reward/<label>/{mean,std,unscored}`` and
    the rewards' own metrics as ``reward/<label>/<metric>``.
    """

    scores: torch.Tensor
    names: list[str]
    weights: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)


def build_rewards(specs: Sequence[RewardSpec], max_failed_steps: int | None = 3) -> RewardSet:
    """Build the rewards of a recipe; every resolution problem is a ConfigError.

    ``max_failed_steps`` applies to the specs that do not set their own.
    """
    bound = [bind_reward(spec, i) for i, spec in enumerate(specs)]
    labels = [b.label for b in bound]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise ConfigError(f"reward names must be unique, {dup} repeat (set alias)")
    return RewardSet(bound, max_failed_steps=max_failed_steps)


# --------------------------------------------------------------------------- scoring
def _as_list(raw: Any) -> list[Any] | None:
    if isinstance(raw, (list, tuple)):
        return list(raw)
    if isinstance(raw, (torch.Tensor, np.ndarray)) and raw.ndim == 1:
        return raw.tolist()
    return None


def _as_float(x: Any) -> tuple[float, bool]:
    """(value, valid); NaN for unscored. ``valid`` is False for inf / non-numeric values."""
    if x is None:
        return math.nan, True
    if isinstance(x, torch.Tensor):
        if x.numel() != 1:
            return math.nan, False
        x = x.item()
    elif isinstance(x, (np.ndarray, np.generic)):
        if x.size != 1:
            return math.nan, False
        x = x.item()
    if isinstance(x, (bool, numbers.Real)):
        f = float(x)
        if math.isnan(f):
            return math.nan, True
        return (f, True) if math.isfinite(f) else (math.nan, False)
    return math.nan, False


def _column_metrics(values: list[float], n: int) -> dict[str, float]:
    scored = [v for v in values if not math.isnan(v)]
    if scored:
        mean = math.fsum(scored) / len(scored)
        std = math.sqrt(math.fsum((v - mean) ** 2 for v in scored) / len(scored))
    else:
        mean = std = math.nan
    unscored = (n - len(scored)) / n if n else 0.0
    return {"mean": mean, "std": std, "unscored": unscored}


class RewardSet:
    """Runs K rewards on a batch, isolating their failures; see the module docstring.

    ``max_failed_steps`` is the default for rewards whose own value is ``INHERIT``.
    """

    def __init__(self, rewards: Sequence[BoundReward], max_failed_steps: int | None = 3):
        if max_failed_steps is not None and max_failed_steps < 1:
            raise ValueError(f"max_failed_steps must be >= 1 or None, got {max_failed_steps}")
        self.rewards = list(rewards)
        labels = [r.label for r in self.rewards]
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:
            raise ValueError(f"reward labels must be unique, {dup} repeat")
        self.max_failed_steps = max_failed_steps
        self._failed: dict[str, int] = {r.label: 0 for r in self.rewards}
        self._failed_since: dict[str, int] = {}
        self._last_error: dict[str, str] = {}
        self._warned_step: dict[str, int] = {}
        self._traced: set[str] = set()
        self._background: dict[str, list[threading.Thread]] = {r.label: [] for r in self.rewards}

    def limit(self, r: BoundReward) -> int | None:
        """The consecutive all-unscored calls after which ``r`` stops the run (None: never)."""
        if r.max_failed_steps is INHERIT:
            return self.max_failed_steps
        return r.max_failed_steps  # type: ignore[return-value]

    @property
    def names(self) -> list[str]:
        return [r.label for r in self.rewards]

    @property
    def weights(self) -> torch.Tensor:
        return torch.tensor([r.weight for r in self.rewards], dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.rewards)

    def _warn(self, label: str, step: int, msg: str, exc: BaseException | None = None) -> None:
        if self._warned_step.get(label) == step:
            logger.debug("reward %r at step %d: %s", label, step, msg)
            return
        self._warned_step[label] = step
        trace = exc is not None and label not in self._traced
        if trace:
            self._traced.add(label)
        logger.warning(
            "reward %r at step %d: %s", label, step, msg, exc_info=exc if trace else None
        )

    def _call(
        self,
        r: BoundReward,
        prompts: list[str],
        completions: list[str],
        fields: Mapping[str, list[Any]],
        step: int,
    ) -> tuple[bool, Any]:
        """(finished in time, return value); the reward's own exception propagates."""
        kwargs = r.kwargs(fields, step)
        if r.timeout is None:
            return True, r.fn(list(prompts), list(completions), **kwargs)
        fut: Future[Any] = Future()
        p, c = list(prompts), list(completions)

        def target() -> None:
            if not fut.set_running_or_notify_cancel():
                return
            try:
                fut.set_result(r.fn(p, c, **kwargs))
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                fut.set_exception(e)

        # A daemon thread (not an executor's): an abandoned call must not block exit.
        thread = threading.Thread(target=target, name=f"steerl-reward-{r.label}", daemon=True)
        thread.start()
        done, _ = wait_futures([fut], timeout=r.timeout)
        alive = [t for t in self._background[r.label] if t.is_alive()]
        if not done:
            alive.append(thread)
            self._background[r.label] = alive
            return False, None
        self._background[r.label] = alive
        return True, fut.result()

    def _run_one(
        self,
        r: BoundReward,
        prompts: list[str],
        completions: list[str],
        fields: Mapping[str, list[Any]],
        step: int,
    ) -> tuple[list[float], dict[str, float], str | None]:
        """(column of N floats, extra metrics, problem text or None)."""
        n = len(completions)
        unscored = [math.nan] * n
        try:
            finished, out = self._call(r, prompts, completions, fields, step)
        except Exception as e:  # noqa: BLE001 - isolation: a reward must not stop training
            problem = f"raised {type(e).__name__}: {e}"
            self._warn(r.label, step, f"{problem}; its {n} samples are unscored", e)
            return unscored, self._timeout_metric(r, False), problem
        if not finished:
            running = len(self._background[r.label])
            problem = f"timed out after {r.timeout:g} s"
            more = (
                f" ({running} abandoned calls still running in the background)"
                if running > 1
                else ""
            )
            self._warn(r.label, step, f"{problem}; its {n} samples are unscored{more}")
            return unscored, self._timeout_metric(r, True), problem

        extra: dict[str, float] = self._timeout_metric(r, False)
        raw = out
        if isinstance(out, RewardOutput):
            raw = out.scores
            extra.update(self._extra_metrics(r, out.metrics, step))
        values = _as_list(raw)
        if values is None:
            problem = f"returned a {type(raw).__name__}, not a list of scores"
        elif len(values) != n:
            problem = f"returned {len(values)} scores for {n} samples"
        else:
            col: list[float] = []
            bad: list[Any] = []
            for v in values:
                f, ok = _as_float(v)
                col.append(f)
                if not ok:
                    bad.append(v)
            if bad:
                self._warn(
                    r.label,
                    step,
                    f"{len(bad)} of {n} scores are not finite numbers (e.g. {bad[0]!r}); "
                    "those samples are unscored",
                )
            problem = None
            if all(math.isnan(v) for v in col) and n:
                problem = (
                    f"every score was None/NaN or invalid (e.g. {bad[0]!r})"
                    if bad
                    else "it returned None (could not score) for every sample"
                )
            return col, extra, problem
        self._warn(r.label, step, f"{problem}; all {n} samples are unscored")
        return unscored, extra, problem

    @staticmethod
    def _timeout_metric(r: BoundReward, timed_out: bool) -> dict[str, float]:
        return {} if r.timeout is None else {"timed_out": 1.0 if timed_out else 0.0}

    def _extra_metrics(self, r: BoundReward, metrics: Any, step: int) -> dict[str, float]:
        if not isinstance(metrics, Mapping):
            self._warn(r.label, step, f"RewardOutput.metrics is a {type(metrics).__name__}")
            return {}
        out: dict[str, float] = {}
        for k, v in metrics.items():
            f, ok = _as_float(v)
            if ok and v is not None:
                out[str(k)] = f
            else:
                self._warn(r.label, step, f"metric {k!r}={v!r} is not a number; not logged")
        return out

    def score(
        self,
        prompts: Sequence[str],
        completions: Sequence[str],
        fields: Mapping[str, Sequence[Any]] | None = None,
        step: int = 0,
    ) -> RewardResult:
        """Score N samples with every reward; never raises for a reward's own failure.

        ``fields`` holds dataset columns aligned with the samples. Raises ``ValueError`` if the
        inputs are misaligned (a caller bug) and :class:`RewardFailure` if a reward has scored
        no sample for ``max_failed_steps`` consecutive calls.
        """
        n = len(completions)
        if len(prompts) != n:
            raise ValueError(f"{len(prompts)} prompts but {n} completions")
        cols: dict[str, list[Any]] = {}
        for k, v in (fields or {}).items():
            if k in ("prompts", "completions", "step"):
                continue
            if isinstance(v, (str, bytes)) or not hasattr(v, "__iter__"):
                raise ValueError(
                    f"field {k!r} must be a list aligned with the samples, got {type(v).__name__}"
                )
            vals = list(v)
            if len(vals) != n:
                raise ValueError(f"field {k!r} has {len(vals)} values for {n} samples")
            cols[k] = vals

        prompts, completions = list(prompts), list(completions)
        scores = torch.full((n, len(self.rewards)), math.nan, dtype=torch.float32)
        metrics: dict[str, float] = {}
        for j, r in enumerate(self.rewards):
            if n:
                col, extra, problem = self._run_one(r, prompts, completions, cols, step)
                scores[:, j] = torch.tensor(col, dtype=torch.float32)
                self._track(r.label, step, problem, all_unscored=problem is not None)
            else:
                col, extra = [], {}
            for k, v in extra.items():
                metrics[f"reward/{r.label}/{k}"] = v
            for k, v in _column_metrics(col, n).items():
                metrics[f"reward/{r.label}/{k}"] = v

        self._raise_if_failed(step, cols)
        return RewardResult(scores=scores, names=self.names, weights=self.weights, metrics=metrics)

    def _track(self, label: str, step: int, problem: str | None, all_unscored: bool) -> None:
        if not all_unscored:
            self._failed[label] = 0
            self._failed_since.pop(label, None)
            return
        if self._failed.get(label, 0) == 0:
            self._failed_since[label] = step
        self._failed[label] = self._failed.get(label, 0) + 1
        self._last_error[label] = problem or "no sample scored"

    def _raise_if_failed(self, step: int, fields: Mapping[str, Any]) -> None:
        for r in self.rewards:
            limit = self.limit(r)
            count = self._failed.get(r.label, 0)
            if limit is None or count < limit:
                continue
            last = self._last_error.get(r.label, "no sample scored")
            given = ", ".join(sorted(fields)) or "none"
            named = f"reward {r.label!r}" + (f" ({r.name})" if r.name != r.label else "")
            raise RewardFailure(
                f"{named} scored no sample in {count} consecutive steps "
                f"(steps {self._failed_since.get(r.label, step)}..{step}); last problem: "
                f"{last}. Fix the reward (the first warning from the 'steerl.rewards' logger "
                f"has its traceback), check that the data provides the fields it reads "
                f"(fields given: {given}), or remove it from the recipe's rewards; a reward "
                f"that legitimately skips whole batches needs a larger max_failed_steps on "
                f"its entry in rewards (now {limit}; null: never stop).",
                label=r.label,
                steps=count,
                last_error=last,
            )

    @staticmethod
    def combined(result: RewardResult) -> torch.Tensor:
        """Weighted sum of the columns, [N]; NaN where any nonzero-weight column is NaN."""
        w = result.weights.to(result.scores.dtype)
        keep = w != 0
        if not bool(keep.any()):
            return torch.zeros(result.scores.shape[0], dtype=result.scores.dtype)
        return (result.scores[:, keep] * w[keep]).sum(dim=1)
