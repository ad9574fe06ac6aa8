"""The run: warm-up steps, RL steps, evaluation, logging, checkpoints, summary.

:class:`RunLoopMixin` gives :class:`steerl.trainer.Trainer` its ``train()``: it resumes,
runs :meth:`~steerl.trainer.Trainer.warmup_step` then
:meth:`~steerl.trainer.Trainer.rl_step` until done or stopped, and after each step logs,
calls the callbacks, evaluates and saves on schedule.
"""

from __future__ import annotations

import json
import time
from typing import Any

from steerl import distributed as ddp
from steerl.logging import ConsoleProgress, MetricLogger


class RunLoopMixin:
    """The loop around the steps of :class:`steerl.trainer.Trainer`.

    Reads the trainer's ``cfg``, ``run_dir``, ``state``, ``callbacks``, ``balancer`` and
    ``stability``; calls its ``warmup_step``, ``rl_step``, ``evaluate``, ``resume``,
    ``save`` and ``_request_stop``.
    """

    # ------------------------------------------------------------------ the run
    def train(self) -> dict[str, Any]:
        cfg = self.cfg
        main = ddp.is_main()  # under torchrun rank 0 alone writes the run directory
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(cfg.to_yaml())
            # which parameters get aggregated gradients and which the plain weighted sum
            (self.run_dir / "balancer.json").write_text(
                json.dumps(self.balancer.describe(), indent=1, default=str)
            )
        ddp.barrier()
        resumed = self.resume()
        logger = (MetricLogger if main else _NullLogger)(
            self.run_dir,
            cfg.logging,
            cfg.model_dump(mode="json"),
            resume_step=self.state.global_step if resumed else None,
        )
        start = time.perf_counter() - self.state.wall_seconds
        for cb in self.callbacks:
            cb.on_train_start(self)
        progress = ConsoleProgress(enabled=cfg.logging.progress and main)
        try:
            with progress:
                self._loop(logger, progress, start)
        finally:
            logger.close()
        for cb in self.callbacks:
            cb.on_train_end(self)
        return self.summary()

    def _loop(self, logger: MetricLogger, progress: ConsoleProgress, start: float) -> None:
        cfg = self.cfg
        if self.phase == "warmup":
            progress.set_phase("warm-up (SFT)", cfg.warmup.steps)
            progress.update(advance=self.state.warmup_step)
        while self.state.warmup_step < cfg.warmup.steps and not self._stop():
            m = self.warmup_step()
            if self.state.warmup_step == cfg.warmup.steps:  # evaluate before the boundary save
                self.state.warmup_eval = self._eval_and_log(
                    logger, "warmup", step=self.state.global_step + 1
                )
            self._after_step(logger, m, start)
            progress.update(loss=m["warmup/loss"])
        if self._stop():
            return
        stopped = self.state.stop_reason is not None  # a monitor ended it: finished, even resumed
        if self.state.rl_step < cfg.train.steps and not stopped:
            self.state.final_eval = None  # a resumed run asked for more RL steps
        progress.set_phase("GRPO", cfg.train.steps)
        progress.update(advance=self.state.rl_step)
        while self.state.rl_step < cfg.train.steps and not stopped and not self._stop():
            m = self.rl_step()
            if (
                cfg.train.eval_every
                and self.state.rl_step % cfg.train.eval_every == 0
                and self.state.rl_step < cfg.train.steps
            ):
                # rl_step has advanced but global_step not yet (_after_step below)
                acc = self._eval_and_log(logger, "rl", step=self.state.global_step + 1)
                m.update({f"eval/accuracy/level_{k}": v for k, v in acc.items()})
            self._after_step(logger, m, start)
            progress.update(reward=m["train/reward"])
        if self._stop() and self.state.stop_reason is None:
            return  # stop_after or a callback: as if killed, resumable
        if self.state.final_eval is None:
            self.state.final_eval = self._eval_and_log(logger, "final")
            self.state.wall_seconds = time.perf_counter() - start
            self.save()
        if not ddp.is_main():
            return
        self._write_summary()
        if cfg.logging.report:
            from steerl.report import build_report

            build_report(self.run_dir)

    def _stop(self) -> bool:
        sa = self.cfg.train.stop_after
        return self.should_stop or (sa is not None and self.state.global_step >= sa)

    def _eval_and_log(
        self, logger: MetricLogger, tag: str, step: int | None = None
    ) -> dict[str, float]:
        step = self.state.global_step if step is None else step
        acc = self.evaluate()
        self.state.evals.append({"step": step, "tag": tag, "accuracy": acc})
        named = {f"eval/accuracy/level_{k}": v for k, v in acc.items()}
        logger.log(step, named | {"eval/tag": tag})
        for cb in self.callbacks:
            cb.on_evaluate(self, step, acc)
        if tag == "rl" and self.stability.observe_eval(named, step):
            self._request_stop(self.stability.stop_reason or "early stopping")
        return acc

    def _after_step(self, logger: MetricLogger, m: dict[str, Any], start: float) -> None:
        self.state.global_step += 1
        step = self.state.global_step
        self.state.wall_seconds = time.perf_counter() - start
        logger.log(step, m)
        if getattr(self, "_samples", None):
            logger.log_samples(step, self._samples)
            self._samples = None
        for cb in self.callbacks:
            cb.on_step_end(self, step, m)
        self.should_stop = ddp.any_rank(self.should_stop)  # a stop on one rank stops all
        se = self.cfg.train.save_every
        boundary = self.state.warmup_step == self.cfg.warmup.steps and self.state.rl_step == 0
        if (se and step % se == 0) or boundary:
            self.save()

    def summary(self) -> dict[str, Any]:
        return {
            "recipe": self.cfg.recipe,
            "run_dir": str(self.run_dir),
            "wall_seconds": round(self.state.wall_seconds, 2),
            "steps": self.state.global_step,
            "warmup_steps": self.state.warmup_step,
            "rl_steps": self.state.rl_step,
            "warmup": self.state.warmup_eval,
            "final": self.state.final_eval,
            "completed": self.state.final_eval is not None,
            "stop_reason": self.state.stop_reason,
            "stability": self.stability.health(),
            "generate_tokens_per_s": round(
                self.state.generated_tokens / max(self.state.generate_seconds, 1e-9), 1
            ),
        }

    def _write_summary(self) -> None:
        (self.run_dir / "summary.json").write_text(json.dumps(self.summary(), indent=1))


class _NullLogger:
    """The metric sinks of ranks other than 0 under torchrun: nothing is written."""

    def __init__(self, *args: Any, **kwargs: Any): ...
    def log(self, step: int, metrics: dict[str, Any]) -> None: ...
    def log_samples(self, step: int, samples: Any) -> None: ...
    def close(self) -> None: ...
