"""Preference sweeps and soups: train/evaluate one run per preference vector, report the front.

``sweep``: for each preference vector of ``simplex(K, N)`` (K rewards) train a run with
``objectives.preference=[...]`` in ``OUT/runs/p<i>`` and evaluate it on every reward (one
subprocess ``python -m steerl.pareto.evaluate RUN --train ...`` per point, ``jobs`` at a
time, training exactly as ``steerl train`` and writing ``objectives.json``), then write
``OUT/pareto.json``, ``OUT/pareto.csv`` and ``OUT/front.png``.
Resumable: a run whose ``summary.json`` says completed is not retrained, and one with an
``objectives.json`` is not re-evaluated. With ``from_warmup`` (a finished run directory, e.g.
trained with ``train.steps=0``) every point starts from a copy of it and resumes with the
preference and the overrides (``train.steps`` from RECIPE, or from the warm-up's recipe, unless
overridden), so the SFT warm-up runs once for the whole sweep.

"Targeted trade-offs": each point's angle (degrees) and cosine between its objective vector,
normalised to [0, 1] per objective by the front's ranges, and its preference vector; small
angle (cosine near 1) means the run landed on the ray its preference asked for (``null`` when
the normalised vector is 0). pareto.json also gets their mean and maximum (``ray``), and each
run's ``summary.json`` its own values (``pareto/ray_cosine``, ``pareto/ray_angle_deg``).

``soup_points``: rewarded-soup mixtures of checkpoints evaluated with one Trainer.
"""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from steerl.pareto.evaluate import OBJECTIVES_FILE
from steerl.pareto.front import hypervolume, knee_point, non_dominated, simplex


class SweepError(ValueError):
    """A mistake the user can fix (bad --weights, --ref, warm-up directory, failed run)."""


def parse_weights(spec: str) -> int:
    """``simplex:N`` -> N (divisions >= 1)."""
    m = re.fullmatch(r"\s*simplex\s*:\s*(-?\d+)\s*", spec or "")
    if not m:
        raise SweepError(
            f"--weights {spec!r} is not understood; use simplex:N (N >= 1 divisions, e.g. "
            "simplex:4 gives 5 preference vectors for 2 rewards)"
        )
    n = int(m.group(1))
    if n < 1:
        raise SweepError(f"--weights {spec!r}: simplex:N needs N >= 1 divisions, got {n}")
    return n


def parse_ref(spec: str | None, k: int) -> list[float] | None:
    if spec is None:
        return None
    try:
        ref = [float(x) for x in spec.replace(" ", "").strip("[]").split(",")]
    except ValueError:
        raise SweepError(f"--ref {spec!r} must be {k} comma-separated numbers") from None
    if len(ref) != k or not all(math.isfinite(x) for x in ref):
        raise SweepError(f"--ref {spec!r} must be {k} comma-separated finite numbers")
    return ref


def _fmt(v: float) -> str:
    return repr(round(float(v), 6))


def preference_override(pref: Sequence[float]) -> str:
    return "objectives.preference=[" + ",".join(_fmt(x) for x in pref) + "]"


def _completed(run: Path) -> bool:
    try:
        return bool(json.loads((run / "summary.json").read_text()).get("completed"))
    except (OSError, ValueError):
        return False


def _run(cmd: list[str], log: Path) -> None:
    with log.open("a") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-8:])
        raise SweepError(f"command failed (exit {rc}), see {log}:\n{tail}")


def run_point(
    run: Path,
    pref: Sequence[float],
    recipe: str | None,
    overrides: Sequence[str],
    from_warmup: Path | None,
) -> tuple[dict[str, float], bool]:
    """Train (unless completed) and evaluate (unless done) one point; (objectives, trained)."""
    run.parent.mkdir(parents=True, exist_ok=True)
    log = run.parent / f"{run.name}.log"
    trained = False
    obj_file = run / OBJECTIVES_FILE
    py = [sys.executable, "-m", "steerl.pareto.evaluate", str(run)]
    if not _completed(run):
        args = [*overrides, preference_override(pref), "logging.progress=false"]
        if (run / "config.yaml").is_file():  # interrupted earlier: resume it
            train = [str(run), *args]
        elif from_warmup is not None:
            shutil.copytree(from_warmup, run, dirs_exist_ok=True)
            for stale in ("summary.json", OBJECTIVES_FILE, "report.html"):
                (run / stale).unlink(missing_ok=True)
            train = [str(run), *args]
        else:
            train = [*([recipe] if recipe else []), *args, f"train.out_dir={run}"]
        obj_file.unlink(missing_ok=True)
        _run([*py, "--train", *train], log)
        trained = True
    if not obj_file.is_file():
        _run(py, log)
    return json.loads(obj_file.read_text())["objectives"], trained


