"""Data-parallel GRPO steps: one GPU against N GPUs (torchrun) at the same global batch.

The model and reward are gpu_step.py's anchor (a random Qwen2.5-0.5B-shaped model, bf16, the
share of digits as reward, EOS off so every completion is full length). Each configuration
runs the real ``Trainer.rl_step`` under ``torchrun --nproc_per_node n`` on the same global
batch (``--prompts`` x ``--group``): with n ranks each samples, scores and backpropagates
``prompts / n`` groups, and the gradients are summed over ranks before clipping.

Printed: step time (median/min/max of the timed steps, after warm-up steps with CUDA-graph
capture), completion tokens per second of the whole step, the speed-up over one GPU, and the
per-step curves of reward, loss and gradient norm. The ranks sample with seeds ``seed +
rank``, so the N-GPU run draws other completions than the 1-GPU run; a second 1-GPU run with
another seed (``--noise``) shows how far two runs that should agree drift apart by chance.

    python benchmarks/ddp_step.py --gpus 2                 # on a machine with 2 GPUs
    python benchmarks/ddp_step.py --tiny --device cpu      # small shapes, gloo, 2 processes
    python benchmarks/ddp_step.py --gpus 2 --no-noise \
        --run "2 GPUs, FSDP=2,train.distributed=fsdp" --run "1 GPU=1,prompts=32" \
        --run "2 GPUs=2,prompts=32"                        # further configurations
    python benchmarks/ddp_step.py --shape qwen14b --no-noise \
        --run "2 GPUs, FSDP=2,train.distributed=fsdp"     # a model one card cannot train

Speed-up: completion tokens/s over the 1-GPU run at the same global batch (strong scaling);
a run at another global batch with no 1-GPU run of its own is compared with the first one.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_step  # noqa: E402  (the anchor; registers the bench_digits reward)

from steerl import distributed as ddp  # noqa: E402
from steerl.config import load_config  # noqa: E402


def worker(args) -> None:
    """One configuration, as a rank under torchrun: rank 0 writes the numbers to --json."""
    from steerl.trainer import Trainer

    anchor = Path(args.anchor)
    overrides = [
        *gpu_step.anchor_overrides(args, anchor),
        f"train.seed={args.seed}",
        f"model.gradient_checkpointing={str(args.device == 'cuda').lower()}",
        f"optim.lr={args.lr}",
        # this random model gets non-finite gradients on some steps (README): skipped steps
        # still time the whole step, and a run must not stop on five in a row
        "stability.max_consecutive_skips=1000",
        *args.set,
    ]
    cfg = load_config("default", overrides)
    cuda = args.device == "cuda"
    with tempfile.TemporaryDirectory() as run_dir:
        rows: list[dict] = []
        try:
            trainer = Trainer(cfg, run_dir)
            steps(args, trainer, rows, cuda)
        except torch.OutOfMemoryError as e:  # a configuration that does not fit is a result
            peak = torch.cuda.max_memory_allocated() / 2**30
            print(f"rank {ddp.rank()}: out of memory after {len(rows)} steps: {e}", flush=True)
            if ddp.is_main():
                write_result(args, rows, [peak], oom=str(e)[:300])
            sys.stdout.flush()
            os._exit(1)  # the other ranks may wait in a collective: torchrun ends them
        peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
        peaks = ddp.all_gather_objects(peak)
        if ddp.is_main():
            write_result(args, rows, peaks)
    ddp.shutdown()


def write_result(args, rows: list[dict], peaks: list[float], **extra) -> None:
    """Rank 0's numbers of one configuration to ``--json`` (``extra``: e.g. ``oom``)."""
    out = {"world": ddp.world_size(), "seed": args.seed, "rows": rows, "peak_gib": peaks}
    Path(args.json).write_text(json.dumps(out | extra))


def steps(args, trainer, rows: list[dict], cuda: bool) -> None:
    """The warm-up and timed RL steps of one configuration, one row each into ``rows``."""
    for i in range(args.warmup + args.steps):
        if cuda:
            torch.cuda.synchronize()
            if i == args.warmup:
                torch.cuda.reset_peak_memory_stats()
        ddp.barrier()
        t0 = time.perf_counter()
        if args.anomaly:  # where the first non-finite gradient comes from (slow)
            with torch.autograd.detect_anomaly(check_nan=True):
                try:
                    m = trainer.rl_step()
                except RuntimeError as e:
                    import traceback

                    print(f"anomaly at step {i + 1}:\n{traceback.format_exc()}", flush=True)
                    raise SystemExit(3) from e
        else:
            m = trainer.rl_step()
        if cuda:
            torch.cuda.synchronize()
        ddp.barrier()
        rows.append(
            {
                "step_s": time.perf_counter() - t0,
                "timed": i >= args.warmup,
                "reward": m["train/reward"],
                "loss": m.get("train/loss", float("nan")),
                "grad_norm": m.get("train/grad_norm", float("nan")),
                "generate_s": m["time/generate_s"],
                "update_s": m["time/update_s"],
                "tokens": m["train/completion_length"] * args.prompts * args.group,
                "action": m.get("stability/action"),
            }
        )


