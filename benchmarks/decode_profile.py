"""Where the static sampler's time goes on the anchor batch (GPU): prefill, one graph replay,
kernel count and GPU time of one decode step (eager and compiled), and a gradient-NaN probe of
the SDPA backends on sampled batches.

    python benchmarks/decode_profile.py [VARIANT ...] [--no-sweep] [--shape=qwen7b] [--rows=64]
        [--probe]

The tile sweeps first (each kernel of the fused layer on the model's shapes, 24 distinct
weights in one CUDA graph (6 for ``--shape``), against the tensor ops it replaces); their
fastest tiles serve the variants after them. ``--shape`` decodes with another of
``gpu_step.SHAPES``, e.g. to compare fused and compiled layers at 7B widths. Per variant: one
decode step (graph replay) and a whole ``run()`` (prefill, the replays, the early-stop
checks), each against the weight-streaming floor.
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


#: Sampler variants compared (StaticSampler keyword arguments).
VARIANTS = {
    "eager layers": dict(),
    "eager layers, triton attention + pick": dict(attention="triton", pick="triton"),
    "compiled": dict(compile_step=True),
    "compiled, triton attention": dict(compile_step=True, attention="triton"),
    "compiled, triton pick": dict(compile_step=True, pick="triton"),
    "compiled, triton attention + pick": dict(compile_step=True, attention="triton", pick="triton"),
    "eager layers, triton attention + pick + mlp": dict(
        attention="triton", pick="triton", mlp="triton"
    ),
    "compiled, triton attention + pick + mlp": dict(
        compile_step=True, attention="triton", pick="triton", mlp="triton"
    ),
    "fused layers, triton attention + pick": dict(
        attention="triton", pick="triton", mlp="triton", layer="triton"
    ),
    "fused layers, no PDL": dict(
        attention="triton", pick="triton", mlp="triton", layer="triton", pdl=False
    ),
    # the narrow entries of the tile tables and split attention at any width (the anchor's
    # tiles unless a sweep ran): the width rules' baseline
    "fused layers, narrow tiles": dict(
        attention="triton", pick="triton", mlp="triton", layer="triton", narrow=True
    ),
}

#: gate_up_silu tiles tried by :func:`bench_gate_up`: (BLOCK_N, BLOCK_K, stages, warps).
GATE_UP_CONFIGS = [
    (32, 128, 4, 4),
    (32, 64, 4, 4),
    (32, 256, 3, 4),
    (16, 128, 4, 4),
    (16, 256, 4, 4),
    (16, 64, 6, 4),
    (64, 128, 3, 4),
    (64, 64, 4, 4),
    (32, 128, 5, 4),
    (32, 128, 4, 8),
]


def graph_ms(fn, reps: int = 50) -> float:
    """Median ms of one replay of a CUDA graph holding ``fn()`` (after a warm-up call)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return events_ms(graph.replay, reps)


def bench_gate_up(dev, layers: int = 24) -> None:
    """The MLP's gated half of the anchor (64 rows, 896 -> 4,864) over ``layers`` distinct
    weight pairs (418 MB: streamed from memory, not L2) in one CUDA graph: cuBLAS + pointwise
    against :func:`gate_up_silu` per tile config, on raw rows (as the compiled layers call it;
    :func:`bench_layer_kernels` sweeps it as the fused layer calls it and sets the default)."""
    from steerl.generation import gemm as G

    g = torch.Generator(device=dev).manual_seed(2)
    x = torch.randn(64, 896, device=dev, generator=g).bfloat16()
    ws = [
        (torch.randn(2, 4864, 896, device=dev, generator=g) * 0.03).bfloat16()
        for _ in range(layers)
    ]
    nbytes = 2 * 4864 * 896 * 2

    def torch_mlp():
        for w in ws:
            F.silu(F.linear(x, w[0])) * F.linear(x, w[1])

    base = graph_ms(torch_mlp) / layers
    print(f"gate/up, tensor ops (2 GEMMs + silu*mul): {1e3 * base:.1f} us per layer, "
          f"{nbytes / base / 1e6:.0f} GB/s")  # fmt: skip
    ref = F.silu(x.double() @ ws[0][0].double().T) * (x.double() @ ws[0][1].double().T)

    def run(first=False, **kw):
        return [G.gate_up_silu(x, w[0], w[1], **kw) for w in ws[: 1 if first else None]][0]

    sweep("gate_up_silu", GATE_UP_CONFIGS, run, ref, nbytes, base, layers)


