"""GRPO vs DAPO vs Dr.GRPO on the default task: final accuracy and completion length.

For each seed, the default recipe's SFT warm-up runs once (``train.steps=0``); its run
directory is copied per preset and resumed with ``loss.preset=<p> train.steps=<n>``, so every
preset starts from the very same warmed-up policy and optimizer state. Prints greedy accuracy
per level after RL and the mean sampled completion length (characters incl. EOS, last 10
steps), mean ± std over seeds.

    python benchmarks/loss_presets.py [--seeds 0 1 2] [--presets grpo dapo dr_grpo] [--steps 60]
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
from pathlib import Path


def steerl(*args: str) -> None:
    cmd = [sys.executable, "-m", "steerl", "train", *args, "-q"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def fmt(xs: list[float], scale: float = 100.0) -> str:
    m = statistics.mean(xs) * scale
    s = (statistics.stdev(xs) if len(xs) > 1 else 0.0) * scale
    return f"{m:5.1f} ± {s:4.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--presets", nargs="+", default=["grpo", "dapo", "dr_grpo"])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--from", dest="reuse", type=Path, help="re-print the runs under this folder")
    args = ap.parse_args()
    root = args.reuse or Path(tempfile.mkdtemp(prefix="steerl-presets-"))
    results: dict[str, list[dict]] = {p: [] for p in args.presets}
    for seed in args.seeds:
        warm = root / f"warmup-{seed}"
        if not args.reuse:
            steerl("default", f"train.out_dir={warm}", f"train.seed={seed}", "train.steps=0")
        for preset in args.presets:
            run = root / f"{preset}-{seed}"
            if not args.reuse:
                shutil.copytree(warm, run)
                steerl(str(run), f"loss.preset={preset}", f"train.steps={args.steps}")
            summary = json.loads((run / "summary.json").read_text())
            lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
            lens = [x["train/completion_length"] for x in lines if "train/completion_length" in x]
            summary["length"] = statistics.mean(lens[-10:])
            results[preset].append(summary)
    levels = sorted(results[args.presets[0]][0]["final"], key=int)
    print(
        f"\nloss presets on the default task, seeds {args.seeds}, {args.steps} RL steps from a "
        f"shared warm-up; {platform.machine()}, {os.cpu_count()} cores\n"
    )
    cols = ["preset", *[f"level {lv} acc. (%)" for lv in levels], "completion length (tokens)"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    warm = [json.loads((root / f"warmup-{s}" / "summary.json").read_text()) for s in args.seeds]
    row = ["(warm-up only)", *[fmt([w["warmup"][lv] for w in warm]) for lv in levels], "—"]
    print("| " + " | ".join(row) + " |")
    for preset, runs in results.items():
        accs = [fmt([r["final"][lv] for r in runs]) for lv in levels]
        row = [preset, *accs, fmt([r["length"] for r in runs], scale=1.0)]
        print("| " + " | ".join(row) + " |")
    print(f"\nrun directories under {root}")


if __name__ == "__main__":
    main()