def launch(args, anchor: Path, n: int, seed: int, out: Path, run: dict | None = None) -> dict:
    """One configuration under torchrun; ``run``: its own ``prompts`` and ``set`` overrides."""
    run = run or {}
    shared = _shared(args) | ({"prompts": run["prompts"]} if "prompts" in run else {})
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={n}",
        str(Path(__file__).resolve()),
        "--worker",
        f"--anchor={anchor}",
        f"--json={out}",
        f"--seed={seed}",
        *[f"--{k.replace('_', '-')}" + ("" if v is True else f"={v}") for k, v in shared.items()],
        *[f"--set={o}" for o in [*args.set, *run.get("set", [])]],
    ]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="4")
    t0 = time.perf_counter()
    rc = subprocess.run(cmd, env=env, timeout=args.timeout).returncode
    print(f"{n} process(es), seed {seed}: {time.perf_counter() - t0:.0f}s, exit {rc}", flush=True)
    if out.is_file():
        found = json.loads(out.read_text())
    elif rc:  # failed before writing anything: the table says so, the other runs go on
        found = {"world": n, "seed": seed, "rows": [], "peak_gib": [float("nan")], "failed": rc}
    else:
        raise RuntimeError(f"{n} process(es) exited 0 without writing {out}")
    return found | {"prompts": shared["prompts"], "set": run.get("set", [])}


def parse_run(spec: str) -> tuple[str, int, dict]:
    """``LABEL=N[,prompts=P][,KEY=VALUE...]`` -> (label, ranks, {prompts, set})."""
    label, _, rest = spec.partition("=")
    n, *opts = rest.split(",")
    run: dict = {"set": []}
    for o in opts:
        if o.startswith("prompts="):
            run["prompts"] = int(o.split("=", 1)[1])
        else:
            run["set"].append(o)
    return label, int(n), run


def _shared(args) -> dict:
    keys = ("device", "steps", "warmup", "prompts", "group", "new_tokens", "micro_batch", "lr")
    flags = {"anomaly": True} if args.anomaly else {}
    return {k: getattr(args, k) for k in keys} | {"prompt_len": args.prompt_len} | flags


