"""What a study found: ``trials.csv`` always; ``best.json`` and ``history.png`` for one
objective; ``pareto.json``, ``pareto.csv`` and ``front.png`` (2 objectives) or
``parallel.png`` (3+) for several; and ``steerl tune export``'s recipe.

The Pareto set of a multi-objective study is computed with ``steerl.pareto.front`` over the
completed, feasible trials (it agrees with Optuna's ``study.best_trials``), with the
hypervolume of the trials' front against the reference point of the worst value seen per
objective (or ``ref`` when given).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from steerl.pareto.front import hypervolume, knee_point, non_dominated


def _dirs(study: Any) -> list[str]:
    """The study's directions as ``steerl.pareto.front`` spells them ('max' / 'min')."""
    return ["max" if d.name == "MAXIMIZE" else "min" for d in study.directions]


def _feasible(t: Any) -> bool:
    return all(v <= 0 for v in t.user_attrs.get("constraints", []))


def completed(study: Any) -> list[Any]:
    from optuna.trial import TrialState

    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]


def pareto_trials(study: Any) -> tuple[list[Any], np.ndarray]:
    """Completed feasible trials on the front, and the mask over all completed feasible ones."""
    trials = [t for t in completed(study) if _feasible(t)]
    if not trials:
        return [], np.zeros(0, dtype=bool)
    pts = np.array([t.values for t in trials], dtype=np.float64)
    mask = non_dominated(pts, _dirs(study))
    return [t for t, m in zip(trials, mask) if m], mask


def _row(t: Any, names: list[str], params: list[str]) -> dict[str, Any]:
    values = t.values or [None] * len(names)
    row: dict[str, Any] = {"trial": t.number, "state": t.state.name.lower()}
    row.update(dict(zip(names, values)))
    row.update({p: t.params.get(p) for p in params})
    row["feasible"] = _feasible(t)
    row["stopped_by"] = t.user_attrs.get("stopped_by") or t.user_attrs.get("error")
    row["seconds"] = t.duration.total_seconds() if t.duration else None
    row["run_dir"] = t.user_attrs.get("run_dir")
    return row


