"""Population-based training (Jaderberg et al. 2017) for steerl runs.

``tune.pbt.population`` members start from random draws of ``tune.space`` and train in
rounds of ``steps_per_round`` RL steps, each a normal run directory under ``OUT/members/``
resumed from its checkpoint every round. After each round every member is scored on the first
``tune.objectives`` metric; the bottom ``quantile`` copy the run directory (weights, optimizer,
curriculum, every component's state) and the hyperparameters of a member drawn from the top
``quantile`` (exploit), then move each copied hyperparameter by a factor drawn from
``perturb``, or resample it with ``resample_probability`` (explore).

``OUT/pbt.json`` holds the population after every round (resumable: re-running the command
continues from the last finished round) and the lineage: per round and member, the
hyperparameters, the score and the member it copied. ``OUT/lineage.png`` plots each
hyperparameter and the score over rounds.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from steerl.checkpoint import rng_from_json, rng_to_json
from steerl.config import ConfigError, apply_overrides, build_config
from steerl.tuning.metrics import final_metrics
from steerl.tuning.space import active, as_overrides, clip, draw, sample_random
from steerl.tuning.spec import ParamSpec

PBT_FILE = "pbt.json"


def explore(
    params: dict[str, Any], space: dict[str, ParamSpec], rng: random.Random, pbt: Any
) -> dict[str, Any]:
    """Perturb (x a factor of ``pbt.perturb``) or resample each copied hyperparameter."""
    out: dict[str, Any] = {}
    for key, p in space.items():
        if not active(p, out):
            continue
        if key not in params or rng.random() < pbt.resample_probability:
            out[key] = draw(p, rng)
        elif p.type == "categorical":
            out[key] = params[key]
        else:
            out[key] = clip(p, params[key] * rng.choice(pbt.perturb))
    return out


def _member_config(ctx: Any, params: dict[str, Any], run_dir: Path, steps: int):
    data = copy.deepcopy(ctx.base)
    apply_overrides(data, as_overrides(params))
    apply_overrides(
        data, [f"train.steps={steps}", f"train.out_dir={run_dir}", "logging.progress=false"]
    )
    return build_config(data)


def train_member(ctx: Any, member: dict[str, Any], steps: int) -> dict[str, float]:
    """Train (resume) one member to ``steps`` RL steps; its final metrics."""
    from steerl.trainer import Trainer

    run_dir = Path(member["run_dir"])
    cfg = _member_config(ctx, member["params"], run_dir, steps)
    if ctx.tc.from_warmup and not (run_dir / "config.yaml").is_file():
        shutil.copytree(ctx.tc.from_warmup, run_dir, dirs_exist_ok=True)
        (run_dir / "summary.json").unlink(missing_ok=True)
    trainer = Trainer(cfg, run_dir)
    summary = trainer.train()
    if not summary.get("completed"):
        raise ConfigError(
            f"PBT member {member['id']} stopped before the end ({summary.get('stop_reason')})"
        )
    return final_metrics(trainer, summary, [o.metric for o in ctx.tc.objectives])


def _save(out: Path, state: dict[str, Any]) -> None:
    tmp = out / (PBT_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, out / PBT_FILE)


def run_pbt(ctx: Any, on_round: Callable[[str], None] | None = None) -> dict[str, Any]:
    tc, pbt = ctx.tc, ctx.tc.pbt
    if len(tc.objectives) != 1:
        raise ConfigError(
            f"tune.method=pbt ranks members on one metric; tune.objectives has "
            f"{len(tc.objectives)} ({[o.metric for o in tc.objectives]})"
        )
    metric, sign = (
        tc.objectives[0].metric,
        1.0 if tc.objectives[0].direction == "maximize" else -1.0,
    )
    out = ctx.out_dir
    state_path = out / PBT_FILE
    if state_path.is_file():
        state = json.loads(state_path.read_text())
    else:
        rng = random.Random(tc.seed or 0)
        members = [
            {
                "id": i,
                "run_dir": str((out / "members" / f"m{i}").resolve()),
                "params": sample_random(tc.space, rng),
                "parent": None,
            }
            for i in range(pbt.population)
        ]
        state = {"metric": metric, "round": 0, "members": members, "lineage": [], "rng": None}
    rng = random.Random(tc.seed or 0)
    if state["rng"]:
        rng.setstate(rng_from_json(state["rng"]))
    members = state["members"]
    for r in range(state["round"], pbt.rounds):
        steps = (r + 1) * pbt.steps_per_round
        scores = []
        for m in members:
            metrics = train_member(ctx, m, steps)
            scores.append(metrics[metric])
            state["lineage"].append(
                {
                    "round": r,
                    "member": m["id"],
                    "params": dict(m["params"]),
                    "score": metrics[metric],
                    "parent": m["parent"],
                    "steps": steps,
                }
            )
        order = sorted(range(len(members)), key=lambda i: -sign * scores[i])
        n = max(1, int(math.floor(pbt.quantile * len(members))))
        top, bottom = order[:n], order[-n:]
        line = f"round {r}: " + ", ".join(f"m{members[i]['id']}={scores[i]:.4g}" for i in order)
        if r < pbt.rounds - 1:  # exploit + explore between rounds, not after the last
            for b in bottom:
                t = rng.choice(top)
                src, dst = Path(members[t]["run_dir"]), Path(members[b]["run_dir"])
                shutil.rmtree(dst, ignore_errors=True)
                shutil.copytree(src, dst)
                members[b]["params"] = explore(members[t]["params"], tc.space, rng, pbt)
                members[b]["parent"] = members[t]["id"]
                line += f"; m{members[b]['id']} <- m{members[t]['id']}"
            for i in set(range(len(members))) - set(bottom):
                members[i]["parent"] = None
        state["round"] = r + 1
        state["rng"] = rng_to_json(rng)
        state["best"] = {
            "member": members[order[0]]["id"],
            "score": scores[order[0]],
            "params": state["lineage"][-len(members) + order[0]]["params"],
            "run_dir": members[order[0]]["run_dir"],
        }
        _save(out, state)
        if on_round is not None:
            on_round(line)
    plot_lineage(state, out / "lineage.png", list(tc.space))
    return state


def plot_lineage(state: dict[str, Any], path: Path, keys: list[str]) -> None:
    """One panel per hyperparameter and one for the score: value per member over rounds;
    a dashed segment runs from the member that was copied (exploit) to its copy."""
    from steerl.pareto.plots import _figure

    lineage = state["lineage"]
    if not lineage:
        return
    panels = [*keys, "score"]
    fig = _figure(6.0, 2.2 * len(panels))
    members = sorted({e["member"] for e in lineage})
    colors = {m: f"C{i % 10}" for i, m in enumerate(members)}

    def value(e: dict[str, Any], key: str) -> Any:
        return e["score"] if key == "score" else e["params"].get(key)

    at = {(e["member"], e["round"]): e for e in lineage}
    for k, key in enumerate(panels):
        ax = fig.add_subplot(len(panels), 1, k + 1)
        for m in members:
            rows = [e for e in lineage if e["member"] == m]
            ax.scatter(
                [e["round"] for e in rows],
                [value(e, key) for e in rows],
                s=10,
                color=colors[m],
                label=f"m{m}",
            )
            for e in rows:  # a segment from where this round's member came from
                src = e["parent"] if e["parent"] is not None else m
                prev = at.get((src, e["round"] - 1))
                if prev is not None:
                    ax.plot(
                        [e["round"] - 1, e["round"]],
                        [value(prev, key), value(e, key)],
                        ls="--" if e["parent"] is not None else "-",
                        color=colors[m],
                        lw=0.9 if e["parent"] is not None else 1.4,
                    )
        ax.set_xticks(sorted({e["round"] for e in lineage}))
        ax.set_ylabel(key if key != "score" else state["metric"], fontsize=7)
        if key != "score" and all(isinstance(e["params"].get(key), float) for e in lineage):
            vals = [e["params"][key] for e in lineage]
            if min(vals) > 0 and max(vals) / min(vals) > 20:
                ax.set_yscale("log")
        ax.tick_params(labelsize=7)
    fig.axes[0].legend(fontsize=6, ncol=len(members), loc="best")
    fig.axes[-1].set_xlabel("round")
    fig.tight_layout()
    fig.savefig(path)
