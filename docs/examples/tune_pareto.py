"""A two-objective search (NSGA-II): accuracy up, greedy completion length down.

Writes OUT/pareto.json, OUT/pareto.csv and OUT/front.png; pass a PNG path to copy the plot.
"""

import shutil
import sys
from pathlib import Path

from steerl.tuning.results import write_results
from steerl.tuning.study import prepare, work

SEARCH = [
    "tune.space={optim.lr: {type: float, low: 1.0e-5, high: 1.0e-2, log: true},"
    " rollout.temperature: {type: float, low: 0.5, high: 1.2}}",
    "tune.objectives=[{metric: train/reward, direction: maximize},"
    " {metric: eval/mean_length, direction: minimize}]",
    "tune.sampler=nsga2",
    "tune.sampler_options={population_size: 4}",
    "tune.seed=0",
    "tune.trials=5",
    # multi-objective studies cannot be pruned; a threshold stops hopeless trials instead
    "tune.threshold={metric: train/reward, min: -1.0, after_step: 2}",
]
out = Path("tune-pareto-example")
shutil.rmtree(out, ignore_errors=True)
study = work(prepare("tiny", SEARCH, out_dir=str(out)))
summary = write_results(study, out)
for p in summary["pareto"]:
    print(
        f"trial {p['trial']} on the front: reward {p['values'][0]:.3f}, "
        f"length {p['values'][1]:.2f} tokens, {p['params']}"
    )
print(f"hypervolume {summary['hypervolume']:.4g} (reference {summary['ref']})")
if len(sys.argv) > 1 and (out / "front.png").is_file():
    shutil.copy(out / "front.png", sys.argv[1])
