"""Per-objective evaluation: greedy completions on the held-out prompts, scored by every reward.

``Trainer.evaluate`` reports the *first* reward only (accuracy per level); a Pareto sweep needs
one number per reward. ``evaluate_objectives(trainer)`` decodes greedily with the trainer's
model, tokenizer and rewards (as ``Trainer.evaluate`` does) and returns the mean score of each
reward label (unscored samples count as 0, as in ``Trainer.evaluate``).

``python -m steerl.pareto.evaluate RUN_DIR`` evaluates a run's newest checkpoint and writes
``RUN_DIR/objectives.json``; ``... RUN_DIR --train RECIPE OVERRIDES...`` trains the run first
(as ``steerl train`` would) and evaluates the final model in the same process: the sweep runs
one such subprocess per preference vector.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch

OBJECTIVES_FILE = "objectives.json"


@torch.no_grad()
def greedy_scores(trainer: Any, chunk: int = 512) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """Greedy completions of ``trainer.task.eval`` scored by every reward.

    Returns ``(reward labels, scores (N, K) float64 with unscored as 0, completion lengths (N,)
    in tokens)``.
    """
    from steerl.evaluation import greedy_chunks, prompt_fields

    cfg = trainer.cfg
    max_new = cfg.rollout.eval_max_new_tokens or cfg.rollout.max_new_tokens
    cols: list[torch.Tensor] = []
    lengths: list[torch.Tensor] = []
    names: list[str] = [r.label for r in cfg.rewards]
    for part, comps, out in greedy_chunks(
        trainer.model,
        trainer.tokenizer,
        trainer.task.eval,
        max_new_tokens=max_new,
        backend=trainer.sampler_backend,
        kernels=trainer.sampler_kernels,
        pdl=cfg.rollout.pdl,
        chat_template=cfg.model.chat_template,
        chunk=chunk,
    ):
        res = trainer.rewards.score([p.text for p in part], comps, prompt_fields(part), -1)
        names = list(res.names)
        cols.append(res.scores.nan_to_num(0.0).to(torch.float64).cpu())
        lengths.append(out.completion_mask.sum(-1).to(torch.float64).cpu())
    if not cols:
        return names, torch.zeros(0, len(names), dtype=torch.float64), torch.zeros(0)
    return names, torch.cat(cols), torch.cat(lengths)


def evaluate_objectives(trainer: Any, chunk: int = 512) -> dict[str, float]:
    """Mean greedy score per reward label on ``trainer.task.eval`` (dict in reward order)."""
    names, scores, _ = greedy_scores(trainer, chunk)
    if not len(scores):
        return {n: 0.0 for n in names}
    return {n: float(scores[:, j].mean()) for j, n in enumerate(names)}


def evaluate_run(run_dir: str | Path) -> dict[str, Any]:
    """Evaluate a run directory's newest checkpoint on every objective; writes and returns
    ``{"run_dir", "step", "objectives"}`` as ``RUN_DIR/objectives.json``."""
    from steerl.config import load_config
    from steerl.trainer import Trainer

    run = Path(run_dir)
    if not (run / "config.yaml").is_file():
        raise FileNotFoundError(f"{run} is not a run directory: no config.yaml in it")
    trainer = Trainer(load_config(run / "config.yaml"), run)
    if not trainer.resume():
        raise FileNotFoundError(f"no complete checkpoint in {run / 'checkpoints'}")
    result = {
        "run_dir": str(run),
        "step": trainer.state.global_step,
        "objectives": evaluate_objectives(trainer),
    }
    (run / OBJECTIVES_FILE).write_text(json.dumps(result, indent=1))
    return result


def train_and_evaluate(run_dir: str | Path, train_args: list[str]) -> dict[str, Any] | None:
    """``steerl train TRAIN_ARGS`` in this process (a recipe or run directory, then overrides;
    the run goes to ``run_dir``), then ``evaluate_objectives`` on the final model, written to
    ``RUN_DIR/objectives.json``. None when the run stopped before the end."""
    from steerl.cli import _resolve_train_args
    from steerl.trainer import Trainer

    recipe, overrides = (train_args[0], train_args[1:]) if train_args else (None, [])
    cfg, resumed = _resolve_train_args(recipe, overrides)
    run = Path(run_dir)
    if resumed is not None and resumed.resolve() != run.resolve():
        raise ValueError(f"run directory {resumed} is not {run}")
    trainer = Trainer(cfg, run)
    if not trainer.train().get("completed"):
        return None
    result = {
        "run_dir": str(run),
        "step": trainer.state.global_step,
        "objectives": evaluate_objectives(trainer),
    }
    (run / OBJECTIVES_FILE).write_text(json.dumps(result, indent=1))
    return result


def main(argv: list[str]) -> int:
    """``RUN_DIR``: evaluate its newest checkpoint; ``RUN_DIR --train ARGS...``: train first."""
    if not argv or (len(argv) > 1 and argv[1] != "--train"):
        print("usage: python -m steerl.pareto.evaluate RUN_DIR [--train RECIPE OVERRIDES...]")
        return 2
    if len(argv) == 1:
        res = evaluate_run(argv[0])
    else:
        res = train_and_evaluate(argv[0], argv[2:])
        if res is None:
            print(f"{argv[0]}: training stopped before the end")
            return 1
    print(json.dumps(res["objectives"]))
    return 0


if __name__ == "__main__":  # pragma: no cover - exercised through the sweep's subprocesses
    sys.exit(main(sys.argv[1:]))
