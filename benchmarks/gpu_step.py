"""One GRPO step of steerl and of TRL's GRPOTrainer on the same card, side by side.

Anchor setup (issue 9): a randomly initialised Qwen2.5-0.5B-shaped model (vocab 151,936,
hidden 896, 24 layers, 14 heads, 2 KV heads, intermediate 4,864, tied embeddings), bf16,
8 prompts x 8 samples, 64 prompt tokens, 256 new tokens with EOS disabled (every completion
is full length), KL coefficient 0, micro-batches of 8 sequences, AdamW.

steerl runs through the real ``Trainer.rl_step`` (curriculum -> rollout -> rewards ->
advantages -> losses -> balancer -> stability -> optimizer), built from a recipe whose model
is the random model saved to a temporary directory with a character tokenizer. TRL runs
``GRPOTrainer.train`` on the same saved model and prompts when ``trl`` is importable
(``min_new_tokens`` = ``max_completion_length`` keeps EOS out). The reward of both is the
share of digits in the completion (cheap, and it varies, so no group is filtered out).

Columns: step time median/min/max over the timed steps (after warm-up steps that include
CUDA-graph capture), completion tokens per second of the whole step, peak allocated memory
over the timed steps, the share of the step spent generating, decode tokens/s against the
memory-bandwidth floor (bf16 weights read once per decode step at the bandwidth measured
here), and MFU of the training part: 6 x parameters x (prompt + completion) tokens (+ causal
attention) over the non-generation time of the step, against the dense bf16 peak.

    python benchmarks/gpu_step.py                       # the anchor setup (a CUDA GPU)
    python benchmarks/gpu_step.py --tiny --steps 2      # small shapes on the CPU (smoke test)
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from steerl.config import load_config  # noqa: E402
from steerl.models import build_char_tokenizer  # noqa: E402
from steerl.rewards import reward  # noqa: E402

#: Dense bf16 tensor-core peak of the H100/H200 SXM (datasheet, no sparsity), FLOP/s.
PEAK_BF16 = {"H100": 989e12, "H200": 989e12}
ALPHABET = "0123456789+-*=() .,"


@reward("bench_digits")
def digit_share(prompts: list[str], completions: list[str], **_) -> list[float]:
    """Share of digit characters in each completion (a cheap reward that varies)."""
    return [sum(c.isdigit() for c in t) / max(1, len(t)) for t in completions]


#: The anchor's shape: Qwen2.5-0.5B's (tied embeddings, 4,096 positions), random weights.
QWEN05_SHAPE = dict(
    vocab_size=151936,
    hidden_size=896,
    intermediate_size=4864,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
)
#: Qwen2.5-7B's shape (untied embeddings), for data-parallel runs of a model whose training
#: state does not fit one card (``ddp_step.py --shape qwen7b``).
QWEN7B_SHAPE = dict(
    vocab_size=152064,
    hidden_size=3584,
    intermediate_size=18944,
    num_hidden_layers=28,
    num_attention_heads=28,
    num_key_value_heads=4,
)
#: Qwen2.5-14B's shape (untied): its bf16 training state (weights, gradients, AdamW moments:
#: 8 bytes a parameter, 118 GB) does not fit one 141 GB H200 with a rollout's activations.
QWEN14B_SHAPE = dict(
    vocab_size=152064,
    hidden_size=5120,
    intermediate_size=13824,
    num_hidden_layers=48,
    num_attention_heads=40,
    num_key_value_heads=8,
)
#: ``--tiny``: the same architecture at CPU size.
TINY_SHAPE = dict(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
)


#: Model shapes by name (``tiny`` is the ``--tiny`` one).
SHAPES = {
    "tiny": TINY_SHAPE,
    "qwen0.5b": QWEN05_SHAPE,
    "qwen7b": QWEN7B_SHAPE,
    "qwen14b": QWEN14B_SHAPE,
}
#: Shapes built in bf16 on the target device (their float32 copy would not fit host memory).
BIG = ("qwen7b", "qwen14b")


def build_model(tiny: bool, shape: str | None = None, device: str = "cpu"):
    """The random anchor model (seed 0): Qwen2.5-0.5B-shaped, small with ``tiny``, or the
    named ``shape``. Float32 on the CPU; the :data:`BIG` shapes are built in bf16 on ``device``
    (a 7B model's float32 copy would need 30 GB of host memory)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    name = shape or ("tiny" if tiny else "qwen0.5b")
    conf = Qwen2Config(
        **SHAPES[name], max_position_embeddings=4096, tie_word_embeddings=name not in BIG
    )
    torch.manual_seed(0)
    if name not in BIG:
        return Qwen2ForCausalLM(conf)
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            return Qwen2ForCausalLM(conf)
    finally:
        torch.set_default_dtype(before)


def save_anchor(
    tiny: bool,
    out: Path,
    n_prompts: int,
    prompt_len: int,
    shape: str | None = None,
    device: str = "cpu",
) -> Path:
    """The random model + a character tokenizer in ``out/model``; prompts in ``out/p.jsonl``."""
    tok = build_char_tokenizer(ALPHABET)
    model = build_model(tiny, shape, device)
    model.config.pad_token_id = tok.pad_token_id
    model.config.bos_token_id = tok.bos_token_id
    model.config.eos_token_id = tok.eos_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.to(torch.bfloat16).save_pretrained(out / "model")
    tok.save_pretrained(out / "model")
    del model
    g = torch.Generator().manual_seed(1)
    with open(out / "p.jsonl", "w") as f:
        for _ in range(n_prompts):
            idx = torch.randint(0, len(ALPHABET), (prompt_len - 1,), generator=g).tolist()
            f.write(json.dumps({"prompt": "".join(ALPHABET[j] for j in idx), "answer": "0"}))
            f.write("\n")
    return out


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def train_flops(model, seqs: int, seq_len: int) -> float:
    """6 N tokens + causal attention (QK^T and AV: 2 x 2 x L x T^2/2 x d per sequence, x3)."""
    c = model.config
    attn = 3 * 2 * c.num_hidden_layers * seq_len**2 * c.hidden_size * seqs
    return 6.0 * n_params(model) * seqs * seq_len + attn


def bandwidth(device) -> float:
    """Device-to-device copy bandwidth, bytes read + written per second (median of 10)."""
    x = torch.empty(1 << 29, dtype=torch.float32, device=device)  # 2 GiB
    y = torch.empty_like(x)
    ts = []
    for _ in range(12):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        y.copy_(x)
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b) / 1e3)
    del x, y
    return 2 * (1 << 31) / statistics.median(ts[2:])


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def reset_memory(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device) -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")


