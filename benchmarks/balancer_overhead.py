"""Per-update overhead of each balancer with K = 1, 2, 4 objectives.

One "update" is what a balancer changes in a training step: a forward pass of the policy on a
fixed batch (``steerl.logprobs.completion_logprobs``, the trainer's), K policy-gradient terms
(one per objective, each with its own advantages), the balancer's ``tap`` + ``combine`` per
micro-batch and ``end_step``, gradient clipping and the optimizer step. Generation is left out
on purpose: it does not depend on the balancer, so including it would only shrink the ratios.
Each cell is the median over repeats, divided by the median of the static balancer with K = 1
measured in the same process (ratios side by side).

    python benchmarks/balancer_overhead.py                  # CPU, the default tiny model
    python benchmarks/balancer_overhead.py --model bigvocab # CPU, Qwen2.5's 152k vocabulary
    python benchmarks/balancer_overhead.py --model qwen05   # a Qwen2.5-0.5B-shaped model (GPU)
    ... --jacobian autograd                                 # one head backward per term
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from steerl.config import ObjectivesConfig
from steerl.logprobs import completion_logprobs
from steerl.objectives import build_balancer
from steerl.rollout import Rollout

LOSS_LEVEL = ["static", "uncertainty", "dwa", "famo", "gradnorm"]
GRADIENT_LEVEL = ["pcgrad", "mgda", "upgrad", "cagrad", "nash_mtl", "imtl_g"]


def build_model(kind: str, device: torch.device, dtype: torch.dtype):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    if kind == "tiny":  # the default recipe's model
        conf = LlamaConfig(
            vocab_size=24,
            hidden_size=64,
            intermediate_size=256,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=128,
            tie_word_embeddings=True,
        )
        return LlamaForCausalLM(conf).to(device, dtype), (256, 12, 4)
    if kind == "bigvocab":  # the 152k vocabulary on a small trunk: head-dominated, CPU-sized
        conf = Qwen2Config(
            vocab_size=151936,
            hidden_size=64,
            intermediate_size=256,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            tie_word_embeddings=True,
        )
        return Qwen2ForCausalLM(conf).to(device, dtype), (8, 40, 32)
    import gpu_step  # its anchor: Qwen2.5-0.5B-shaped (benchmarks/ is on sys.path when run)

    return gpu_step.build_model(tiny=False).to(device, dtype), (64, 320, 256)


def make_batch(ids: torch.Tensor, comp: int) -> Rollout:
    """The last ``comp`` tokens of each row are the completion; no padding."""
    n = ids.shape[0]
    ones = torch.ones_like(ids)
    return Rollout(
        ids[:, :-comp],
        ones[:, :-comp],
        ids[:, -comp:],
        ones[:, -comp:],
        torch.zeros(n, comp, device=ids.device),
        torch.zeros(n, dtype=torch.bool, device=ids.device),
    )


def time_updates(model, opt, balancer, K, batch, repeats, sync) -> float:
    n = batch.completion_ids.shape[0]
    adv = torch.randn(K, n, device=batch.completion_ids.device)
    times = []
    for r in range(repeats + 2):
        sync()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        balancer.begin_step(r)
        lp, _ = completion_logprobs(model, batch)
        terms = {f"obj{k}": -(adv[k][:, None] * lp).mean() for k in range(K)}
        balancer.tap(lp)
        balancer.combine(terms, model.parameters())
        balancer.end_step()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sync()
        if r >= 2:  # warm-up repeats left out
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", choices=["tiny", "bigvocab", "qwen05"], default="tiny")
    ap.add_argument(
        "--jacobian",
        choices=["auto", "autograd", "both"],
        default="auto",
        help="objectives.jacobian of the gradient-level rows (both: one row set each)",
    )
    ap.add_argument("--only", default="", help="comma-separated balancer names (default: all)")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if args.device == "auto" else args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    model, (n, seq, comp) = build_model(args.model, device, dtype)
    ids = torch.randint(0, model.config.vocab_size, (n, seq), device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    card = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    params = sum(p.numel() for p in model.parameters())
    batch = make_batch(ids, comp)
    modes = ["auto", "autograd"] if args.jacobian == "both" else [args.jacobian]
    names = LOSS_LEVEL + GRADIENT_LEVEL
    if args.only:
        names = ["static"] + [n for n in args.only.split(",") if n != "static"]
    runs = [(n, "auto") for n in names if n not in GRADIENT_LEVEL + ["gradnorm"]]
    runs += [(n, m) for m in modes for n in names if n in GRADIENT_LEVEL + ["gradnorm"]]
    rows = []
    base = None
    for name, mode in runs:
        cells = []
        for K in (1, 2, 4):
            terms = [f"obj{k}" for k in range(K)]
            per_term = name in GRADIENT_LEVEL + ["gradnorm"]
            cfg = ObjectivesConfig(
                balancer=name,
                aggregate_params="last_blocks:1" if per_term else None,
                jacobian=mode,
            )
            bal = build_balancer(cfg, model=model, total_steps=1000, term_names=terms)
            t = time_updates(model, opt, bal, K, batch, args.repeats, sync)
            if base is None:
                base = t
            cells.append(t)
            path = getattr(getattr(bal, "terms_jacobian", None), "last_path", "")
            if path.startswith("autograd:") and mode == "auto":
                print(f"warning: {name} K={K} took {path}")
        rows.append((name if not per_term else f"{name} ({mode})", cells))
    print(
        f"\nbalancer overhead per update, {args.model} ({params / 1e6:.1f}M params, {dtype}), "
        f"batch {n} x {seq} tokens ({comp} completion), {card}; "
        f"gradient-level on last_blocks:1\n"
    )
    print(f"(static K=1: {1e3 * base:.1f} ms per update)\n")
    print("| balancer | level | K=1 ms | K=2 ms | K=4 ms | K=2 / static K=1 | K=4 / static K=1 |")
    print("|---|---|---|---|---|---|---|")
    for name, (t1, t2, t4) in rows:
        level = "gradient" if name.split()[0] in GRADIENT_LEVEL else "loss"
        print(
            f"| {name} | {level} | {1e3 * t1:.1f} | {1e3 * t2:.1f} | {1e3 * t4:.1f} | "
            f"{t2 / base:.2f} | {t4 / base:.2f} |"
        )


if __name__ == "__main__":
    main()
