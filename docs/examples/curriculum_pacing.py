"""Progressive curriculum: the four pacing functions, then a short pacing run on the tiny model.

Run as `python curriculum_pacing.py out.png` to also write the pacing plot (out.png) and the
run report's heat map of sampling share per level (out_heatmap.png).
"""

import json
import shutil
import sys
import tempfile
from pathlib import Path

from steerl.config import load_config
from steerl.curriculum import open_fraction
from steerl.trainer import Trainer

# 1. Open share of the difficulty-sorted pool at step t (start_fraction 0.2, pace_steps 100)
steps = [0, 10, 25, 50, 75, 100]
print("step        " + " ".join(f"{t:5d}" for t in steps))
for fn in ["linear", "root", "step", "exponential"]:
    row = [open_fraction(fn, t, start_fraction=0.2, pace_steps=100, stages=4) for t in steps]
    print(f"{fn:11s} " + " ".join(f"{f:5.2f}" for f in row))

# 2. A short run of the default recipe with curriculum.name=pacing: levels 1-3 of the
#    arithmetic task, difficulty = level; everything is open after pace_steps = 8 RL steps
run = Path(tempfile.mkdtemp(prefix="steerl-pacing-"))
cfg = load_config(
    "default",
    [
        "curriculum.name=pacing",
        "curriculum.pacing.fn=linear",
        "curriculum.pacing.start_fraction=0.2",
        "curriculum.pacing.pace_steps=8",
        "warmup.steps=0",  # no SFT warm-up: this run only shows what is sampled
        "train.steps=12",
        "rollout.prompts_per_step=16",
        "task.arithmetic.train_per_level=300",
        "task.arithmetic.eval_per_level=50",
        "logging.progress=false",
        "logging.tensorboard=false",
        f"train.out_dir={run}",
    ],
)
summary = Trainer(cfg, run).train()
rl = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
rl = [r for r in rl if r.get("phase") == "rl"]
print("RL step  open  level shares (1, 2, 3)")
for r in rl:
    shares = [r.get(f"curriculum/level_{lv}/share", 0.0) for lv in (1, 2, 3)]
    print(
        f"{rl.index(r):7d}  {r['curriculum/open_fraction']:.2f}  "
        + "  ".join(f"{s:.2f}" for s in shares)
    )
print("RL steps:", summary["rl_steps"])

if len(sys.argv) > 1:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(sys.argv[1])
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    ts = range(0, 121)
    for fn in ["linear", "root", "step", "exponential"]:
        ax.plot(ts, [open_fraction(fn, t, 0.2, 100, 4) for t in ts], label=fn)
    ax.set_xlabel("RL step (pace_steps = 100)")
    ax.set_ylabel("open share of the pool")
    ax.set_title("Pacing functions, start_fraction = 0.2")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    heatmap = out.with_name(out.stem + "_heatmap" + out.suffix)
    shutil.copy(run / "curriculum.png", heatmap)  # written by the run report
    print("wrote", out, "and", heatmap)
shutil.rmtree(run)