# --------------------------------------------------------------------------- steerl
def anchor_overrides(args, anchor: Path) -> list[str]:
    """Overrides of the default recipe for GRPO steps on the anchor saved by ``save_anchor``
    (``args``: device, warmup, steps, prompts, group, new_tokens, micro_batch)."""
    return [
        f"model.name={anchor / 'model'}",
        f"model.device={args.device}",
        "model.reference=none",
        "task.kind=file",
        f"task.path={anchor / 'p.jsonl'}",
        "rewards=[{name: bench_digits}]",
        "warmup.steps=0",
        f"train.steps={args.warmup + args.steps}",
        "train.threads=4",
        f"rollout.prompts_per_step={args.prompts}",
        f"rollout.group_size={args.group}",
        f"rollout.max_new_tokens={args.new_tokens}",
        "rollout.ignore_eos=true",
        "rollout.temperature=1.0",
        "loss.kl_coef=0",
        "curriculum.drop_zero_variance=false",  # train every group, as TRL does
        f"loss.micro_batch_size={args.micro_batch}",
        "logging.tensorboard=false",
        "logging.report=false",
        "logging.progress=false",
        "logging.samples_every=0",
    ]


def run_steerl(args, anchor: Path, name: str, extra: list[str], snapshot: bool = False) -> dict:
    from steerl.generation.samplers import clear_cache
    from steerl.trainer import Trainer

    cfg = load_config("default", [*anchor_overrides(args, anchor), "optim.lr=1e-6", *extra])
    device = torch.device(args.device)
    reset_memory(device)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(cfg, run_dir)
        phases = track_phase_peaks(trainer, device)
        times, gen, upd, toks, actions = [], [], [], [], []
        for i in range(args.warmup + args.steps):
            if i == args.warmup:
                sync(device)
                reset_memory(device)
                phases.update(resident=allocated_gib(device), generate=0.0, update=0.0)
                if snapshot and device.type == "cuda":  # record from the first timed step
                    torch.cuda.memory._record_memory_history(max_entries=2_000_000)
            sync(device)
            t0 = time.perf_counter()
            m = trainer.rl_step()
            sync(device)
            if i >= args.warmup:
                times.append(time.perf_counter() - t0)
                gen.append(m["time/generate_s"])
                upd.append(m["time/update_s"])
                toks.append(m["train/completion_length"] * args.prompts * args.group)
            gn = m.get("train/grad_norm", float("nan"))
            actions.append(f"{m.get('stability/action')}(|g|={gn:.3g})")
        print(f"steerl {name} updates: {' '.join(actions)}", flush=True)
        if snapshot and device.type == "cuda":
            snap = torch.cuda.memory._snapshot()
            torch.cuda.memory._record_memory_history(enabled=None)
            print(f"memory at the peak, {name} (allocated during the timed steps):")
            print("\n".join(peak_breakdown(snap)), flush=True)
        # the phase trackers reset the peak counter: the step's peak is the largest of theirs
        peak = max(peak_gib(device), phases["generate"], phases["update"])
        model = trainer.model
        flops = train_flops(model, args.prompts * args.group, args.prompt_len + args.new_tokens)
        params = n_params(model)
        del trainer, model
    clear_cache()
    reset_memory(device)
    row = summarise(name, times, gen, toks, peak, flops, params, args, train=upd)
    return row | {f"{k}_gib": v for k, v in phases.items()}