def write_results(study: Any, out_dir: str | Path, ref: list[float] | None = None) -> dict:
    """Write the study's files into ``out_dir``; returns the summary written to JSON."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tune = study.user_attrs.get("steerl.tune", {})
    names = [o["metric"] for o in tune.get("objectives", [])] or [
        f"objective_{i}" for i in range(len(study.directions))
    ]
    directions = _dirs(study)
    trials = [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("surplus")]
    params = sorted({p for t in trials for p in t.params})
    with (out / "trials.csv").open("w", newline="") as fh:
        cols = ["trial", "state", *names, *params, "feasible", "stopped_by", "seconds", "run_dir"]
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        for t in trials:
            w.writerow(_row(t, names, params))
    states = [t.state.name.lower() for t in trials]
    summary: dict[str, Any] = {
        "study": study.study_name,
        "objectives": [{"metric": n, "direction": d + "imize"} for n, d in zip(names, directions)],
        "trials": {s: states.count(s) for s in sorted(set(states))},
    }
    if len(directions) == 1:
        summary.update(_single(study, out, names[0], directions[0]))
        (out / "best.json").write_text(json.dumps(summary, indent=1))
    else:
        summary.update(_multi(study, out, names, directions, params, ref))
        (out / "pareto.json").write_text(json.dumps(summary, indent=1))
    return summary


def _trial_info(t: Any) -> dict[str, Any]:
    return {
        "trial": t.number,
        "values": list(t.values),
        "params": dict(t.params),
        "run_dir": t.user_attrs.get("run_dir"),
        "metrics": t.user_attrs.get("metrics"),
    }


def _single(study: Any, out: Path, name: str, direction: str) -> dict[str, Any]:
    trials = [t for t in completed(study) if _feasible(t)]
    if not trials:
        return {"best": None}
    sign = 1.0 if direction == "max" else -1.0
    best = max(trials, key=lambda t: sign * t.values[0])
    _plot_history(study, out / "history.png", name, direction)
    return {"best": _trial_info(best)}


def _multi(study, out, names, directions, params, ref) -> dict[str, Any]:
    front, mask = pareto_trials(study)
    feasible = [t for t in completed(study) if _feasible(t)]
    info: dict[str, Any] = {"pareto": [_trial_info(t) for t in front]}
    if not feasible:
        return info | {"hypervolume": 0.0, "ref": ref}
    pts = np.array([t.values for t in feasible], dtype=np.float64)
    if ref is None:  # the worst value seen per objective
        worst = [
            pts[:, j].min() if d == "max" else pts[:, j].max() for j, d in enumerate(directions)
        ]
        ref = [float(v) for v in worst]
    info["hypervolume"] = hypervolume(pts, ref, directions)
    info["ref"] = ref
    info["knee"] = front[knee_point(pts[mask], directions)].number if len(front) else None
    with (out / "pareto.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["trial", *names, *params, "knee", "run_dir"])
        for t in front:
            w.writerow(
                [
                    t.number,
                    *t.values,
                    *(t.params.get(p) for p in params),
                    t.number == info["knee"],
                    t.user_attrs.get("run_dir"),
                ]
            )
    from steerl.pareto import plot_front_2d, plot_parallel

    labels = [f"#{t.number}" for t in feasible]
    if len(names) == 2:
        plot_front_2d(
            pts,
            out / "front.png",
            directions,
            names,
            labels=labels,
            title=f"study {study.study_name}: trials and their Pareto front",
        )
    else:
        plot_parallel(
            pts,
            out / "parallel.png",
            directions,
            names,
            title=f"study {study.study_name}: trials (front highlighted)",
        )
    return info


def _plot_history(study: Any, path: Path, name: str, direction: str) -> None:
    from steerl.pareto.plots import _figure

    trials = sorted(completed(study), key=lambda t: t.number)
    if not trials:
        return
    xs = [t.number for t in trials]
    ys = [t.values[0] for t in trials]
    best = np.maximum.accumulate(ys) if direction == "max" else np.minimum.accumulate(ys)
    fig = _figure(6.0, 3.6)
    ax = fig.add_subplot(1, 1, 1)
    ax.scatter(xs, ys, s=14, color="#888888", label="completed trial")
    ax.step(xs, best, where="post", color="#1f77b4", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(name)
    ax.set_title(f"study {study.study_name}")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def export_recipe(study: Any, trial_number: int | None = None) -> tuple[str, int]:
    """A recipe (YAML text) of the study's best trial (the knee of the front for several
    objectives), or of ``trial_number``: the base recipe plus that trial's parameters."""
    from steerl.config import apply_overrides, build_config
    from steerl.tuning.space import as_overrides

    done = [t for t in completed(study) if _feasible(t)]
    if trial_number is not None:
        match = [t for t in study.get_trials(deepcopy=False) if t.number == trial_number]
        if not match or match[0].state.name != "COMPLETE":
            have = [t.number for t in done]
            raise ValueError(f"trial {trial_number} is not a completed trial; completed: {have}")
        chosen = match[0]
    elif not done:
        raise ValueError(f"study {study.study_name!r} has no completed feasible trial yet")
    elif len(study.directions) == 1:
        sign = 1.0 if study.directions[0].name == "MAXIMIZE" else -1.0
        chosen = max(done, key=lambda t: sign * t.values[0])
    else:
        front, mask = pareto_trials(study)
        pts = np.array([t.values for t in front], dtype=np.float64)
        chosen = front[knee_point(pts, _dirs(study))]
    base = json.loads(json.dumps(study.user_attrs["steerl.base"]))
    base.get("train", {}).pop("out_dir", None)
    apply_overrides(base, as_overrides(dict(chosen.params)))
    cfg = build_config(base)  # validates the exported recipe
    header = (
        f"# exported by steerl tune export from study {study.study_name!r}, trial "
        f"{chosen.number}: values {list(chosen.values)}\n"
        f"# parameters: {json.dumps(chosen.params)}\n"
    )
    body = cfg.model_dump(mode="json", exclude={"tune"})
    return header + yaml.safe_dump(body, sort_keys=False), chosen.number
