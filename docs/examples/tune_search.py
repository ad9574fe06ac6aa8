"""A small Bayesian search (TPE) over the learning rate and clip range (tiny recipe).

Each trial is a normal steerl run directory under OUT/trials/; the study lives in
OUT/study.db (SQLite). Pass a PNG path to save the best-so-far plot there.
"""

import shutil
import sys
from pathlib import Path

from steerl.tuning.results import write_results
from steerl.tuning.study import prepare, work

SEARCH = [
    "tune.space={optim.lr: {type: float, low: 1.0e-5, high: 1.0e-2, log: true},"
    " loss.clip_high: {type: float, low: 0.2, high: 0.4}}",
    "tune.objectives=[{metric: eval/accuracy/mean, direction: maximize}]",
    "tune.sampler=tpe",
    "tune.sampler_options={n_startup_trials: 2}",
    "tune.seed=0",
    "tune.trials=4",
    "tune.pruner=median",
    "train.eval_every=2",
]
out = Path("tune-example")
shutil.rmtree(out, ignore_errors=True)
ctx = prepare("tiny", SEARCH, out_dir=str(out))
study = work(ctx, on_trial=lambda t: print(f"trial {t.number}: {t.state.name.lower()} {t.params}"))
summary = write_results(study, out)
print("best:", summary["best"]["trial"], summary["best"]["params"], summary["best"]["values"])
if len(sys.argv) > 1 and (out / "history.png").is_file():
    shutil.copy(out / "history.png", sys.argv[1])
