"""Generated tokens per second of steerl's grouped sampler vs ``model.generate``.

Both sample the same batch (prompts × group size) from the built-in tiny model with a KV
cache, temperature 1, to a fixed length (EOS suppressed so every row is full length); the
table reports the median of several repeats after a warm-up.

    python benchmarks/rollout_speed.py [--prompts 32] [--group 8] [--new 8] [--model tiny]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from steerl.config import ModelConfig
from steerl.models import count_parameters, load_policy
from steerl.rollout import encode_prompts, generate
from steerl.tasks.arithmetic import format_problem


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--new", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    pol = load_policy(ModelConfig(name="tiny", device="cpu"))
    model, tok = pol.model, pol.tokenizer
    texts = [format_problem(10 + i, 37 + 3 * i)[0] for i in range(args.prompts)]
    texts = [t for t in texts for _ in range(args.group)]
    ids, mask = encode_prompts(tok, texts, pol.device)
    n_tokens = len(texts) * args.new
    never = tok.vocab_size + 10  # an id never sampled: every completion runs to full length

    def ours() -> None:
        generate(
            model,
            ids,
            mask,
            max_new_tokens=args.new,
            eos_token_id=never,
            pad_token_id=tok.pad_token_id,
            generator=torch.Generator().manual_seed(0),
        )

    def hf() -> None:
        model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=True,
            max_new_tokens=args.new,
            min_new_tokens=args.new,
            pad_token_id=tok.pad_token_id,
            top_k=0,
            output_scores=True,
            return_dict_in_generate=True,
        )

    rows = []
    for name, fn in [("steerl.rollout.generate", ours), ("transformers generate", hf)]:
        fn()
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        rows.append((name, med, n_tokens / med))
    print(
        f"\ntiny model ({count_parameters(model) / 1e6:.2f}M params), batch {len(texts)} "
        f"({args.prompts} prompts x {args.group}), {args.new} new tokens, "
        f"{args.threads} threads, {platform.machine()}\n"
    )
    print("| sampler | median s / batch | generated tokens/s | ratio |")
    print("|---|---|---|---|")
    for name, med, tps in rows:
        print(f"| {name} | {med:.4f} | {tps:,.0f} | {tps / rows[0][2]:.2f} |")


if __name__ == "__main__":
    main()