#: rows_linear tiles tried by :func:`bench_layer_kernels`: (BLOCK_N, BLOCK_K, stages, warps,
#: split_k); the o projection (896 deep) tries the unsplit ones only.
ROWS_CONFIGS = [
    (64, 128, 3, 4, 4),
    (64, 64, 4, 4, 4),
    (128, 64, 3, 8, 4),
    (64, 128, 3, 4, 1),
    (16, 128, 4, 4, 1),
    (16, 256, 3, 4, 1),
    (32, 128, 4, 4, 1),
    (16, 128, 4, 4, 2),
    (16, 128, 4, 4, 4),
    (16, 256, 3, 4, 4),
    (32, 128, 4, 4, 4),
    (16, 128, 4, 4, 8),
    (32, 64, 4, 4, 8),
    (64, 128, 3, 4, 8),
]
#: decode_attention tiles: (BLOCK_S, splits, warps).
ATTN_CONFIGS = [
    (64, 8, 4),
    (64, 4, 4),
    (64, 2, 4),
    (64, 1, 4),
    (128, 2, 4),
    (128, 1, 4),
    (32, 8, 4),
    (64, 4, 2),
]
#: qkv_rope tiles: (BLOCK_H, BLOCK_K, stages, warps).
QKV_CONFIGS = [
    (32, 32, 4, 4),
    (32, 64, 3, 4),
    (16, 64, 4, 4),
    (16, 128, 4, 4),
    (32, 128, 3, 4),
    (16, 32, 4, 4),
]


def sweep(name: str, configs, run, ref, nbytes: float, base_ms: float, layers: int):
    """Time ``run(**tile)`` (``layers`` products in one CUDA graph) per tile; print GB/s and
    the error of its first product against ``ref``; returns (ms, tile) of the fastest."""
    best = None
    for cfg in configs:
        kw = dict(block_k=cfg[1], stages=cfg[2], warps=cfg[3])
        kw["block_h" if name == "qkv_rope" else "block_n"] = cfg[0]
        if len(cfg) > 4:
            kw["split_k"] = cfg[4]
        try:
            out = run(first=True, **kw).float()
            rel = ((out - ref).norm() / ref.norm()).item()
            ms = graph_ms(lambda kw=kw: run(**kw)) / layers
        except Exception as e:  # noqa: BLE001
            print(f"{name} {kw}: failed: {type(e).__name__}: {str(e)[:200]}")
            continue
        print(f"{name} {kw}: {1e3 * ms:.1f} us per layer, {nbytes / ms / 1e6:.0f} GB/s, "
              f"rel. error vs float64 {rel:.1e}", flush=True)  # fmt: skip
        if best is None or ms < best[0]:
            best = (ms, cfg)
    if best is not None:
        print(f"{name}: fastest {best[1]} at {1e3 * best[0]:.1f} us ({base_ms / best[0]:.2f}x "
              "the tensor ops)", flush=True)  # fmt: skip
    return best


