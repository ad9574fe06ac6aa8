"""The embedded default recipe over several seeds: does RL (not more SFT) help?

Runs ``steerl train`` (the packaged default) once per seed, one after another, and prints
greedy accuracy per level after the SFT warm-up and after GRPO (mean ± std over seeds),
the change in points, and wall seconds per run. A control arm replaces GRPO by more SFT
on the same demonstrations (``--control-steps`` extra warm-up steps, about the wall time
of the RL phase) to show the gain comes from the verifier, not from training longer.

    python benchmarks/default_recipe.py            # 3 seeds + control
    python benchmarks/default_recipe.py --seeds 0 1 2 3 4 --no-control
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(out: Path, overrides: list[str]) -> dict:
    cmd = [sys.executable, "-m", "steerl", "train", "default", "-q", f"train.out_dir={out}"]
    t0 = time.perf_counter()
    subprocess.run(cmd + overrides, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    summary = json.loads((out / "summary.json").read_text())
    summary["process_seconds"] = wall
    (out / "process_seconds.txt").write_text(f"{wall:.2f}")
    return summary


def fmt(xs: list[float]) -> str:
    m = statistics.mean(xs)
    s = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{100 * m:5.1f} ± {100 * s:4.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--control-steps", type=int, default=500)
    ap.add_argument("--no-control", action="store_true")
    ap.add_argument("--from", dest="reuse", type=Path, help="re-print the runs under this folder")
    args = ap.parse_args()
    tmp = args.reuse or Path(tempfile.mkdtemp(prefix="steerl-bench-"))
    base = 1500  # the default recipe's warm-up steps
    grpo, sft = [], []
    for seed in args.seeds:
        g, c = tmp / f"grpo-{seed}", tmp / f"sft-{seed}"
        grpo.append(_load(g) if args.reuse else run(g, [f"train.seed={seed}"]))
        if args.no_control:
            continue
        extra = ["train.steps=0", f"warmup.steps={base + args.control_steps}"]
        sft.append(_load(c) if args.reuse else run(c, [f"train.seed={seed}", *extra]))
    levels = sorted(grpo[0]["final"], key=int)
    print(
        f"\nsteerl default recipe, seeds {args.seeds}, {platform.machine()}, {os.cpu_count()} cores"
    )
    print("greedy accuracy (%) on 200 held-out prompts per level, mean ± std over seeds\n")
    cols = ["level", f"after warm-up ({base} SFT steps)", "+ GRPO (60 steps)", "change"]
    if sft:
        cols += [f"+ {args.control_steps} more SFT steps instead", "change"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for lv in levels:
        w = [r["warmup"][lv] for r in grpo]
        f = [r["final"][lv] for r in grpo]
        row = [lv, fmt(w), fmt(f), fmt([b - a for a, b in zip(w, f)])]
        if sft:
            c = [r["final"][lv] for r in sft]
            row += [fmt(c), fmt([b - a for a, b in zip(w, c)])]
        print("| " + " | ".join(row) + " |")
    print()
    for arm, runs in [("GRPO", grpo), ("more SFT", sft)]:
        if not runs:
            continue
        ws = [r["wall_seconds"] for r in runs]
        ps = [r.get("process_seconds", float("nan")) for r in runs]
        print(
            f"{arm}: training wall seconds per run {statistics.mean(ws):.1f} (max {max(ws):.1f}); "
            f"whole command incl. start-up {statistics.mean(ps):.1f} (max {max(ps):.1f})"
        )
    print(f"run directories under {tmp}")


def _load(out: Path) -> dict:
    s = json.loads((out / "summary.json").read_text())
    p = out / "process_seconds.txt"
    if p.is_file():
        s["process_seconds"] = float(p.read_text())
    return s


if __name__ == "__main__":
    main()