def check_warmup(path: Path) -> None:
    if not (path / "config.yaml").is_file() or not (path / "checkpoints").is_dir():
        raise SweepError(
            f"--from-warmup {str(path)!r} is not a finished run directory (config.yaml and "
            "checkpoints/ expected); make one with: steerl train RECIPE train.steps=0 "
            "train.out_dir=DIR"
        )


def _normalised(points: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(points scaled to [0, 1] per objective by the front's ranges, lo, hi)``."""
    front = points[mask]
    lo, hi = front.min(0), front.max(0)
    span = np.where(hi > lo, hi - lo, 1.0)
    return (points - lo) / span, lo, hi


def ray_cosines(points: np.ndarray, prefs: np.ndarray, mask: np.ndarray) -> list[float | None]:
    """Cosine between each point (normalised by the front's per-objective ranges) and its
    preference vector: 1 on the ray; None where the normalised point is the zero vector."""
    x, _, _ = _normalised(points, mask)
    out: list[float | None] = []
    for xi, p in zip(x, prefs):
        nx, npf = np.linalg.norm(xi), np.linalg.norm(p)
        if nx < 1e-12 or npf < 1e-12:
            out.append(None)
            continue
        out.append(float(np.clip(xi @ p / (nx * npf), -1.0, 1.0)))
    return out


def angles(points: np.ndarray, prefs: np.ndarray, mask: np.ndarray) -> list[float | None]:
    """Degrees between each point (normalised by the front's per-objective ranges) and its
    preference vector; None where the normalised point is the zero vector."""
    return [
        None if c is None else round(math.degrees(math.acos(c)), 2)
        for c in ray_cosines(points, prefs, mask)
    ]


def write_ray_to_runs(result: dict[str, Any]) -> None:
    """Add the sweep's ray closeness of each point to its run's ``summary.json``.

    Keys ``pareto/ray_cosine``, ``pareto/ray_angle_deg``, ``pareto/on_front`` and
    ``pareto/preference``: the values of ``pareto.json`` (normalised by this sweep's front,
    so they are rewritten whenever the sweep is summarised again).
    """
    for r in result["points"]:
        path = Path(r["run_dir"]) / "summary.json" if r.get("run_dir") else None
        if path is None or not path.is_file():
            continue
        try:
            summary = json.loads(path.read_text())
        except ValueError:
            continue
        summary.update(
            {
                "pareto/preference": r["preference"],
                "pareto/ray_cosine": r.get("ray_cosine"),
                "pareto/ray_angle_deg": r.get("angle_deg"),
                "pareto/on_front": r.get("on_front"),
            }
        )
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(summary, indent=1))
        tmp.replace(path)


def default_ref(points: np.ndarray) -> list[float]:
    """min of each objective minus 10% of its range (0.1 when the range is 0)."""
    lo, hi = points.min(0), points.max(0)
    margin = np.where(hi > lo, 0.1 * (hi - lo), 0.1)
    return [float(x) for x in lo - margin]


def summarise(
    names: list[str],
    rows: list[dict[str, Any]],
    ref: list[float] | None,
) -> dict[str, Any]:
    """Front flags, angles, knee and hypervolume for rows with 'preference' and 'objectives'."""
    pts = np.array([[r["objectives"][n] for n in names] for r in rows], dtype=np.float64)
    prefs = np.array([r["preference"] for r in rows], dtype=np.float64)
    mask = non_dominated(pts)
    cos = ray_cosines(pts, prefs, mask)
    ang = angles(pts, prefs, mask)
    for r, on, a, c in zip(rows, mask, ang, cos):
        r["on_front"] = bool(on)
        r["angle_deg"] = a
        r["ray_cosine"] = None if c is None else round(c, 6)
    _, lo, hi = _normalised(pts, mask)
    known = [a for a in ang if a is not None]
    ref = ref if ref is not None else default_ref(pts)
    return {
        "objectives": names,
        "directions": ["max"] * len(names),
        "ref": ref,
        "hypervolume": hypervolume(pts[mask], ref),
        "knee": int(knee_point(pts)),
        "ray": {  # how close the points land to their preference rays (see angles())
            "normalised_by": "front ranges",
            "front_min": lo.tolist(),
            "front_max": hi.tolist(),
            "mean_angle_deg": round(float(np.mean(known)), 2) if known else None,
            "max_angle_deg": round(float(np.max(known)), 2) if known else None,
        },
        "points": rows,
    }


def write_csv(path: Path, names: list[str], rows: list[dict[str, Any]], extra: list[str]) -> None:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(
            [
                "index",
                *[f"pref_{n}" for n in names],
                *names,
                "on_front",
                "angle_deg",
                "ray_cosine",
                *extra,
            ]
        )
        for i, r in enumerate(rows):
            w.writerow(
                [
                    i,
                    *[_fmt(x) for x in r["preference"]],
                    *[_fmt(r["objectives"][n]) for n in names],
                    int(r["on_front"]),
                    "" if r.get("angle_deg") is None else r["angle_deg"],
                    "" if r.get("ray_cosine") is None else r["ray_cosine"],
                    *[r.get(e, "") for e in extra],
                ]
            )


def plot(
    path: Path, names: list[str], groups: list[tuple[str, list[dict[str, Any]]]]
) -> Path | None:
    """front.png of all points (labels: group prefix + index); None for a single objective."""
    from steerl.pareto import plot_front_2d, plot_parallel

    rows = [(f"{prefix}{i}", r) for prefix, rs in groups for i, r in enumerate(rs)]
    if len(names) < 2 or not rows:
        return None
    pts = np.array([[r["objectives"][n] for n in names] for _, r in rows])
    title = "Pareto front" + (" (s: soups)" if any(p == "s" for p, _ in groups) else "")
    if len(names) == 2:
        return plot_front_2d(pts, path, names=names, labels=[lab for lab, _ in rows], title=title)
    return plot_parallel(pts, path, names=names, title=title)


def sweep(
    recipe: str | None,
    overrides: Sequence[str],
    divisions: int,
    out: Path,
    jobs: int = 1,
    ref: str | None = None,
    from_warmup: Path | None = None,
    on_point: Callable[[int, dict[str, float], bool], None] | None = None,
    storage: str | None = None,
    study: str | None = None,
) -> dict[str, Any]:
    """Run the sweep (see the module docstring); returns the pareto.json content.

    With ``storage`` (an SQLAlchemy URL) the points are trials of the shared Optuna study
    ``study`` (default ``sweep-<recipe>``), so several machines share the sweep
    (``steerl.pareto.shared``)."""
    from steerl.config import load_config

    if from_warmup is not None:
        check_warmup(from_warmup)
        if not any(o.startswith("train.steps=") for o in overrides):
            # the warm-up ran with train.steps=0: take the RL length from the recipe
            warm = load_config(from_warmup / "config.yaml")
            steps = load_config(recipe or warm.recipe).train.steps
            overrides = [*overrides, f"train.steps={steps}"]
        cfg = load_config(from_warmup / "config.yaml", list(overrides))
    else:
        cfg = load_config(recipe, list(overrides))
    names = [r.label for r in cfg.rewards]
    prefs = simplex(len(names), divisions)
    ref_v = parse_ref(ref, len(names))
    # validate one point's config up front (wrong length, scheduled weights, ...)
    base = from_warmup / "config.yaml" if from_warmup is not None else recipe
    load_config(base, [*overrides, preference_override(prefs[0])])
    out.mkdir(parents=True, exist_ok=True)
    runs = out / "runs"

    def one(i: int) -> dict[str, Any]:
        run = runs / f"p{i}"
        obj, trained = run_point(run, prefs[i].tolist(), recipe, overrides, from_warmup)
        if on_point is not None:
            on_point(i, obj, trained)
        return {"preference": prefs[i].tolist(), "objectives": obj, "run_dir": str(run)}

    if storage is not None:
        from steerl.pareto.shared import fingerprint, run_shared

        fp = fingerprint(recipe, list(overrides), divisions, str(from_warmup))
        name = study or f"sweep-{cfg.recipe}"

        def work(_: int) -> list[dict[str, Any]]:
            return run_shared(storage, name, len(prefs), names, fp, one)

        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            rows = list(pool.map(work, range(max(1, jobs))))[0]
    else:
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            rows = list(pool.map(one, range(len(prefs))))
    result = summarise(names, rows, ref_v)
    result["weights"] = f"simplex:{divisions}"
    (out / "pareto.json").write_text(json.dumps(result, indent=1))
    write_ray_to_runs(result)
    write_csv(out / "pareto.csv", names, rows, ["run_dir"])
    png = plot(out / "front.png", names, [("p", rows)])
    result["plot"] = str(png) if png else None
    return result


def resolve_checkpoint(path: Path) -> Path:
    """A checkpoint folder, a .safetensors file, or a run directory (-> newest checkpoint)."""
    if (path / "config.yaml").is_file() and (path / "checkpoints").is_dir():
        from steerl.checkpoint import latest_checkpoint

        last = latest_checkpoint(path)
        if last is None:
            raise SweepError(f"run directory {str(path)!r} has no complete checkpoint")
        return last
    return path


#: adapter_config.json keys that must match the recipe's model.lora for a LoRA soup.
_LORA_KEYS = ("r", "lora_alpha", "target_modules", "modules_to_save", "use_dora", "use_rslora")


def _adapter_loader(trainer: Any, adapter_cfg: dict, name: str) -> Callable[[dict], None]:
    """``load(state_dict)`` of adapter tensors into the recipe's LoRA policy, after checking
    that the recipe's LoRA setup is the adapters' (else a ``SweepError`` before evaluation)."""
    from steerl.checkpoint import load_adapter
    from steerl.models import is_peft_model

    if not is_peft_model(trainer.model):
        raise SweepError(
            f"{name} holds LoRA adapters but the recipe's model.lora.enabled=false; pass the "
            "recipe (or run directory) the adapters were trained with"
        )
    own = trainer.model.peft_config["default"].to_dict()
    diff = []
    for k in _LORA_KEYS:
        mine, theirs = own.get(k), adapter_cfg.get(k)
        norm = [sorted(x) if isinstance(x, list | set | tuple) else x for x in (mine, theirs)]
        if norm[0] != norm[1]:
            diff.append(f"{k}: {norm[1]!r} in the adapters vs {norm[0]!r} in the recipe")
    if diff:
        raise SweepError(
            f"the adapters ({name}) were trained with another LoRA setup than the recipe's "
            f"model.lora: {'; '.join(diff)}"
        )

    def load(sd: dict) -> None:
        try:
            load_adapter(Path(name), trainer.model, sd)
        except RuntimeError as e:
            raise SweepError(str(e)) from None

    return load


def soup_points(
    checkpoints: Sequence[Path],
    steps: int,
    recipe: str,
    overrides: Sequence[str],
    out: Path,
    on_point: Callable[[int, list[float], dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """Evaluate ``simplex(len(checkpoints), steps)`` weight mixtures on every objective;
    writes soup.json / soup.csv (and front.png, with OUT/pareto.json's points if present)."""
    from steerl.config import load_config
    from steerl.pareto.soups import check_kinds, check_same_base, interpolate, load_checkpoint

    if len(checkpoints) < 2:
        raise SweepError("a soup needs at least two checkpoints")
    if steps < 1:
        raise SweepError(f"--steps must be >= 1, got {steps}")
    paths = [resolve_checkpoint(Path(c)) for c in checkpoints]
    adapters = check_kinds(paths)  # all LoRA adapters, or all full weights
    loaded = [load_checkpoint(p) for p in paths]
    sds = [sd for sd, _ in loaded]
    check_same_base(sds, [c for _, c in loaded], [str(c) for c in checkpoints])
    rp = Path(recipe)
    cfg = load_config(rp / "config.yaml" if rp.is_dir() else recipe, list(overrides))

    from steerl.pareto.evaluate import evaluate_objectives
    from steerl.trainer import Trainer

    out.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(cfg, out / "soup-trainer")
    if adapters:
        load = _adapter_loader(trainer, loaded[0][1], str(checkpoints[0]))
    else:
        own = trainer.model.state_dict()
        unknown = sorted(set(sds[0]) - set(own))
        if unknown:
            raise SweepError(
                f"the checkpoints do not fit the recipe's model ({cfg.model.name}): unknown "
                f"tensors {unknown[:5]}; pass the recipe (or run directory) they were trained "
                "with"
            )

        def load(sd: dict[str, Any]) -> None:
            trainer.model.load_state_dict(sd, strict=False)

    load(sds[0])  # a mismatch fails here, before any evaluation
    names = [r.label for r in cfg.rewards]
    rows: list[dict[str, Any]] = []
    for i, w in enumerate(simplex(len(paths), steps)):
        load(interpolate(sds, w.tolist()))
        obj = evaluate_objectives(trainer)
        if on_point is not None:
            on_point(i, w.tolist(), obj)
        rows.append({"preference": w.tolist(), "objectives": obj})
    result = summarise(names, rows, None)
    result["checkpoints"] = [str(p) for p in paths]
    (out / "soup.json").write_text(json.dumps(result, indent=1))
    write_csv(out / "soup.csv", names, rows, [])
    groups: list[tuple[str, list[dict[str, Any]]]] = []
    if (out / "pareto.json").is_file():
        groups.append(("p", json.loads((out / "pareto.json").read_text())["points"]))
    groups.append(("s", rows))
    png = plot(out / "front.png", names, groups)
    result["plot"] = str(png) if png else None
    return result