def bench_layer_kernels(dev, conf=None, layers: int = 24, n: int = 64) -> None:
    """The fused layer's kernels as it runs them (``n`` rows, the shapes of ``conf``, a model
    config, default the anchor's; each norm's input prepared by the kernel before), over
    ``layers`` distinct weights in one CUDA graph, per tile, against the tensor ops they
    replace; the fastest tiles serve the variants below (stored where the kernels' width
    rules will look them up)."""
    from steerl.generation import gemm as G
    from steerl.generation import qkv as Q

    g = torch.Generator(device=dev).manual_seed(3)
    hid, inter, hq, hkv, d, s = 896, 4864, 14, 2, 64, 320
    if conf is not None:
        hid, inter = conf.hidden_size, conf.intermediate_size
        hq, hkv = conf.num_attention_heads, conf.num_key_value_heads
        d = getattr(conf, "head_dim", None) or hid // hq

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, device=dev, generator=g) * scale).bfloat16()

    x, h = rnd(n, hid), rnd(n, hid)
    nw = 1 + rnd(hid, scale=0.1)
    a = rnd(n, inter)
    w_o = [rnd(hid, hid, scale=0.03) for _ in range(layers)]
    w_d = [rnd(hid, inter, scale=0.03) for _ in range(layers)]
    w_gu = [rnd(2, inter, hid, scale=0.03) for _ in range(layers)]
    w_qkv = [rnd((hq + 2 * hkv) * d, hid, scale=0.03) for _ in range(layers)]
    b_qkv = rnd((hq + 2 * hkv) * d, scale=0.1)
    kc, vc = rnd(layers, n, hkv, s, d), rnd(layers, n, hkv, s, d)
    cos, sin = rnd(n, d), rnd(n, d)
    slot = torch.tensor([100], device=dev)
    hw, ss = h * nw, h.float().pow(2).sum(-1, keepdim=True)  # the prepared norm input

    def norm64(t):
        t = t.double()
        return t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + 1e-6) * nw.double()

    # o projection (896 -> 896) and down projection (4,864 -> 896), with the residual and the
    # next norm's input (norm_out), against GEMM + add + RMSNorm
    for name, xin, ws in (("o_proj", x, w_o), ("down", a, w_d)):

        def torch_ops(xin=xin, ws=ws):
            for w in ws:
                F.rms_norm(h + F.linear(xin, w), (hid,), nw, 1e-6)

        base = graph_ms(torch_ops) / layers
        ref = h.double() + xin.double() @ ws[0].double().T

        def run(first=False, xin=xin, ws=ws, **kw):
            outs = [
                G.rows_linear(xin, w, res=h, norm_out=nw, **kw) for w in ws[: 1 if first else None]
            ]
            return outs[0][0]

        nbytes = ws[0].numel() * 2
        print(f"{name}, tensor ops (GEMM + add + norm): {1e3 * base:.1f} us per layer", flush=True)
        # as rows_linear splits: the output projection never (K < 2N), the down projection
        # at wide shapes always (its own tile), at narrow ones as fast as it is
        wide = G.width(hid) == "wide"
        configs = [
            c for c in ROWS_CONFIGS
            if (c[4] == 1 if name == "o_proj" else not wide or c[4] > 1)
        ]  # fmt: skip
        best = sweep(f"rows_linear {name}", configs, run, ref, nbytes, base, layers)
        if best is not None and (name == "down" or wide):
            # narrow: both share a tile and the bigger product sets it; wide: each its own
            G.ROWS_TILES[G.rows_tile_key(hid, best[1][4])] = best[1][:4]
            if name == "down":
                G.ROWS_SPLIT_K = best[1][4]

    # gate/up + SiLU (896 -> 2 x 4,864) on the prepared norm input
    base = (
        graph_ms(
            lambda: [
                F.silu(F.linear(F.rms_norm(h, (hid,), nw, 1e-6), w[0]))
                * F.linear(F.rms_norm(h, (hid,), nw, 1e-6), w[1])
                for w in w_gu
            ]
        )
        / layers
    )
    xn = norm64(h)
    ref = F.silu(xn @ w_gu[0][0].double().T) * (xn @ w_gu[0][1].double().T)

    def run_gu(first=False, **kw):
        ws = w_gu[: 1 if first else None]
        return [G.gate_up_silu(hw, w[0], w[1], ss=ss, eps=1e-6, **kw) for w in ws][0]

    print(f"norm + gate/up, tensor ops: {1e3 * base:.1f} us per layer", flush=True)
    best = sweep("gate_up_silu (prescaled)", GATE_UP_CONFIGS, run_gu, ref, 2 * inter * hid * 2,
                 base, layers)  # fmt: skip
    if best is not None:
        G.GATE_UP_TILES[G.width(hid)] = best[1]

    # decode attention (64 rows, 14 query heads on 2 KV heads, 320 keys of which 200 valid)
    from steerl.generation import kernels as K

    q = rnd(n, hq, d)
    valid = torch.zeros(n, s, dtype=torch.bool, device=dev)
    valid[:, :200] = True
    mask = torch.zeros(n, 1, 1, s, dtype=torch.bfloat16, device=dev)
    mask.masked_fill_(~valid[:, None, None], float("-inf"))
    qg = q.view(n, hkv, hq // hkv, d)
    scale = d**-0.5
    base = (
        graph_ms(
            lambda: [
                F.scaled_dot_product_attention(qg, kc[i], vc[i], attn_mask=mask, scale=scale)
                for i in range(layers)
            ]  # fmt: skip
        )
        / layers
    )
    ref = F.scaled_dot_product_attention(
        q[:, :, None].double(),
        kc[0].double().repeat_interleave(hq // hkv, 1),
        vc[0].double().repeat_interleave(hq // hkv, 1),
        attn_mask=valid[:, None, None],
        scale=scale,
    )[:, :, 0]
    print(f"attention, SDPA: {1e3 * base:.1f} us per layer", flush=True)
    best = None
    for block_s, splits, warps in ATTN_CONFIGS:
        kw = dict(block_s=block_s, splits=splits, warps=warps)
        try:
            rel = (K.decode_attention(q, kc[0], vc[0], valid, scale, **kw).float() - ref).norm()
            ms = graph_ms(lambda kw=kw: [K.decode_attention(q, kc[i], vc[i], valid, scale, **kw)
                                         for i in range(layers)]) / layers  # fmt: skip
        except Exception as e:  # noqa: BLE001
            print(f"decode_attention {kw}: failed: {type(e).__name__}: {str(e)[:200]}")
            continue
        print(f"decode_attention {kw}: {1e3 * ms:.1f} us per layer, rel. error "
              f"{(rel / ref.norm()).item():.1e}", flush=True)  # fmt: skip
        if best is None or ms < best[0]:
            best = (ms, (block_s, splits, warps))
    if best is not None:
        K.ATTN_BLOCK_S, K.ATTN_SPLITS, K.ATTN_WARPS = best[1]
        K.ATTN_UNSPLIT_FROM = 1 << 30  # the sweep's splits at this shape
        print(f"decode_attention: fastest {best[1]} at {1e3 * best[0]:.1f} us", flush=True)

    # norm + q/k/v + RoPE + cache writes
    from steerl.generation.layers import attn_in

    def torch_qkv():
        for i, w in enumerate(w_qkv):
            attn_in(h[:, None], None, nw, w, b_qkv, cos[:, None, None], sin[:, None, None],
                    kc[i], vc[i], slot, 1e-6, hq, hkv)  # fmt: skip

    base = graph_ms(torch_qkv) / layers
    ref = (norm64(h) @ w_qkv[0].double().T + b_qkv.double())[:, : hq * d].view(n, hq, d)
    half = d // 2
    c, sn = cos.double()[:, None], sin.double()[:, None]
    ref = ref * c + torch.cat([ref[..., half:], ref[..., :half]], -1) * sn

    def run_qkv(first=False, **kw):
        outs = [
            Q.qkv_rope(hw, None, 1e-6, w, b_qkv, cos, sin, slot, kc[i], vc[i], hq, hkv, ss=ss, **kw)
            for i, w in enumerate(w_qkv[: 1 if first else None])
        ]
        return outs[0]

    print(f"norm + qkv + rope + cache, tensor ops: {1e3 * base:.1f} us per layer", flush=True)
    best = sweep("qkv_rope", QKV_CONFIGS, run_qkv, ref, w_qkv[0].numel() * 2, base, layers)
    if best is not None:
        Q.QKV_BLOCK_H, Q.QKV_BLOCK_K, Q.QKV_STAGES, Q.QKV_WARPS = best[1]


def pick_state(rows: int, cols: int, dev) -> dict[str, torch.Tensor]:
    """The sampler state ``race_pick`` updates in place, zeroed."""
    return dict(
        done=torch.zeros(rows, dtype=torch.bool, device=dev),
        step=torch.zeros(1, dtype=torch.long, device=dev),
        cur=torch.zeros(rows, dtype=torch.long, device=dev),
        tokens=torch.zeros(rows, cols, dtype=torch.long, device=dev),
        logprobs=torch.zeros(rows, cols, device=dev),
    )


def check_kernels(dev) -> None:
    """The Triton kernels against tensor ops on random bf16 inputs of the anchor's shapes."""
    from steerl.generation import kernels as K
    from steerl.generation import race as R

    g = torch.Generator(device=dev).manual_seed(1)
    n, hq, hkv, s, d = 64, 14, 2, 320, 64
    q = torch.randn(n, hq, d, device=dev, generator=g).bfloat16()
    k = torch.randn(n, hkv, s, d, device=dev, generator=g).bfloat16()
    v = torch.randn(n, hkv, s, d, device=dev, generator=g).bfloat16()
    valid = torch.rand(n, s, device=dev, generator=g) > 0.5
    out = K.decode_attention(q, k, v, valid, 0.125).float()
    ref = F.scaled_dot_product_attention(
        q[:, :, None].double(),
        k.double().repeat_interleave(hq // hkv, 1),
        v.double().repeat_interleave(hq // hkv, 1),
        attn_mask=valid[:, None, None],
        scale=0.125,
    )[:, :, 0]
    rel = ((out - ref).norm() / ref.norm()).item()
    print(f"check: triton decode attention vs float64 SDPA: relative error {rel:.2e}")
    logits = (torch.randn(n, 151936, device=dev, generator=g) * 4).bfloat16()
    state = pick_state(n, 4, dev)
    seed = torch.tensor([5], device=dev)
    R.race_pick(logits, seed, inv_temp=1.0, greedy=True, pad=0, eos=None, **state)
    z = logits.float()
    ok = torch.equal(state["cur"], z.argmax(-1))
    lp_err = state["logprobs"][:, 0] - z.log_softmax(-1).gather(-1, z.argmax(-1)[:, None])[:, 0]
    print(f"check: triton greedy pick equals argmax: {ok}, log-prob error {lp_err.abs().max():.2e}")
    # sampling: 16,384 rows of one distribution over 1,000 tokens against its softmax
    rows, vocab = 16384, 1000
    base = torch.randn(vocab, device=dev, generator=g) * 2
    logits = base.expand(rows, vocab).contiguous()
    state = pick_state(rows, 1, dev)
    try:
        R.race_pick(logits, seed, inv_temp=0.7, greedy=False, pad=0, eos=None, **state)
        freq = torch.bincount(state["cur"], minlength=vocab).double() / rows
        err = (freq - (base * 0.7).double().softmax(-1)).abs().max().item()
        lp = (base * 0.7).log_softmax(-1)[state["cur"]]
        lp_err = (state["logprobs"][:, 0] - lp).abs().max().item()
        print(
            f"check: triton sampled frequencies vs softmax: max abs {err:.4f} (16k rows); "
            f"log-prob error {lp_err:.2e}"
        )
    except Exception as e:  # noqa: BLE001
        print(f"check: triton sampling failed: {e}")


def main() -> None:
    import os

    from gpu_step import bandwidth, n_params

    dev = torch.device("cuda")
    shape = next((a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--shape=")), None)
    model = build_model(False, shape, "cuda").to(dev, torch.bfloat16).eval()
    n = int(next((a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--rows=")), 64))
    p, new = 64, 256
    floor_ms = n_params(model) * 2 / bandwidth(dev) * 1e3
    from steerl.generation.kernels import pdl_launch

    pdl = bool(pdl_launch(dev))
    print(f"{torch.cuda.get_device_name()}: floor {floor_ms:.3f} ms/step, PDL {pdl}", flush=True)
    ids = torch.randint(3, 151936, (n, p), device=dev)
    mask = torch.ones_like(ids)
    mask[: n // 4, : p // 2] = 0  # some left padding, as real batches have
    kw = dict(eos_token_id=None, pad_token_id=0, temperature=1.0, top_p=1.0, greedy=False)
    torch.set_grad_enabled(False)
    check_kernels(dev)
    if "--no-sweep" not in sys.argv:  # the fastest tiles for this shape serve the variants
        if shape is None:
            bench_gate_up(dev)
        bench_layer_kernels(dev, model.config, layers=24 if shape is None else 6, n=n)
    pick = [a for a in sys.argv[1:] if not a.startswith("--")]
    rows, ref = [], None
    out = os.environ.get("OUT")
    for name, opts in VARIANTS.items():
        if pick and not any(k in name for k in pick):
            continue
        from steerl.generation import fused
        from steerl.generation import gemm as G
        from steerl.generation import kernels as K

        opts = dict(opts)
        rules = G.WIDE, K.ATTN_UNSPLIT_FROM, fused.FUSED_MAX_WIDTH
        fused.FUSED_MAX_WIDTH = 1 << 30  # a fused variant measures the fused layers at any width
        if opts.pop("narrow", False):
            G.WIDE = K.ATTN_UNSPLIT_FROM = 1 << 30
        gen = torch.Generator(device=dev).manual_seed(0)
        t0 = time.perf_counter()
        try:
            s = StaticSampler(model, n, p, new, generator=gen, use_graph=True, **kw, **opts)
        except Exception as e:  # noqa: BLE001
            print(f"{name}: failed to build: {type(e).__name__}: {str(e)[:300]}", flush=True)
            G.WIDE, K.ATTN_UNSPLIT_FROM, fused.FUSED_MAX_WIDTH = rules
            continue
        if opts.get("layer") == "triton" and s.layer != "triton":
            print(f"{name}: the fused layers do not apply here; tensor-op layers", flush=True)
        torch.cuda.synchronize()
        build = time.perf_counter() - t0
        toks, _, _ = s.run(ids, mask)
        same = "-" if ref is None else f"{(toks == ref).float().mean().item():.3f}"
        ref = toks if ref is None else ref
        s.prefill(ids, mask)
        rep = events_ms(s.graph.replay, 100)
        run_ms = events_ms(lambda s=s: s.run(ids, mask), 3)  # what a rollout's sampling costs
        pre_ms = events_ms(lambda s=s: s.prefill(ids, mask), 5)
        from torch.profiler import ProfilerActivity, profile

        s.prefill(ids, mask)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            s._decode_step()
            torch.cuda.synchronize()
        ev = [e for e in prof.events() if e.device_type.name == "CUDA"]
        summed = sum(e.device_time for e in ev) / 1e3
        top = prof.key_averages().table(
            sort_by="cuda_time_total", row_limit=30, max_name_column_width=70
        )
        if out:
            with open(Path(out, "kernels.txt"), "a") as f:
                f.write(f"== {name}\n{top}\n")
        rows.append((name, build, rep, len(ev), summed, floor_ms / rep, same, run_ms, pre_ms))
        print(
            f"{name}: build {build:.1f}s, replay {rep:.3f} ms/token, {len(ev)} kernels, "
            f"summed {summed:.3f} ms, {100 * floor_ms / rep:.1f}% of floor, same tokens {same}; "
            f"run() {run_ms:.1f} ms = prefill {pre_ms:.1f} + {new - 1} replays "
            f"{rep * (new - 1):.1f} + other {run_ms - pre_ms - rep * (new - 1):.1f}; "
            f"{100 * floor_ms * new / run_ms:.1f}% of floor over run()",
            flush=True,
        )
        s = None
        G.WIDE, K.ATTN_UNSPLIT_FROM, fused.FUSED_MAX_WIDTH = rules
        torch.cuda.empty_cache()
    print(
        "\n| variant | build s | ms/token | kernels | kernel ms | % floor | same tokens "
        "| run() ms | prefill ms | % floor over run() |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        name, build, rep, count, summed, share, same, run_ms, pre_ms = r
        cells = f"{build:.1f} | {rep:.3f} | {count} | {summed:.3f} | {100 * share:.1f}%"
        whole = f"{run_ms:.1f} | {pre_ms:.1f} | {100 * floor_ms * new / run_ms:.1f}%"
        print(f"| {name} | {cells} | {same} | {whole} |")

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