def peak_breakdown(snapshot: dict, top: int = 12) -> list[str]:
    """What was allocated at the moment of peak memory, by the code that allocated it.

    Replays the allocator trace of ``torch.cuda.memory._snapshot()`` (recorded with Python
    stacks), keeps the set of live blocks at the largest total, and sums them by the innermost
    steerl (or benchmark) frame of their allocating stack, else its innermost Python frame.
    """
    live: dict[int, tuple[int, str]] = {}
    total = best = 0
    at_peak: dict[int, tuple[int, str]] = {}
    for ev in snapshot["device_traces"][0]:
        if ev["action"] == "alloc":
            frames = [f for f in ev.get("frames", []) if f["filename"].endswith(".py")]
            ours = [f for f in frames if "steerl" in f["filename"] or "benchmarks" in f["filename"]]
            f = (ours or frames or [{"filename": "?", "line": 0, "name": "?"}])[0]
            site = f"{Path(f['filename']).name}:{f['line']} {f['name']}"
            live[ev["addr"]] = (ev["size"], site)
            total += ev["size"]
            if total > best:
                best, at_peak = total, dict(live)
        elif ev["action"] == "free_completed" and ev["addr"] in live:
            total -= live.pop(ev["addr"])[0]
    by_site: dict[str, int] = {}
    for size, site in at_peak.values():
        by_site[site] = by_site.get(site, 0) + size
    rows = sorted(by_site.items(), key=lambda kv: -kv[1])[:top]
    return [f"{size / 2**30:7.3f} GiB  {site}" for site, size in rows] + [
        f"{best / 2**30:7.3f} GiB  live at the peak of the trace (allocations made while tracing)"
    ]


def allocated_gib(device) -> float:
    return torch.cuda.memory_allocated() / 2**30 if device.type == "cuda" else float("nan")


