"""Uniform sampling vs each curriculum: RL steps to a target greedy accuracy.

The setup (``SETUP``, on top of the default recipe) gives uniform sampling something to
waste: the warm-up demonstrates levels 1 and 2 correctly and level 3 only weakly (most
level-3 demonstrations drop every carry), so RL starts with levels 1 and 2 nearly solved
(always-1 groups, dropped by DAPO filtering) and level 3 partly right. RL samples from all
three levels; the question is how many RL steps each curriculum needs until the greedy
accuracy on the hardest trained level (3) reaches ``--target``.

For each seed the warm-up runs once (``train.steps=0``); its run directory is copied per
curriculum and resumed with ``curriculum.name=<arm> train.steps=<N> train.eval_every=<K>``,
so every arm starts from the very same policy, optimizer state and RNG. Prints the steps to
each target per seed (evaluated every K steps; ">N" when not reached), the mean (a run that
misses counts as N + K, which flatters the arm that misses), the ratio to uniform, and the
final accuracy per level. The ``oracle`` arm is no curriculum: uniform sampling restricted to
the target level (``curriculum.levels``), the informed choice a selector has to discover; it
shows how much focusing can buy in this setup.

    python benchmarks/curriculum.py [--seeds 0 1 2] [--arms uniform competence ...]
        [--steps 200] [--eval-every 5] [--target 0.3 0.45] [--level 3] [--jobs 2]
        [--rl-set KEY=VALUE ...] [--root DIR | --from DIR] [--plot PNG]

``--plot PNG`` also draws the greedy accuracy on the target level against the RL step, mean
over the seeds, one line per curriculum (the figure in docs/advanced-training/).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

#: The benchmark task, on top of the default recipe (see the module docstring).
SETUP = [
    "warmup.levels=[1,2,3]",
    "warmup.flaw.level=3",
    "warmup.flaw.fraction=0.8",
    "task.arithmetic.train_per_level=1000",
    "optim.lr=5e-4",
    "train.threads=1",
    "logging.tensorboard=false",
    "logging.samples_every=0",
    "logging.report=false",
]

ARMS = ["uniform", "pacing", "competence", "adarft", "learnability", "bandit", "prioritized"]

#: Not a curriculum: uniform sampling restricted to the target level (``curriculum.levels``),
#: the informed choice no selector knows in advance; a reference for how much focus can buy.
ORACLE = "oracle"

#: Per-arm overrides (besides curriculum.name).
ARM_OVERRIDES: dict[str, list[str]] = {}


def steerl(*args: str) -> None:
    cmd = [sys.executable, "-m", "steerl", "train", *args, "-q"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stderr[-3000:]}")


def run_arm(root: Path, seed: int, arm: str, args: argparse.Namespace) -> None:
    """Copy the seed's warm-up and resume it with this curriculum."""
    run = root / f"{arm}-{seed}"
    if run.exists():
        shutil.rmtree(run)
    shutil.copytree(root / f"warmup-{seed}", run)
    name = [f"curriculum.name={arm}"]
    if arm == ORACLE:
        name = ["curriculum.name=uniform", f"curriculum.levels=[{args.level}]"]
    steerl(
        str(run),
        *name,
        f"train.steps={args.steps}",
        f"train.eval_every={args.eval_every}",
        *ARM_OVERRIDES.get(arm, []),
        *args.rl_set,
    )


def eval_curve(run: Path, level: str) -> list[tuple[int, float]]:
    """(RL step, greedy accuracy on ``level``) of every evaluation after the warm-up."""
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    warm = max((r["step"] for r in recs if r.get("phase") == "warmup"), default=0)
    out = []
    for r in recs:
        if r.get("eval/tag") in ("rl", "final") and r["step"] > warm:
            out.append((r["step"] - warm, r[f"eval/accuracy/level_{level}"]))
    return out


def kept_share(run: Path) -> float:
    """Mean share of each RL step's groups that carried signal (not dropped by DAPO)."""
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return statistics.mean(r["train/kept_groups"] for r in recs if r.get("phase") == "rl")


def steps_to(curve: list[tuple[int, float]], target: float) -> int | None:
    return next((s for s, a in curve if a >= target - 1e-9), None)


def fmt(xs: list[float], scale: float = 100.0) -> str:
    m = statistics.mean(xs) * scale
    s = (statistics.stdev(xs) if len(xs) > 1 else 0.0) * scale
    return f"{m:5.1f} ± {s:4.1f}"