def table(runs: list[tuple[str, dict]], card: str, args) -> str:
    lines = [f"card: {card}; torch {torch.__version__}"]
    lines.append(
        f"setup: global batch {args.prompts} prompts x {args.group} samples, {args.prompt_len} "
        f"prompt tokens, {args.new_tokens} new tokens (EOS off), micro-batch {args.micro_batch}, "
        f"lr {args.lr}, {args.steps} timed steps after {args.warmup} warm-up"
        + (f"; overrides: {' '.join(args.set)}" if args.set else "")
    )
    head = "| run | GPUs | prompts | step s median | min | max | completion tok/s | speed-up |"
    head += " generation s | update s | peak GiB/rank |"
    lines += ["", head, "|---" * 11 + "|"]
    base: dict[int, float] = {}  # tokens/s of the first 1-GPU run at each global batch
    for name, r in runs:
        timed = [x for x in r["rows"] if x["timed"]]
        p = r.get("prompts", args.prompts)
        if not timed:  # did not fit, or failed
            why = "out of memory" if "oom" in r else f"failed (exit {r.get('failed', '?')})"
            peak = max(r["peak_gib"])
            lines.append(f"| {name} | {r['world']} | {p} | {why} |  |  |  |  |  |  | {peak:.2f} |")
            continue
        ts = [x["step_s"] for x in timed]
        med = statistics.median(ts)
        tps = statistics.median(x["tokens"] for x in timed) / med
        if r["world"] == 1:
            base.setdefault(p, tps)
        ref = base.get(p) or next(iter(base.values()), tps)
        gen = statistics.median(x["generate_s"] for x in timed)
        upd = statistics.median(x["update_s"] for x in timed)
        peak = max(r["peak_gib"])
        lines.append(
            f"| {name} | {r['world']} | {p} | {med:.3f} | {min(ts):.3f} | {max(ts):.3f} | "
            f"{tps:,.0f} | {tps / ref:.2f}x | {gen:.3f} | {upd:.3f} | {peak:.2f} |"
        )
    lines.append(
        "(speed-up: completion tokens/s over the first 1-GPU run at the same global batch, "
        "else over the first 1-GPU run)"
    )
    runs = [(n, r) for n, r in runs if r["rows"]]
    if not runs:
        return "\n".join(lines)
    lines += ["", "per step (all steps, warm-up included):", ""]
    names = [n for n, _ in runs]
    lines.append(
        "| step | "
        + " | ".join(f"{k} ({n})" for k in ("reward", "loss", "grad norm") for n in names)
        + " |"
    )
    lines.append("|---" * (1 + 3 * len(runs)) + "|")
    for i in range(min(len(r["rows"]) for _, r in runs)):
        vals = [r["rows"][i][k] for k in ("reward", "loss", "grad_norm") for _, r in runs]
        lines.append(f"| {i + 1} | " + " | ".join(f"{v:.4f}" for v in vals) + " |")
    lines.append("")
    for name, r in runs:
        xs = r["rows"]
        rw = [x["reward"] for x in xs]
        acts = {x["action"] for x in xs}
        lines.append(
            f"{name}: mean reward {statistics.mean(rw):.4f}, last-half mean "
            f"{statistics.mean(rw[len(rw) // 2 :]):.4f}, updates {sorted(map(str, acts))}"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--anchor", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--json", default=None, help="write every number here")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tiny", action="store_true", help="small shapes (CPU smoke test)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--gpus", type=int, default=2, help="ranks of the data-parallel run")
    ap.add_argument(
        "--shape",
        choices=["qwen0.5b", "qwen7b", "qwen14b"],
        default="qwen0.5b",
        help="the random model's shape (qwen7b, qwen14b: for train.distributed=fsdp; qwen14b's "
        "training state does not fit one H100 or H200; a run that does not fit reports out "
        "of memory)",
    )
    ap.add_argument("--steps", type=int, default=10, help="timed steps per run")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--prompts", type=int, default=16, help="global prompts per step")
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--micro-batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument(
        "--anomaly",
        action="store_true",
        help="run the steps under torch.autograd.detect_anomaly: print where the first "
        "non-finite gradient is made, then stop",
    )
    ap.add_argument("--no-noise", dest="noise", action="store_false", help="skip seed-1 run")
    ap.add_argument("--timeout", type=int, default=300, help="seconds per configuration")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a recipe override for every run, e.g. rollout.compile=true (repeatable)",
    )
    ap.add_argument(
        "--run",
        action="append",
        default=[],
        metavar="LABEL=N[,prompts=P][,KEY=VALUE...]",
        help="a further configuration: N ranks, its own global prompts and overrides "
        "(e.g. 'FSDP=2,train.distributed=fsdp'; repeatable)",
    )
    ap.add_argument(
        "--runs-only",
        action="store_true",
        help="only the --run configurations (skip the default 1-GPU and N-GPU runs)",
    )
    args = ap.parse_args()
    if args.runs_only and not args.run:
        ap.error("--runs-only needs at least one --run")
    if args.worker:
        return worker(args)
    if args.tiny:
        args.prompt_len, args.new_tokens = min(args.prompt_len, 16), min(args.new_tokens, 12)
    card = torch.cuda.get_device_name(0) if args.device == "cuda" else "CPU (gloo)"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        plan = [("1 GPU", 1, 0, {}), (f"{args.gpus} GPUs", args.gpus, 0, {})]
        plan += [("1 GPU, seed 1", 1, 1, {})] if args.noise else []
        plan = [] if args.runs_only else plan
        plan += [(label, n, 0, run) for label, n, run in map(parse_run, args.run)]
        most = max(args.prompts, *[r.get("prompts", 0) for *_, r in plan])
        shape = None if args.tiny else args.shape
        anchor = gpu_step.save_anchor(
            args.tiny, tmp, most * 4, args.prompt_len, shape=shape, device=args.device
        )
        if args.device == "cuda":
            torch.cuda.empty_cache()  # the model was built here (7B: on the GPU) and saved
        runs = []
        for i, (name, n, seed, run) in enumerate(plan):
            out = tmp / f"{i}-{n}-{seed}.json"
            runs.append((name, launch(args, anchor, n, seed, out, run)))
            if args.json:  # after each run, so a cut-off command keeps what it measured
                Path(args.json).write_text(json.dumps({"card": card, "runs": dict(runs)}))
    print(table(runs, card, args))


if __name__ == "__main__":
    main()