def track_phase_peaks(trainer, device) -> dict[str, float]:
    """Peak allocated memory of generation and of the update, each over the timed steps.

    Wraps ``trainer._generate`` and ``trainer._policy_update``: the peak counter is reset
    when one starts and read when it ends. ``resident`` (set by the caller) is what stays
    allocated between steps: weights, optimizer state, caches.
    """
    peaks: dict[str, float] = {"resident": float("nan"), "generate": 0.0, "update": 0.0}

    def tracked(key, fn):
        def call(*a, **kw):
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            out = fn(*a, **kw)
            if device.type == "cuda":
                torch.cuda.synchronize()
                peaks[key] = max(peaks[key], peak_gib(device))
            return out

        return call

    trainer._generate = tracked("generate", trainer._generate)
    trainer._policy_update = tracked("update", trainer._policy_update)
    return peaks


# --------------------------------------------------------------------------- correctness
def probe_attention(args, anchor: Path) -> str:
    """One forward/backward of the anchor model with a padded (masked) batch: are the
    gradients finite with cuDNN's SDPA kernel, and without it?

    On H100/H200 with torch 2.11 cuDNN's attention backward returns NaN gradients with a mask
    at sequence lengths of 64 mod 128 (pytorch/pytorch#196678; the anchor's 64 + 256 = 320 is
    one): both steerl and TRL skipped or zeroed most updates until steerl switched cuDNN's
    SDPA off (``model.cudnn_attention=false``, the default, process-wide: TRL's runs below go
    without it too). Printed for the record; the flag is put back as it was.
    """
    from transformers import AutoModelForCausalLM

    device = torch.device(args.device)
    model = AutoModelForCausalLM.from_pretrained(anchor / "model", dtype=torch.bfloat16)
    model.to(device).train()
    g = torch.Generator().manual_seed(5)
    seq = args.prompt_len + args.new_tokens
    ids = torch.randint(3, model.config.vocab_size, (args.micro_batch, seq), generator=g)
    ids = ids.to(device)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # one left-padded row: the model gets an explicit attention mask

    def finite(model, cudnn: bool) -> bool:
        torch.backends.cuda.enable_cudnn_sdp(cudnn)
        model.zero_grad(set_to_none=True)
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        v = logits.shape[-1]
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, v).float(), ids[:, 1:].reshape(-1))
        loss.backward()
        return all(p.grad.isfinite().all() for p in model.parameters() if p.grad is not None)

    before = torch.backends.cuda.cudnn_sdp_enabled()
    with_cudnn, without = finite(model, True), finite(model, False)
    torch.backends.cuda.enable_cudnn_sdp(before)
    del model
    reset_memory(device)
    return (
        f"gradient probe (masked batch, {seq} tokens): finite with cuDNN SDPA: {with_cudnn}; "
        f"without: {without}"
    )


