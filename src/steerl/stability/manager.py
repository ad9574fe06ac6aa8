"""``StabilityManager``: composes the clipper, the non-finite guard, spike detectors, threshold
guards, the plateau monitor and early stopping behind a few calls the training loop makes.

Decisions (``check_update``, before ``optimizer.step()``), in order of precedence:

- a pending decision from ``observe_train`` of the previous step (``rollback`` / ``stop``);
- a non-finite loss or gradient norm: ``skip`` (``NonFiniteError`` after
  ``max_consecutive_skips`` in a row, with a diagnosis when ``terms``/``named_params`` are given);
- spike detectors and threshold guards whose metric is among ``train/loss``,
  ``train/grad_norm`` and ``metrics_so_far``: the strongest action asked wins,
  ``stop > rollback > skip > lower_lr``; ``lower_lr`` applies the update but multiplies the LR
  by ``lower_lr.factor`` for ``lower_lr.steps`` steps starting with this one (it takes effect
  whatever the winning action is). ``max_consecutive_skips`` skipped steps in a row (any
  cause) raise ``StabilityError``.

Detectors and guards whose metric is only known after the update are evaluated in
``observe_train``: ``lower_lr`` then starts at the next step, ``rollback`` / ``stop`` are
returned by the next ``check_update`` (``stop`` also makes ``observe_train`` return True),
``skip`` can only be counted.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from steerl.stability.clipping import ClipResult, GradClipper
from steerl.stability.guards import (
    NonFiniteError,
    NonFiniteGuard,
    StabilityError,
    ThresholdGuard,
    build_threshold_guards,
)
from steerl.stability.monitor import EarlyStopping, PlateauDetector
from steerl.stability.spikes import SpikeDetector

ACTIONS = ("apply", "skip", "rollback", "stop")
_PRIORITY = {"lower_lr": 0, "skip": 1, "rollback": 2, "stop": 3}
MAX_EVENTS = 100


@dataclass(frozen=True)
class Decision:
    """What to do with the update at hand: ``action`` in apply | skip | rollback | stop."""

    action: str = "apply"
    reason: str = ""
    lr_scale: float = 1.0  # multiply the scheduled LR by this for this update

    @property
    def apply(self) -> bool:
        return self.action == "apply"


class StabilityManager:
    """One object for the training loop; see ``steerl.stability`` for how to wire it."""

    def __init__(self, cfg: Any, total_steps: int):
        self.cfg = cfg
        self.total_steps = total_steps
        self.clipper = GradClipper(cfg)
        self.nonfinite = NonFiniteGuard(cfg.skip_nonfinite, cfg.max_consecutive_skips)
        self.spikes = [
            SpikeDetector(s.metric, s.window, s.threshold, s.min_history, s.direction)
            for s in cfg.spikes
        ]
        self.spike_actions = [s.action for s in cfg.spikes]
        self.guards: list[ThresholdGuard] = build_threshold_guards(cfg.guards)
        p = cfg.plateau
        self.plateau = (
            PlateauDetector(
                p.metric,
                p.mode,
                p.ema,
                p.window,
                p.min_slope,
                p.action,
                p.factor,
                p.min_scale,
                p.cooldown,
            )
            if p is not None
            else None
        )
        e = cfg.early_stop
        self.early_stop = EarlyStopping(e.mode, e.patience, e.min_delta) if e else None
        # state
        self.lower_lr_window: tuple[int, int] | None = None  # active for start <= step < end
        self.lr_reductions = 0
        self.skips = {"nonfinite": 0, "spike": 0, "guard": 0}
        self.consecutive_skips = 0
        self.rollbacks = 0
        self.pending: dict[str, str] | None = None  # {"action": rollback|stop, "reason": ...}
        self.stop_reason: str | None = None
        self.last_reason = ""
        self.events: deque[dict[str, Any]] = deque(maxlen=MAX_EVENTS)
        # (step, value) each detector / guard saw last: a value is judged once per step
        self._seen_spikes: list[tuple[int, float] | None] = [None] * len(self.spikes)
        self._seen_guards: list[tuple[int, float] | None] = [None] * len(self.guards)

    # ------------------------------------------------------------------ per update
    def clip(self, params: Iterable[torch.nn.Parameter]) -> ClipResult:
        """Clip gradients in place (``stability.clip``); call after backward."""
        return self.clipper.clip(params)

    def check_update(
        self,
        loss: float,
        grad_norm: float,
        metrics_so_far: Mapping[str, Any] | None = None,
        *,
        step: int,
        terms: Mapping[str, float] | None = None,
        named_params: Iterable[tuple[str, torch.Tensor]] | None = None,
    ) -> Decision:
        """Decide about the update at hand, before ``optimizer.step()``.

        ``loss`` / ``grad_norm``: this update's loss and pre-clip gradient norm; they are
        judged as ``train/loss`` / ``train/grad_norm``. ``metrics_so_far``: the step's metrics
        known now (``train/reward``, ``train/kl``, ``train/entropy``, ``train/clip_fraction``,
        ...). ``step``: the RL step (the one ``lr_scale(step)`` is asked for). ``terms`` and
        ``named_params`` (loss terms by name, ``model.named_parameters()``) are only read
        on a non-finite step, for the diagnosis.
        """
        if self.pending is not None:
            pend, self.pending = self.pending, None
            return self._decide(pend["action"], pend["reason"], step)
        if not self.nonfinite.check(
            float(loss), float(grad_norm), terms=terms, named_params=named_params
        ):
            diag = self.nonfinite.last_diagnosis
            reason = f"non-finite loss ({loss}) or gradient norm ({grad_norm})"
            if diag is not None and (terms is not None or named_params is not None):
                reason += f": {diag}"
            self._event(step, "nonfinite", None, None, "skip", reason)
            return self._skip("nonfinite", reason, step)
        values = dict(metrics_so_far or {})
        values["train/loss"] = loss
        values["train/grad_norm"] = grad_norm
        asks = self._judge(values, step, late=False)
        if not asks:
            self.consecutive_skips = 0
            return Decision("apply", "", self.lr_scale(step))
        if any(a == "lower_lr" for a, _, _ in asks):
            self._lower_lr(step)
        action, kind, _ = max(asks, key=lambda a: _PRIORITY[a[0]])
        reason = "; ".join(r for _, _, r in asks)
        if action == "lower_lr":
            self.consecutive_skips = 0
            self.last_reason = reason
            return Decision("apply", reason, self.lr_scale(step))
        if action == "skip":
            return self._skip(kind, reason, step)
        return self._decide(action, reason, step)

    def lr_scale(self, step: int) -> float:
        """Multiplier of the scheduled LR at ``step``: a ``lower_lr`` window, times the
        plateau reductions (1.0 when nothing is active)."""
        scale = 1.0
        win = self.lower_lr_window
        if win is not None and win[0] <= step < win[1]:
            scale *= self.cfg.lower_lr.factor
        if self.plateau is not None:
            scale *= self.plateau.scale
        return scale

    # ------------------------------------------------------------------ per step / eval
    def observe_train(self, metrics: Mapping[str, Any], step: int) -> bool:
        """After the step, with all its logged metrics: detectors and guards not judged in
        ``check_update``, and the plateau monitor. Returns True when the run should stop."""
        stop = False
        for action, _kind, reason in self._judge(metrics, step, late=True):
            if action == "lower_lr":
                self._lower_lr(step + 1)
            elif action in ("rollback", "stop"):
                cur = self.pending
                if cur is None or _PRIORITY[action] > _PRIORITY[cur["action"]]:
                    self.pending = {"action": action, "reason": reason}
                if action == "stop":
                    stop = True
                    self.stop_reason = self.last_reason = reason
        if self.plateau is not None:
            v = _number(metrics.get(self.plateau.metric))
            if v is not None and self.plateau.observe(v, step):
                reason = (
                    f"plateau in {self.plateau.metric}: EMA slope {self.plateau.last_slope:.3g} "
                    f"per step over {self.plateau.window} steps (min_slope "
                    f"{self.plateau.min_slope:g}); action {self.plateau.action}"
                )
                self._event(step, "plateau", self.plateau.metric, v, self.plateau.action, reason)
                if self.plateau.action == "stop":
                    self.stop_reason = reason
                    stop = True
        return stop

    def observe_eval(self, metric_value: float | Mapping[str, Any], step: int) -> bool:
        """Early stopping: feed the eval metric (a number, or the eval metrics where
        ``early_stop.metric`` is looked up). Returns True when the run should stop."""
        if self.early_stop is None:
            return False
        key = self.cfg.early_stop.metric
        value = _lookup(metric_value, key) if isinstance(metric_value, Mapping) else metric_value
        was = self.early_stop.stopped_at
        stop = self.early_stop.observe(float(value), step)
        if stop and was is None:
            es = self.early_stop
            reason = (
                f"early stop: {key} has not improved by more than {es.min_delta:g} for "
                f"{es.patience} evaluation(s); best {es.best} at step {es.best_step}"
            )
            self.stop_reason = reason
            self._event(step, "early_stop", key, float(value), "stop", reason)
        return stop

    def on_rollback(self) -> None:
        """Call after rolling back to a checkpoint (keep this manager's state: do not load
        the checkpoint's copy). Raises ``StabilityError`` past ``max_rollbacks``."""
        self.rollbacks += 1
        self.consecutive_skips = 0
        self.pending = None
        if self.rollbacks > self.cfg.max_rollbacks:
            raise StabilityError(
                f"rollback {self.rollbacks} exceeds stability.max_rollbacks="
                f"{self.cfg.max_rollbacks}; last cause: {self.last_reason}. Lower optim.lr, "
                "raise the spike threshold, or use action=skip/lower_lr."
            )

    # ------------------------------------------------------------------ reporting
    def health(self) -> dict[str, Any]:
        """Counters for the end-of-run summary (JSON-serialisable)."""
        spikes: dict[str, int] = {}
        for d in self.spikes:
            spikes[d.metric] = spikes.get(d.metric, 0) + d.spikes
        hits: dict[str, int] = {}
        for g in self.guards:
            hits[g.metric] = hits.get(g.metric, 0) + g.hits
        out: dict[str, Any] = {
            "skipped_steps": sum(self.skips.values()),
            "skips": dict(self.skips),
            "spikes": spikes,
            "guard_hits": hits,
            "rollbacks": self.rollbacks,
            "lr_reductions": self.lr_reductions,
            "clip": {
                "mode": self.clipper.mode,
                "updates": self.clipper.calls,
                "clipped": self.clipper.clipped_calls,
            },
            "plateau_events": self.plateau.events if self.plateau else 0,
            "plateau_lr_scale": self.plateau.scale if self.plateau else 1.0,
            "early_stop": self.early_stop.state_dict() if self.early_stop else None,
            "stop_reason": self.stop_reason,
            "events": list(self.events),
        }
        return out

    def step_metrics(self, step: int) -> dict[str, float]:
        """A few numbers worth logging every step (``stability/...``)."""
        return {
            "stability/lr_scale": self.lr_scale(step),
            "stability/skipped_steps": float(sum(self.skips.values())),
            "stability/spikes": float(sum(d.spikes for d in self.spikes)),
            "stability/guard_hits": float(sum(g.hits for g in self.guards)),
            "stability/rollbacks": float(self.rollbacks),
        }

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "clipper": self.clipper.state_dict(),
            "nonfinite": self.nonfinite.state_dict(),
            "spikes": [
                {"metric": d.metric, "state": d.state_dict(), "seen": _seen_json(s)}
                for d, s in zip(self.spikes, self._seen_spikes)
            ],
            "guards": [
                {"metric": g.metric, "state": g.state_dict(), "seen": _seen_json(s)}
                for g, s in zip(self.guards, self._seen_guards)
            ],
            "plateau": self.plateau.state_dict() if self.plateau else None,
            "early_stop": self.early_stop.state_dict() if self.early_stop else None,
            "lower_lr_window": list(self.lower_lr_window) if self.lower_lr_window else None,
            "lr_reductions": self.lr_reductions,
            "skips": dict(self.skips),
            "consecutive_skips": self.consecutive_skips,
            "rollbacks": self.rollbacks,
            "pending": self.pending,
            "stop_reason": self.stop_reason,
            "last_reason": self.last_reason,
            "events": list(self.events),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore ``state_dict()``. Detectors and guards are matched by position and metric;
        one the saved run did not have (the config changed) starts fresh."""
        self.clipper.load_state_dict(state["clipper"])
        self.nonfinite.load_state_dict(state["nonfinite"])
        for i, saved in enumerate(state.get("spikes", [])[: len(self.spikes)]):
            if saved["metric"] == self.spikes[i].metric:
                self.spikes[i].load_state_dict(saved["state"])
                self._seen_spikes[i] = _seen_from_json(saved.get("seen"))
        for i, saved in enumerate(state.get("guards", [])[: len(self.guards)]):
            if saved["metric"] == self.guards[i].metric:
                self.guards[i].load_state_dict(saved["state"])
                self._seen_guards[i] = _seen_from_json(saved.get("seen"))
        if self.plateau is not None and state.get("plateau") is not None:
            self.plateau.load_state_dict(state["plateau"])
        if self.early_stop is not None and state.get("early_stop") is not None:
            self.early_stop.load_state_dict(state["early_stop"])
        win = state["lower_lr_window"]
        self.lower_lr_window = (int(win[0]), int(win[1])) if win else None
        self.lr_reductions = int(state["lr_reductions"])
        self.skips = {**{"nonfinite": 0, "spike": 0, "guard": 0}, **state["skips"]}
        self.consecutive_skips = int(state["consecutive_skips"])
        self.rollbacks = int(state["rollbacks"])
        self.pending = dict(state["pending"]) if state.get("pending") else None
        self.stop_reason = state.get("stop_reason")
        self.last_reason = state.get("last_reason", "")
        self.events.clear()
        self.events.extend(state.get("events", []))

    # ------------------------------------------------------------------ internals
    def _judge(
        self, values: Mapping[str, Any], step: int, late: bool
    ) -> list[tuple[str, str, str]]:
        """Run detectors and guards on the metrics present; returns (action, kind, reason)
        for each that fired. ``late``: only those that did not see a value at this step."""
        asks: list[tuple[str, str, str]] = []
        for i, det in enumerate(self.spikes):
            v = _number(values.get(det.metric))
            if v is None or not self._fresh(self._seen_spikes, i, step, v, late):
                continue
            self._seen_spikes[i] = (step, v)
            if det.observe(v):
                action = self.spike_actions[i]
                reason = det.describe(v)
                asks.append((action, "spike", reason))
                self._event(step, "spike", det.metric, v, action, reason)
        for i, g in enumerate(self.guards):
            v = _number(values.get(g.metric))
            if v is None or not self._fresh(self._seen_guards, i, step, v, late):
                continue
            self._seen_guards[i] = (step, v)
            if g.observe(v):
                reason = g.describe(v)
                asks.append((g.action, "guard", reason))
                self._event(step, "guard", g.metric, v, g.action, reason)
        return asks

    @staticmethod
    def _fresh(
        seen: list[tuple[int, float] | None], i: int, step: int, v: float, late: bool
    ) -> bool:
        last = seen[i]
        if last is None or last[0] != step:
            return True
        # already judged at this step: after the update, or the same value again (a
        # per-step metric such as the reward seen by every epoch's update)
        return not late and last[1] != v

    def _lower_lr(self, start: int) -> None:
        self.lower_lr_window = (start, start + self.cfg.lower_lr.steps)
        self.lr_reductions += 1

    def _skip(self, kind: str, reason: str, step: int) -> Decision:
        self.skips[kind] += 1
        self.consecutive_skips += 1
        self.last_reason = reason
        n = self.cfg.max_consecutive_skips
        if self.consecutive_skips >= n:
            err = NonFiniteError if kind == "nonfinite" else StabilityError
            raise err(
                f"{self.consecutive_skips} consecutive steps were skipped "
                f"(stability.max_consecutive_skips={n}); stopping. Last cause: {reason}. "
                "A lasting shift of a metric is flagged on every step: raise the threshold, "
                "or use action=lower_lr/rollback."
            )
        return Decision("skip", reason, self.lr_scale(step))

    def _decide(self, action: str, reason: str, step: int) -> Decision:
        self.last_reason = reason
        if action == "stop":
            self.stop_reason = reason
        return Decision(action, reason, self.lr_scale(step))

    def _event(
        self, step: int, kind: str, metric: str | None, value: float | None, action: str, why: str
    ) -> None:
        self.events.append(
            {
                "step": step,
                "kind": kind,
                "metric": metric,
                "value": value,
                "action": action,
                "reason": why,
            }
        )


def _number(v: Any) -> float | None:
    """A finite float, or None (missing, non-numeric, NaN/inf)."""
    if v is None or isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _lookup(metrics: Mapping[str, Any], key: str) -> float:
    """``metrics[key]``; a missing ``<prefix>/mean`` is the mean of the ``<prefix>/...``
    values (e.g. ``eval/accuracy/mean`` over ``eval/accuracy/level_*``)."""
    if key in metrics:
        return float(metrics[key])
    if key.endswith("/mean"):
        prefix = key[: -len("mean")]
        vals = [_number(v) for k, v in metrics.items() if k.startswith(prefix)]
        vals = [v for v in vals if v is not None]
        if vals:
            return sum(vals) / len(vals)
    raise KeyError(
        f"stability.early_stop.metric={key!r} is not among the eval metrics "
        f"({', '.join(sorted(metrics)) or 'none'})"
    )


def _seen_json(s: tuple[int, float] | None) -> list | None:
    return None if s is None else [s[0], s[1]]


def _seen_from_json(s: Any) -> tuple[int, float] | None:
    return None if s is None else (int(s[0]), float(s[1]))
