"""One trial of a study: sample the space, train a run directory, report to the pruner.

``run_trial`` is the objective ``steerl.tuning.study.work`` hands to Optuna. It first checks
that the trial is needed (the study may already hold ``tune.trials`` trials counted by
``accounted``, or two workers may have queued the same dead trial twice), then trains the
run (resuming a copy of ``tune.from_warmup`` when set) with ``_TrialReporter`` passing each
periodic evaluation to the pruner and to ``tune.threshold``, and returns the objective values.
"""

from __future__ import annotations

import copy
import shutil
import time
from pathlib import Path
from typing import Any

from steerl.config import Config, apply_overrides, build_config
from steerl.trainer import Callback
from steerl.tuning.metrics import eval_metrics, final_metrics
from steerl.tuning.space import as_overrides, suggest
from steerl.tuning.spec import TuneConfig
from steerl.tuning.storage import drop_surplus, recording_error
from steerl.tuning.study import TuneContext, TuneError, has_set_constraint


class _TrialReporter(Callback):
    """Hands each periodic evaluation to the pruner; stops the trial when it or
    ``tune.threshold`` says so (Optuna's TrialPruned ends the run)."""

    def __init__(self, trial: Any, tc: TuneConfig):
        self.trial, self.tc = trial, tc
        self.metric = tc.objectives[0].metric
        self.report = len(tc.objectives) == 1 and tc.effective_pruner != "none"

    def _check(self, step: int, values: dict[str, float]) -> None:
        import optuna

        th = self.tc.threshold
        if th is not None and th.metric in values and step >= th.after_step:
            if th.violation(values[th.metric]) > 0:
                self.trial.set_user_attr(
                    "stopped_by", f"threshold: {th.metric}={values[th.metric]:.4g} at step {step}"
                )
                raise optuna.TrialPruned(f"{th.metric} violates tune.threshold")
        if self.report and self.metric in values:
            self.trial.report(values[self.metric], step)
            if self.trial.should_prune():
                self.trial.set_user_attr("stopped_by", f"pruner at step {step}")
                raise optuna.TrialPruned(f"pruned at step {step}")

    def on_evaluate(self, trainer: Any, step: int, accuracy: dict[str, float]) -> None:
        if trainer.state.rl_step == 0:  # the warm-up's evaluation: the same for every trial
            return
        self._check(trainer.state.rl_step, eval_metrics(accuracy))

    def on_step_end(self, trainer: Any, step: int, metrics: dict[str, Any]) -> None:
        watched = {self.metric, *([self.tc.threshold.metric] if self.tc.threshold else [])}
        if trainer.state.rl_step == 0 or not any(m.startswith("train/") for m in watched):
            return
        values = {
            k: float(v) for k, v in metrics.items() if k in watched and isinstance(v, (int, float))
        }
        self._check(trainer.state.rl_step, values)


def _counted(trial: Any) -> bool:
    from optuna.trial import TrialState

    s = trial.state
    if s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING):
        return True
    return s == TrialState.FAIL and "error" in trial.user_attrs  # the run itself failed


def accounted(study: Any, before: int | None = None) -> int:
    """Trials that count toward ``tune.trials`` (optionally only those numbered below):
    finished ones and those running; not those waiting (queued retries, enqueued ones)."""
    trials = study.get_trials(deepcopy=False)
    return sum(1 for t in trials if _counted(t) and (before is None or t.number < before))


def _duplicate_retry(trial: Any) -> bool:
    """Whether this trial re-runs a dead worker's trial that an earlier trial already re-runs.

    Two workers can fail the same stale trial at once and each queue a retry (a race inside
    Optuna's ``fail_stale_trials``); the later copy is dropped as surplus."""
    import optuna

    retried = optuna.storages.RetryFailedTrialCallback.retried_trial_number
    trials = trial.study.get_trials(deepcopy=False)
    me = next(t for t in trials if t.number == trial.number)
    origin = retried(me)
    if origin is None:
        return False
    return any(
        t.number < me.number
        and retried(t) == origin
        and not t.user_attrs.get("surplus")
        and (
            t.state.name in ("RUNNING", "COMPLETE", "PRUNED", "WAITING")
            or (t.state.name == "FAIL" and "error" in t.user_attrs)  # not a dead worker's
        )
        for t in trials
    )


def trial_config(ctx: TuneContext, params: dict[str, Any], run_dir: Path) -> Config:
    data = copy.deepcopy(ctx.base)
    apply_overrides(data, as_overrides(params))
    apply_overrides(data, [f"train.out_dir={run_dir}", "logging.progress=false"])
    return build_config(data)


def run_trial(ctx: TuneContext, trial: Any) -> list[float]:
    """Sample, train (resuming from the warm-up copy if any), evaluate; the objective values."""
    import optuna

    from steerl.trainer import Trainer

    tc = ctx.tc
    if accounted(trial.study, before=trial.number) >= tc.trials or _duplicate_retry(trial):
        drop_surplus(trial)  # another worker already started the study's last trial
    params = suggest(trial, tc.space)
    run_dir = ctx.trial_dir(trial.number)
    trial.set_user_attr("run_dir", str(run_dir.resolve()))
    trial.set_user_attr("overrides", as_overrides(params))
    with recording_error(trial, passthrough=(optuna.TrialPruned,)):
        cfg = trial_config(ctx, params, run_dir)
        if tc.from_warmup and not (run_dir / "config.yaml").is_file():
            shutil.copytree(tc.from_warmup, run_dir, dirs_exist_ok=True)
            for stale in ("summary.json", "report.html"):
                (run_dir / stale).unlink(missing_ok=True)
        trainer = Trainer(cfg, run_dir, callbacks=[_TrialReporter(trial, tc)])
        t0 = time.perf_counter()
        summary = trainer.train()
        # this trial's own training time (a from_warmup copy carries the warm-up's seconds)
        summary = {**summary, "wall_seconds": time.perf_counter() - t0}
        if not summary.get("completed"):
            raise TuneError(f"the run stopped before the end ({summary.get('stop_reason')})")
        wanted = [o.metric for o in tc.objectives] + [c.metric for c in tc.constraints]
        metrics = final_metrics(trainer, summary, wanted)
    trial.set_user_attr("metrics", metrics)
    trial.set_user_attr("wall_seconds", summary.get("wall_seconds"))
    if tc.constraints:
        violations = [c.violation(metrics[c.metric]) for c in tc.constraints]
        trial.set_user_attr("constraints", violations)
        if has_set_constraint():  # Optuna >= 5: the samplers read constraints from the trial
            for c, v in zip(tc.constraints, violations):
                trial.set_constraint(f"{c.metric} in bounds", v)
    return [metrics[o.metric] for o in tc.objectives]