def plot_curves(root: Path, args: argparse.Namespace, path: Path) -> None:
    """Mean greedy accuracy on the target level vs RL step, one line per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for arm in args.arms:
        curves = [dict(eval_curve(root / f"{arm}-{seed}", args.level)) for seed in args.seeds]
        steps = sorted(set.intersection(*(set(c) for c in curves)))
        mean = [100 * statistics.mean(c[s] for c in curves) for s in steps]
        style = {"ls": "--", "c": "black"} if arm == ORACLE else {}
        ax.plot(steps, mean, label=arm, lw=1.4, **style)
    for t in args.target:
        ax.axhline(100 * t, c="grey", lw=0.6, ls=":")
    ax.set_xlabel("RL step")
    ax.set_ylabel(f"greedy accuracy, level {args.level} (%)")
    ax.set_title(f"Mean over seeds {', '.join(map(str, args.seeds))}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--arms", nargs="+", default=[*ARMS, ORACLE])
    ap.add_argument("--steps", type=int, default=200, help="RL steps per run (the budget)")
    ap.add_argument("--eval-every", type=int, default=5)
    ap.add_argument(
        "--target", type=float, nargs="+", default=[0.3, 0.45], help="greedy accuracies to reach"
    )
    ap.add_argument("--level", default="3", help="the level whose accuracy is the target")
    ap.add_argument("--warmup-steps", type=int, default=3000)
    ap.add_argument("--set", nargs="*", default=[], help="extra overrides for every run")
    ap.add_argument("--rl-set", nargs="*", default=[], help="extra overrides for the RL runs")
    ap.add_argument("--jobs", type=int, default=1, help="runs at a time (each on one thread)")
    ap.add_argument("--root", type=Path, help="run folder (finished runs in it are kept)")
    ap.add_argument("--from", dest="reuse", type=Path, help="re-print the runs under this folder")
    ap.add_argument("--plot", type=Path, help="also plot the accuracy curves to this PNG")
    args = ap.parse_args()
    root = args.reuse or args.root or Path(tempfile.mkdtemp(prefix="steerl-curriculum-"))
    setup = [*SETUP, f"warmup.steps={args.warmup_steps}", *args.set]
    t_start = time.perf_counter()
    jobs = ThreadPoolExecutor(max_workers=args.jobs)
    if not args.reuse:
        warmups = [
            jobs.submit(
                steerl,
                "default",
                f"train.out_dir={root / f'warmup-{seed}'}",
                f"train.seed={seed}",
                "train.steps=0",
                *setup,
            )
            for seed in args.seeds
            if not (root / f"warmup-{seed}" / "summary.json").is_file()
        ]
        for f in warmups:
            f.result()
        runs = [
            jobs.submit(run_arm, root, seed, arm, args)
            for seed in args.seeds
            for arm in args.arms
            if not (root / f"{arm}-{seed}" / "summary.json").is_file()
        ]
        for f in runs:
            f.result()
    wall = time.perf_counter() - t_start

    budget, k = args.steps, args.eval_every
    targets = ", ".join(f"{100 * t:.0f}%" for t in args.target)
    print(
        f"\ncurricula on the synthetic task, seeds {args.seeds}: RL steps until greedy accuracy "
        f"on level {args.level} reaches {targets} (evaluated every {k} steps, budget {budget} "
        f"steps; a miss counts as {budget + k}); {platform.machine()}, {os.cpu_count()} cores"
        + (f"; RL runs with {' '.join(args.rl_set)}" if args.rl_set else "")
        + "\n"
    )
    warm_acc = [
        json.loads((root / f"warmup-{s}" / "summary.json").read_text())["warmup"]
        for s in args.seeds
    ]
    levels = sorted(warm_acc[0], key=int)
    cols = ["curriculum"]
    for t in args.target:
        cols += [f"steps to {100 * t:.0f}% (per seed)", "mean", "vs uniform"]
    cols += ["informative groups (%)", *[f"final level {lv} (%)" for lv in levels]]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    row = ["(after warm-up)", *[""] * (3 * len(args.target) + 1)]
    row += [fmt([w[lv] for w in warm_acc]) for lv in levels]
    print("| " + " | ".join(row) + " |")
    base: dict[float, float] = {}
    for arm in args.arms:
        runs = [root / f"{arm}-{seed}" for seed in args.seeds]
        curves = [eval_curve(run, args.level) for run in runs]
        finals = [json.loads((run / "summary.json").read_text())["final"] for run in runs]
        row = [f"{arm} (uniform on level {args.level} only)" if arm == ORACLE else arm]
        for t in args.target:
            hits = [steps_to(c, t) for c in curves]
            mean = statistics.mean(h if h is not None else budget + k for h in hits)
            if arm == "uniform":
                base[t] = mean
            ratio = f"{mean / base[t]:.2f}×" if base.get(t) else "—"
            row += [", ".join(str(h) if h is not None else f">{budget}" for h in hits)]
            row += [f"{mean:.1f}", ratio]
        row += [fmt([kept_share(run) for run in runs])]
        row += [fmt([f[lv] for f in finals]) for lv in levels]
        print("| " + " | ".join(row) + " |")
    print(f"\nrun directories under {root}; wall time {wall / 60:.1f} min")
    if args.plot:
        plot_curves(root, args, args.plot)


if __name__ == "__main__":
    main()
