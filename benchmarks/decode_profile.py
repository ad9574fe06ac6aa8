"""Where the static sampler's time goes on the anchor batch (GPU): prefill, one graph replay,
kernel count and GPU time of one decode step (eager and compiled), and a gradient-NaN probe of
the SDPA backends on sampled batches.

    python benchmarks/decode_profile.py [--probe]
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from gpu_step import build_model  # noqa: E402

from steerl.generation.static import StaticSampler  # noqa: E402


def events_ms(fn, reps: int) -> float:
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b))
    return statistics.median(ts)


def main() -> None:
    dev = torch.device("cuda")
    model = build_model(False).to(dev, torch.bfloat16).eval()
    n, p, new = 64, 64, 256
    ids = torch.randint(3, 151936, (n, p), device=dev)
    mask = torch.ones_like(ids)
    gen = torch.Generator(device=dev).manual_seed(0)
    kw = dict(eos_token_id=None, pad_token_id=0, temperature=1.0, top_p=1.0, greedy=False)
    torch.set_grad_enabled(False)
    for compiled in (False, True):
        t0 = time.perf_counter()
        s = StaticSampler(
            model, n, p, new, generator=gen, use_graph=True, compile_step=compiled, **kw
        )
        torch.cuda.synchronize()
        build = time.perf_counter() - t0
        pre = events_ms(lambda s=s: s.prefill(ids, mask), 5)
        s.prefill(ids, mask)
        rep = events_ms(s.graph.replay, 50)
        s.prefill(ids, mask)
        eager_step = events_ms(s._decode_step, 10)
        fwd_only = events_ms(s._forward_fn, 10)
        t0 = time.perf_counter()
        s.run(ids, mask)
        torch.cuda.synchronize()
        total = time.perf_counter() - t0
        try:
            from torch.profiler import ProfilerActivity, profile

            s.prefill(ids, mask)
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                s._decode_step()
                torch.cuda.synchronize()
            ev = [e for e in prof.events() if e.device_type.name == "CUDA"]
            kern = f"kernels/step {len(ev)}, summed {sum(e.device_time for e in ev) / 1e3:.3f} ms"
            top = prof.key_averages().table(sort_by="cuda_time_total", row_limit=12)
        except Exception as e:  # noqa: BLE001
            kern, top = f"profiler failed: {e}", ""
        print(
            f"compile={compiled}: build {build:.1f}s, prefill {pre:.2f} ms, graph replay "
            f"{rep:.3f} ms/token, eager step {eager_step:.2f} ms (forward {fwd_only:.2f}), "
            f"{kern}, run() {total:.3f}s",
            flush=True,
        )
        print(top[:3000])
        s = None

    if "--probe" not in sys.argv:
        return
    # gradient probe (--probe): NaN counts per SDPA setting on sampled batches
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model.train()
    s = StaticSampler(model, n, p, new, generator=gen, use_graph=True, **kw)
    toks, _, _ = s.run(ids, mask)
    s = None
    torch.set_grad_enabled(True)
    full = torch.cat([ids, toks], 1)
    settings = {
        "default": None,
        "flash+math": [SDPBackend.FLASH_ATTENTION, SDPBackend.MATH],
        "efficient+math": [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH],
        "cudnn+math": [SDPBackend.CUDNN_ATTENTION, SDPBackend.MATH],
        "math": [SDPBackend.MATH],
    }
    for name, backends in settings.items():
        bad = 0
        for i in range(0, n, 8):
            model.zero_grad(set_to_none=True)
            x = full[i : i + 8]
            ctx = sdpa_kernel(backends) if backends else torch.enable_grad()
            with ctx:
                logits = model(input_ids=x, attention_mask=torch.ones_like(x)).logits
                v = logits.shape[-1]
                loss = F.cross_entropy(logits[:, :-1].reshape(-1, v).float(), x[:, 1:].reshape(-1))
                loss.backward()
            bad += not all(
                q.grad.isfinite().all() for q in model.parameters() if q.grad is not None
            )
        print(f"grad probe {name}: {bad}/8 micro-batches with non-finite gradients", flush=True)


if __name__ == "__main__":
    main()