def check_sampler(args, anchor: Path) -> str:
    """Static sampler on the anchor batch, with the kernels ``rollout.kernels=auto`` picks
    (on CUDA: the fused Triton layers): logprobs vs teacher-forced forwards, same seed."""
    from transformers import AutoModelForCausalLM

    from steerl.generation.samplers import clear_cache
    from steerl.logprobs import completion_logprobs
    from steerl.rollout import encode_prompts, generate, resolve_kernels

    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(anchor / "model", dtype=dtype).to(device)
    tok = build_char_tokenizer(ALPHABET)
    prompts = [json.loads(line)["prompt"] for line in open(anchor / "p.jsonl")][: args.prompts]
    ids, mask = encode_prompts(tok, [p for p in prompts for _ in range(args.group)], device)

    kernels = resolve_kernels("auto", model, "static")

    def sample(model, seed, backend="static"):
        g = torch.Generator(device=device).manual_seed(seed)
        kw = dict(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        if backend == "static":
            kw["kernels"] = kernels
        return generate(
            model,
            ids,
            mask,
            max_new_tokens=args.new_tokens,
            generator=g,
            backend=backend,
            ignore_eos=True,
            **kw,
        )

    a, b = sample(model, 3), sample(model, 3)
    e = sample(model, 3, "eager")  # the HF-forward sampler in the same dtype, for scale
    same = torch.equal(a.completion_ids, b.completion_ids)
    with torch.no_grad():
        lp_model = completion_logprobs(model, a)[0]
        model.float()
        lp_fp32 = completion_logprobs(model, a)[0]
        lp_eager = completion_logprobs(model, e)[0]
    d_model = (a.logprobs - lp_model).abs()
    d_fp32 = (a.logprobs - lp_fp32).abs()
    d_eager = (e.logprobs - lp_eager).abs()
    del model
    clear_cache()
    reset_memory(device)
    return (
        f"static sampler check (kernels {kernels}): same seed -> same tokens: {same}; "
        f"|sampler - forward| logprob "
        f"mean {d_model.mean():.2e} max {d_model.max():.2e} ({dtype} forward), "
        f"mean {d_fp32.mean():.2e} max {d_fp32.max():.2e} (float32 forward); eager sampler "
        f"vs float32 forward: mean {d_eager.mean():.2e} max {d_eager.max():.2e}; "
        f"mean logprob {a.logprobs.mean():.2f}"
    )


# --------------------------------------------------------------------------- TRL
def run_trl(args, anchor: Path, optim: str = "adamw_torch") -> dict | None:
    try:
        import trl  # noqa: F401
    except ImportError as e:
        print(f"TRL not importable ({e}); skipping the TRL row")
        return None
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    device = torch.device(args.device)
    prompts = [json.loads(line)["prompt"] for line in open(anchor / "p.jsonl")]
    n = args.prompts * (args.warmup + args.steps)
    data = Dataset.from_dict({"prompt": (prompts * (n // len(prompts) + 1))[:n]})
    tok = AutoTokenizer.from_pretrained(anchor / "model")
    tok.padding_side = "left"
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(anchor / "model", dtype=dtype).to(device)

    def reward_fn(prompts, completions, **_):
        return digit_share(prompts, completions)

    times: list[float] = []
    gen: list[float] = []
    state = {"t0": 0.0, "peak": float("nan"), "nonfinite": 0}

    class Timer(TrainerCallback):
        def on_step_begin(self, a, s, c, **kw):
            if s.global_step == args.warmup:
                sync(device)
                reset_memory(device)
            sync(device)
            state["t0"] = time.perf_counter()

        def on_pre_optimizer_step(self, a, s, c, model=None, **kw):
            # On this random model some steps get non-finite gradients (steerl's stability
            # guard skips those updates); TRL would write NaN into the weights and crash in
            # the next generation, so such a step's gradients are zeroed here instead.
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            if not all(bool(g.isfinite().all()) for g in grads):
                state["nonfinite"] += 1
                for g in grads:
                    g.zero_()

        def on_step_end(self, a, s, c, model=None, **kw):
            sync(device)
            if s.global_step > args.warmup:
                times.append(time.perf_counter() - state["t0"])
                state["peak"] = peak_gib(device)

    conf = GRPOConfig(
        output_dir=tempfile.mkdtemp(),
        per_device_train_batch_size=args.micro_batch,
        gradient_accumulation_steps=args.prompts * args.group // args.micro_batch,
        num_generations=args.group,
        max_completion_length=args.new_tokens,
        generation_kwargs={"min_new_tokens": args.new_tokens},  # EOS never sampled
        temperature=1.0,
        beta=0.0,
        learning_rate=1e-6,
        optim=optim,  # transformers' name: adamw_torch (TRL's default) or adafactor
        max_steps=args.warmup + args.steps,
        bf16=device.type == "cuda",
        use_cpu=device.type == "cpu",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=0,
        dataloader_num_workers=0,
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=reward_fn,
        args=conf,
        train_dataset=data,
        processing_class=tok,
        callbacks=[Timer()],
    )
    inner = trainer._generate_and_score_completions

    def timed(*a, **kw):  # generation (+ scoring) time of each step
        sync(device)
        t0 = time.perf_counter()
        out = inner(*a, **kw)
        sync(device)
        gen.append(time.perf_counter() - t0)
        return out

    trainer._generate_and_score_completions = timed
    trainer.train()
    print(f"TRL steps with non-finite gradients (zeroed): {state['nonfinite']}", flush=True)
    gen = gen[-len(times) :]
    flops = train_flops(model, args.prompts * args.group, args.prompt_len + args.new_tokens)
    params = n_params(model)
    toks = [args.prompts * args.group * args.new_tokens] * len(times)
    del trainer, model
    reset_memory(device)
    name = f"TRL {trl.__version__}" + ("" if optim == "adamw_torch" else f" ({optim})")
    return summarise(name, times, gen, toks, state["peak"], flops, params, args)


# --------------------------------------------------------------------------- table
def summarise(name, times, gen, toks, peak, flops, params, args, train=None) -> dict:
    med = statistics.median(times)
    g = statistics.median(gen)
    tr = statistics.median(train) if train else med - g
    decode_tps = args.prompts * args.group * args.new_tokens / g
    return {
        "name": name,
        "median_s": med,
        "min_s": min(times),
        "max_s": max(times),
        "tokens_per_s": statistics.median(toks) / med,
        "peak_gib": peak,
        "gen_share": g / med,
        "gen_tokens_per_s": decode_tps,
        "train_s": tr,
        "train_tflops": flops / tr / 1e12,
        "params": params,
        "times": times,
        "gen_times": gen,
    }


def print_table(rows: list[dict], card: str, floor_tps: float | None, peak: float | None):
    head = (
        f"{'run':<34} {'step med s':>10} {'min':>6} {'max':>6} {'tok/s':>8} {'peak GiB':>8} "
        f"{'gen %':>6} {'gen tok/s':>9} {'% floor':>7} {'MFU train':>9}"
    )
    print(f"\ncard: {card}")
    print(head)
    print("-" * len(head))
    for r in rows:
        pf = f"{100 * r['gen_tokens_per_s'] / floor_tps:6.1f}%" if floor_tps else "    -"
        mfu = f"{100 * r['train_tflops'] * 1e12 / peak:8.1f}%" if peak else "       -"
        print(
            f"{r['name']:<34} {r['median_s']:10.3f} {r['min_s']:6.3f} {r['max_s']:6.3f} "
            f"{r['tokens_per_s']:8.0f} {r['peak_gib']:8.2f} {100 * r['gen_share']:5.1f}% "
            f"{r['gen_tokens_per_s']:9.0f} {pf:>7} {mfu:>9}"
        )
    phased = [r for r in rows if "update_gib" in r]
    if phased:
        print("\npeak allocated GiB by phase (resident = between steps: weights, optimizer state)")
        for r in phased:
            print(
                f"{r['name']:<34} resident {r['resident_gib']:6.2f}  generation "
                f"{r['generate_gib']:6.2f}  update {r['update_gib']:6.2f}"
            )
    trl = next((r for r in rows if r["name"].startswith("TRL")), None)
    if trl:
        for r in rows:
            if r is not trl:
                print(
                    f"{r['name']}: {trl['median_s'] / r['median_s']:.2f}x faster than TRL, "
                    f"peak memory {r['peak_gib'] / trl['peak_gib']:.2f}x TRL's"
                )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="small shapes (CPU smoke test)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per run")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument(
        "--variants",
        default="static,static+ckpt,static+ckpt+mb64,trl,eager",
        help="runs in order: static, static+ckpt, static+ckpt+mb64, static+ckpt+adafactor, "
        "static+ckpt+mb64+adafactor, static+compile, static+torch, static+ckpt+mb64+compile, "
        "eager, trl, trl+adafactor",
    )
    ap.add_argument("--json", default=None, help="write every number here")
    ap.add_argument(
        "--snapshot",
        default="",
        help="variants whose timed steps record allocations: prints what is live at the peak",
    )
    args = ap.parse_args()
    if args.tiny:
        args.prompt_len, args.new_tokens = min(args.prompt_len, 16), min(args.new_tokens, 12)
    device = torch.device(args.device)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    variants = {  # each: extra overrides of the steerl recipe
        "static": ["rollout.backend=static"],
        "static+ckpt": ["rollout.backend=static", "model.gradient_checkpointing=true"],
        "static+ckpt+mb64": [  # one forward/backward over the whole batch of 64
            "rollout.backend=static",
            "model.gradient_checkpointing=true",
            "loss.micro_batch_size=64",
        ],
        "static+ckpt+adafactor": [  # no first moment, factored second: a few MiB of state
            "rollout.backend=static",
            "model.gradient_checkpointing=true",
            "optim.name=adafactor",
        ],
        "static+ckpt+mb64+adafactor": [
            "rollout.backend=static",
            "model.gradient_checkpointing=true",
            "loss.micro_batch_size=64",
            "optim.name=adafactor",
        ],
        "static+compile": ["rollout.backend=static", "rollout.compile=true"],
        "static+torch": ["rollout.backend=static", "rollout.kernels=torch"],  # no Triton kernels
        "static+ckpt+mb64+compile": [
            "rollout.backend=static",
            "rollout.compile=true",
            "model.gradient_checkpointing=true",
            "loss.micro_batch_size=64",
        ],
        "eager": ["rollout.backend=eager"],
    }
    floor_tps = peak = None
    if device.type == "cuda":  # the floor first: a failed run below can leave CUDA unusable
        bw = bandwidth(device)
        weight_bytes = n_params(build_model(args.tiny)) * 2
        floor_s = weight_bytes / bw
        floor_tps = args.prompts * args.group / floor_s
        peak = next((v for k, v in PEAK_BF16.items() if k in card), None)
    rows: list[dict] = []

    def report(check: str) -> None:
        if floor_tps:
            print(
                f"\nfloor: {weight_bytes / 1e9:.2f} GB of bf16 weights per decode step at "
                f"{bw / 1e12:.2f} TB/s (measured copy) = {floor_s * 1e3:.3f} ms/step, "
                f"{floor_tps:.0f} tokens/s at batch {args.prompts * args.group}"
            )
        print(
            f"setup: {args.prompts} prompts x {args.group} samples, {args.prompt_len} prompt "
            f"tokens, {args.new_tokens} new tokens (EOS off), micro-batch {args.micro_batch}, "
            f"{args.steps} timed steps after {args.warmup} warm-up; torch {torch.__version__}"
        )
        print(check)
        print_table(rows, card, floor_tps, peak)
        if args.json:
            Path(args.json).write_text(json.dumps({"card": card, "rows": rows}, indent=1))

    with tempfile.TemporaryDirectory() as tmp:
        anchor = save_anchor(args.tiny, Path(tmp), args.prompts * 4, args.prompt_len)
        check = probe_attention(args, anchor) if device.type == "cuda" else ""
        print(check, flush=True)
        check += "\n" + check_sampler(args, anchor)
        print(check, flush=True)
        for v in args.variants.split(","):
            t0 = time.perf_counter()
            try:
                if v in ("trl", "trl+adafactor"):
                    optim = "adafactor" if v == "trl+adafactor" else "adamw_torch"
                    r = run_trl(args, anchor, optim)
                    rows.extend([r] if r else [])
                else:
                    snap = v in args.snapshot.split(",")
                    rows.append(run_steerl(args, anchor, f"steerl ({v})", variants[v], snap))
            except Exception as e:  # noqa: BLE001 - report what was measured, then the error
                report(check)
                print(f"{v} failed: {type(e).__name__}: {str(e).splitlines()[0]}")
                raise
            print(f"{v} done in {time.perf_counter() - t0:.0f}s", flush=True)
            report(check)


if __name__ == "__main__":
    main()
