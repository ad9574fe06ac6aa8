"""Random search vs TPE vs GP: trials to a target accuracy; wall clock with and without pruning.

One SFT warm-up (the default recipe's, ``train.steps=0``) is trained once and every trial
starts from a copy of it (``tune.from_warmup``): a trial is ``--steps`` GRPO steps with the
trial's learning rate, KL coefficient and upper clip, then the greedy accuracy on level 2
(200 held-out prompts). The search space is wide on purpose (the learning rate spans six
decades), so finding the good region is the search's job.

Part 1, for each sampler and seed: trials are run one at a time until one reaches
``--target`` (or ``--max-trials``); prints the number of trials needed (">N" when not
reached; counted as N + 1 in the mean) and the ratio to random search. TPE and GP start
after ``--startup`` random trials (Optuna's default is 10).

Part 2: a TPE study of ``--prune-trials`` trials evaluated every ``--eval-every`` steps, run
without a pruner and with the median pruner; prints wall clock, trials pruned and the best
accuracy found.

    python benchmarks/tuning.py [--seeds 0 1 2] [--samplers random tpe gp] [--target 0.85]
        [--steps 15] [--max-trials 12] [--startup 3] [--prune-trials 10] [--root DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

SPACE = (
    "tune.space={optim.lr: {type: float, low: 1.0e-7, high: 1.0e-1, log: true},"
    " loss.kl_coef: {type: float, low: 0.0, high: 0.2},"
    " loss.clip_high: {type: float, low: 0.1, high: 0.5}}"
)
COMMON = [
    "train.threads=1",
    "logging.tensorboard=false",
    "logging.report=false",
    "logging.progress=false",
    "logging.samples_every=0",
]


def warmup(root: Path) -> Path:
    run = root / "warmup"
    if not (run / "summary.json").is_file():
        cmd = [
            sys.executable,
            "-m",
            "steerl",
            "train",
            "default",
            "train.steps=0",
            f"train.out_dir={run}",
            *COMMON,
        ]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return run


def study_ctx(root: Path, name: str, warm: Path, args, extra: list[str]):
    from steerl.tuning.study import prepare

    ov = [
        *COMMON,
        SPACE,
        f"train.steps={args.steps}",
        f"tune.from_warmup={warm}",
        "tune.objectives=[{metric: eval/accuracy/level_2}]",
        *extra,
    ]
    return prepare("default", ov, out_dir=str(root / name), study=name)


def trials_to_target(root, warm, args, sampler: str, seed: int) -> tuple[int | None, list]:
    from steerl.tuning.study import work

    extra = [
        f"tune.sampler={sampler}",
        f"tune.seed={seed}",
        "tune.pruner=none",
        f"tune.trials={args.max_trials}",
    ]
    if sampler in ("tpe", "gp"):
        extra.append(f"tune.sampler_options={{n_startup_trials: {args.startup}}}")
    ctx = study_ctx(root, f"{sampler}-s{seed}", warm, args, extra)
    values: list[float] = []
    for i in range(args.max_trials + 1):
        # the first pass only reads what an earlier invocation already ran (same proposals)
        study = work(ctx, max_trials=1 if i else 0)
        done = [t for t in study.trials if t.state.name == "COMPLETE"]
        values = [t.values[0] for t in sorted(done, key=lambda t: t.number)]
        hit = [i for i, v in enumerate(values) if v >= args.target]
        if hit:
            return hit[0] + 1, values
        if len(study.trials) >= args.max_trials:
            break
    return None, values


def pruning(root, warm, args, seed: int, pruner: str) -> dict:
    from steerl.tuning.study import work

    extra = [
        "tune.sampler=tpe",
        f"tune.seed={seed}",
        f"tune.pruner={pruner}",
        f"tune.trials={args.prune_trials}",
        f"train.eval_every={args.eval_every}",
        f"tune.sampler_options={{n_startup_trials: {args.startup}}}",
    ]
    if pruner == "median":
        extra.append("tune.pruner_options={n_startup_trials: 3, n_warmup_steps: 0}")
    if pruner == "successive_halving":  # rungs at eval_every, 3x, 9x ... steps; keep the top 1/3
        extra.append(
            f"tune.pruner_options={{min_resource: {args.eval_every}, reduction_factor: 3}}"
        )
    ctx = study_ctx(root, f"prune-{pruner}-s{seed}", warm, args, extra)
    t0 = time.perf_counter()
    study = work(ctx)
    wall = time.perf_counter() - t0
    states = [t.state.name for t in study.trials]
    best = max((t.values[0] for t in study.trials if t.state.name == "COMPLETE"), default=0.0)
    return {"wall": wall, "pruned": states.count("PRUNED"), "best": best}


def multi_objective(root, warm, args) -> dict:
    """NSGA-II over the learning rate and the group size: accuracy up, wall time down."""
    from steerl.tuning.results import write_results
    from steerl.tuning.study import prepare, work

    ov = [
        *COMMON,
        f"train.steps={args.steps}",
        f"tune.from_warmup={warm}",
        "tune.space={optim.lr: {type: float, low: 1.0e-6, high: 1.0e-2, log: true},"
        " rollout.group_size: {type: int, low: 2, high: 16, step: 2}}",
        "tune.objectives=[{metric: eval/accuracy/level_2, direction: maximize},"
        " {metric: train/wall_seconds, direction: minimize}]",
        "tune.sampler=nsga2",
        "tune.sampler_options={population_size: 6}",
        "tune.seed=0",
        f"tune.trials={args.multi_trials}",
    ]
    ctx = prepare("default", ov, out_dir=str(root / "multi"), study="multi")
    return write_results(work(ctx), root / "multi")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--samplers", nargs="+", default=["random", "tpe", "gp"])
    ap.add_argument("--target", type=float, default=0.85)
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--max-trials", type=int, default=12)
    ap.add_argument("--startup", type=int, default=3)
    ap.add_argument("--prune-trials", type=int, default=10)
    ap.add_argument("--prune-seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--eval-every", type=int, default=5)
    ap.add_argument("--pruners", nargs="+", default=["median"], help="compared with none")
    ap.add_argument("--root", type=Path, default=Path("runs/bench-tuning"))
    ap.add_argument("--skip-pruning", action="store_true")
    ap.add_argument("--skip-search", action="store_true")
    ap.add_argument("--multi-trials", type=int, default=18, help="NSGA-II study (0: skip)")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    args.root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    warm = warmup(args.root)
    print(f"warm-up: {warm} ({time.perf_counter() - t0:.0f} s)", flush=True)
    results: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "search": {}}
    for sampler in [] if args.skip_search else args.samplers:
        for seed in args.seeds:
            n, values = trials_to_target(args.root, warm, args, sampler, seed)
            results["search"][f"{sampler}/{seed}"] = {"trials": n, "values": values}
            print(
                f"{sampler} seed {seed}: {n or '>' + str(args.max_trials)} trials "
                f"({', '.join(f'{v:.2f}' for v in values)})",
                flush=True,
            )
    if not args.skip_search:
        miss = args.max_trials + 1
        print(
            f"\n## Trials to level-2 accuracy >= {args.target} ({args.steps} GRPO steps per "
            f"trial, {platform.machine()} CPU, {os.cpu_count()} cores)\n"
        )
        print(
            "| sampler | " + " | ".join(f"seed {s}" for s in args.seeds) + " | mean | vs random |"
        )
        print("|---|" + "---|" * (len(args.seeds) + 2))
        means = {}
        for sampler in args.samplers:
            ns = [results["search"][f"{sampler}/{s}"]["trials"] for s in args.seeds]
            means[sampler] = statistics.mean(n or miss for n in ns)
        for sampler in args.samplers:
            ns = [results["search"][f"{sampler}/{s}"]["trials"] for s in args.seeds]
            cells = [str(n) if n else f">{args.max_trials}" for n in ns]
            ratio = means[sampler] / means["random"] if "random" in means else float("nan")
            print(
                f"| {sampler} | " + " | ".join(cells) + f" | {means[sampler]:.1f} | {ratio:.2f}x |"
            )
    if not args.skip_pruning:
        print(f"\n## TPE, {args.prune_trials} trials, evaluated every {args.eval_every} steps\n")
        print("| pruner | seed | wall clock (s) | trials pruned | best level-2 accuracy |")
        print("|---|---|---|---|---|")
        rows = {}
        for seed in args.prune_seeds:
            for pruner in ("none", *args.pruners):
                r = pruning(args.root, warm, args, seed, pruner)
                rows[(pruner, seed)] = r
                results.setdefault("pruning", {})[f"{pruner}/{seed}"] = r
                print(
                    f"| {pruner} | {seed} | {r['wall']:.0f} | {r['pruned']} | {r['best']:.3f} |",
                    flush=True,
                )
        for p in args.pruners:
            walls = {q: sum(rows[(q, s)]["wall"] for s in args.prune_seeds) for q in ("none", p)}
            print(f"\nwall clock without / with {p} pruning: {walls['none'] / walls[p]:.2f}x")
    if args.multi_trials:
        m = multi_objective(args.root, warm, args)
        results["multi"] = m
        print(
            f"\n## NSGA-II, {args.multi_trials} trials: level-2 accuracy (max) vs training "
            "wall seconds (min)\n"
        )
        print("| trial | level-2 accuracy | wall s | lr | group size |")
        print("|---|---|---|---|---|")
        for p in sorted(m["pareto"], key=lambda p: p["values"][1]):
            print(
                f"| {p['trial']} | {p['values'][0]:.3f} | {p['values'][1]:.1f} | "
                f"{p['params']['optim.lr']:.2e} | {p['params']['rollout.group_size']} |"
            )
        print(
            f"\ntrials {m['trials']}; hypervolume {m['hypervolume']:.4g} (ref {m['ref']}); "
            f"knee: trial {m['knee']}; plot {args.root / 'multi' / 'front.png'}"
        )
    (args.root / "results.json").write_text(json.dumps(results, indent=1))
    print(f"\ntotal {time.perf_counter() - t0:.0f} s; results in {args.root / 'results.json'}")


if __name__ == "__main__":
    main()
