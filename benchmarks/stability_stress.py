"""Training stability under a too-high RL learning rate: the stress recipe with and without
its stability features.

``recipes/stress.yaml`` is the default task with an RL learning rate far above the default's.
For each seed, its SFT warm-up runs once (``train.steps=0``); the run directory is copied per
arm and resumed for the RL steps, so both arms start from the very same warmed-up policy:

- ``with``: the recipe as written (its stability features on);
- ``without``: the same run with every stability feature turned off by overrides (no
  clipping, no non-finite skip, no spike detectors, guards, plateau monitor or early stop).

Prints greedy accuracy per level after warm-up and after RL (mean ± std over seeds), how many
runs diverged on that level (a non-finite loss, a crash, or final accuracy below the run's own
warm-up accuracy), and per run what the stability layer did (``summary["stability"]``).

    python benchmarks/stability_stress.py [--seeds 0 1 2] [--steps N] [--threads 1]
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
from pathlib import Path

#: Overrides that turn every stability feature of the recipe off (the "without" arm).
WITHOUT = [
    "stability.clip=none",
    "stability.max_grad_norm=null",
    "stability.skip_nonfinite=false",
    "stability.spikes=[]",
    "stability.guards.kl_max=null",
    "stability.guards.entropy_min=null",
    "stability.guards.clip_fraction_max=null",
    "stability.plateau=null",
    "stability.early_stop=null",
]
ARMS = {"without": WITHOUT, "with": []}


def steerl(*args: str, log: Path) -> bool:
    """``steerl train ARGS -q``; False (and the log kept) when it fails."""
    cmd = [sys.executable, "-m", "steerl", "train", *args, "-q"]
    with log.open("w") as f:
        return subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode == 0


def fmt(xs: list[float], scale: float = 100.0) -> str:
    if not xs:
        return "—"
    m = statistics.mean(xs) * scale
    s = (statistics.stdev(xs) if len(xs) > 1 else 0.0) * scale
    return f"{m:5.1f} ± {s:4.1f}"


def nonfinite_steps(run: Path) -> int:
    """RL steps whose loss or gradient norm was NaN/inf (logged as null)."""
    n = 0
    for line in (run / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("phase") != "rl":
            continue
        if any(k in rec and rec[k] is None for k in ("train/loss", "train/grad_norm")):
            n += 1
    return n


def collect(run: Path, ok: bool, warm: dict[str, float]) -> dict:
    """What one arm's run did: final accuracy (None if it crashed), divergence, stability."""
    out: dict = {"ok": ok, "warmup": warm, "final": None, "stability": None, "stop": None}
    summary_file = run / "summary.json"
    if ok and summary_file.is_file():
        s = json.loads(summary_file.read_text())
        out.update(final=s["final"], stability=s["stability"], stop=s["stop_reason"])
        out["rl_steps"], out["wall"] = s["rl_steps"], s["wall_seconds"]
    out["nonfinite"] = nonfinite_steps(run) if (run / "metrics.jsonl").is_file() else 0
    return out


def diverged(r: dict, level: str | None = None) -> bool:
    """A crash, a non-finite step, or final accuracy below warm-up (on ``level`` / any)."""
    if r["final"] is None or r["nonfinite"]:
        return True
    levels = [level] if level is not None else list(r["warmup"])
    return any(r["final"][lv] < r["warmup"][lv] for lv in levels)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--recipe", default="stress")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, help="RL steps (default: the recipe's train.steps)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    ap.add_argument("--from", dest="reuse", type=Path, help="re-print the runs under this folder")
    args = ap.parse_args()

    from steerl.config import load_config

    recipe = load_config(args.recipe)
    steps = args.steps or recipe.train.steps
    root = args.reuse or Path(tempfile.mkdtemp(prefix="steerl-stress-"))
    results: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    started = time.perf_counter()
    for seed in args.seeds:
        warm = root / f"warmup-{seed}"
        common = [f"train.threads={args.threads}", "logging.report=false"]
        if not args.reuse:
            ok = steerl(
                args.recipe,
                f"train.out_dir={warm}",
                f"train.seed={seed}",
                "train.steps=0",
                *common,
                log=root / f"warmup-{seed}.log",
            )
            if not ok:
                sys.exit(f"warm-up of seed {seed} failed: see {root / f'warmup-{seed}.log'}")
        warm_acc = json.loads((warm / "summary.json").read_text())["warmup"]
        for arm, overrides in ARMS.items():
            run = root / f"{arm}-{seed}"
            ok = True
            if not args.reuse:
                shutil.copytree(warm, run)
                ok = steerl(
                    str(run),
                    f"train.steps={steps}",
                    *common,
                    *overrides,
                    log=root / f"{arm}-{seed}.log",
                )
            else:
                ok = (run / "summary.json").is_file()
            results[arm].append(collect(run, ok, warm_acc))
            print(f"seed {seed} {arm}: final {results[arm][-1]['final']}", file=sys.stderr)

    levels = sorted(results["with"][0]["warmup"], key=int)
    n = len(args.seeds)
    print(
        f"\n{args.recipe} recipe (RL lr {recipe.optim.lr:g}), seeds {args.seeds}, {steps} RL steps "
        f"from a shared warm-up; {platform.machine()}, {os.cpu_count()} cores, "
        f"{args.threads} thread(s) per run\n"
    )
    cols = ["arm", "level", "after warm-up", "final", "runs with NaN/collapse"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for arm, runs in results.items():
        for lv in levels:
            done = [r for r in runs if r["final"] is not None]
            row = [
                f"{arm} stability",
                lv,
                fmt([r["warmup"][lv] for r in runs]),
                fmt([r["final"][lv] for r in done]),
                f"{sum(diverged(r, lv) for r in runs)}/{n}",
            ]
            print("| " + " | ".join(row) + " |")
    print(
        "\nGreedy accuracy (%) on the held-out prompts, mean ± std over seeds. Collapse: final "
        "accuracy below the run's own after-warm-up accuracy on that level."
    )

    cols = [
        "arm",
        "seed",
        "diverged",
        "non-finite steps",
        "skipped",
        "spikes",
        "guard hits",
        "rollbacks",
        "lr reductions",
        "plateau events (lr scale)",
        "clipped updates",
        "stop",
    ]
    print("\n| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for arm, runs in results.items():
        for seed, r in zip(args.seeds, runs):
            h = r["stability"]
            if h is None:
                row = [arm, str(seed), "crashed", str(r["nonfinite"]), *["—"] * 8]
            else:
                clip = h["clip"]
                row = [
                    arm,
                    str(seed),
                    "yes" if diverged(r) else "no",
                    str(r["nonfinite"]),
                    str(h["skipped_steps"]),
                    str(sum(h["spikes"].values())),
                    str(sum(h["guard_hits"].values())),
                    str(h["rollbacks"]),
                    str(h["lr_reductions"]),
                    f"{h['plateau_events']} ({h['plateau_lr_scale']:.3g})",
                    f"{clip['clipped']}/{clip['updates']} ({clip['mode']})",
                    r["stop"] or "—",
                ]
            print("| " + " | ".join(row) + " |")

    with_ok = all(not diverged(r) for r in results["with"])
    without_div = all(diverged(r) for r in results["without"])
    print(
        f"\ntarget: with stability >= warm-up on every level in every run: "
        f"{'met' if with_ok else 'NOT met'}; without stability diverges in every run: "
        f"{'met' if without_div else 'NOT met'}"
    )
    print(f"total wall time {time.perf_counter() - started:.0f} s; run directories under {root}")


if __name__ == "__main__":
    main()
