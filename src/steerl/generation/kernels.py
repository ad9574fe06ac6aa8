"""Triton kernels for the static sampler's decode step (CUDA; optional): the attention, and
what every decode kernel shares (early launch, float32 precision, arrival counters).

- :func:`decode_attention`: one query token per row against the static KV cache, grouped-query
  heads and a key-validity mask. ``F.scaled_dot_product_attention`` picks a prefill-shaped
  kernel for it (about 11 µs per layer on an H100 for 5 MB of cache); this one reads each
  row's keys and values once, with the query heads that share a KV head, split over several
  programs per (row, KV head) whose partial softmaxes the last of them to finish merges, in one
  kernel.
- :func:`pdl_launch` / :func:`pdl_args` / :func:`pdl_enter`: programmatic dependent launch
  of the fused layer's kernels; :func:`dot_precision`; :func:`arrival_counters`.

(The matrix products are in :mod:`steerl.generation.gemm`, the q/k/v kernel in
:mod:`steerl.generation.qkv`, the sampling kernel in :mod:`steerl.generation.race`.) Without
Triton or off CUDA the sampler uses the tensor-op versions. Tests run the kernels on the CPU
through Triton's interpreter (``TRITON_INTERPRET=1``) when Triton is installed.
"""

from __future__ import annotations

import torch

try:  # Triton ships with CUDA builds of torch; the CPU build has none
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None
    tl = None

try:  # grid dependency control (Triton >= 3.3): see :func:`pdl_launch`
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:  # pragma: no cover - depends on the install
    gdc_launch_dependents = gdc_wait = None


_PDL: dict[int, bool] = {}
#: The oldest CUDA driver whose graphs keep programmatic dependent launches from a stream
#: capture (12.3).
PDL_MIN_DRIVER = 12030


def _driver_version() -> int:
    """The CUDA driver's version (12030 for 12.3); where torch does not say, taken as new
    enough."""
    get = getattr(torch._C, "_cuda_getDriverVersion", None)
    return int(get()) if get is not None else PDL_MIN_DRIVER


def pdl_launch(device: torch.device, want: bool = True) -> dict:
    """Launch options for programmatic dependent launch (PDL) of a decode kernel.

    With PDL a kernel is launched while the one before it on the stream still runs: its
    programs start, wait at ``gdc_wait`` (the kernels' first instruction under their ``PDL``
    flag) until the previous kernel has finished and its writes are visible, and the launch
    latency between the two (about 1 µs a kernel in a decode step's CUDA graph) is hidden.
    Each kernel also allows its own successor to launch at once (``gdc_launch_dependents``).
    Every kernel launched this way waits before touching memory, so each starts after all
    the kernels before it have finished, as without PDL.

    Returns ``{"launch_pdl": True}`` when ``want`` and the device (compute capability >= 9,
    Hopper), the driver (:data:`PDL_MIN_DRIVER`) and the installed Triton support it, else
    ``{}`` (a plain launch). :func:`pdl_args` adds the kernels' matching ``PDL`` flag.
    """
    if not want or device.type != "cuda" or gdc_wait is None:
        return {}
    index = device.index if device.index is not None else torch.cuda.current_device()
    ok = _PDL.get(index)
    if ok is None:
        try:
            from triton.backends.nvidia.compiler import CUDAOptions

            fields = CUDAOptions.__dataclass_fields__
        except (ImportError, AttributeError):  # pragma: no cover - depends on the install
            fields = {}
        ok = _PDL[index] = (
            "launch_pdl" in fields
            and torch.cuda.get_device_capability(index)[0] >= 9
            and _driver_version() >= PDL_MIN_DRIVER
        )
    return {"launch_pdl": True} if ok else {}


def pdl_args(device: torch.device, want: bool) -> dict:
    """A decode kernel's launch arguments for :func:`pdl_launch`: its ``PDL`` flag (whether
    it must wait first, see :func:`pdl_enter`) and the launch option, which always agree."""
    launch = pdl_launch(device, want)
    return {"PDL": bool(launch), **launch}


def dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot``'s input precision for operands of ``dtype``: ``ieee`` for float32 (Triton's
    default, TF32, would round a float32 model's products to 10-bit mantissas), else the
    default (bf16/fp16 operands are exact in the tensor cores)."""
    return "ieee" if dtype == torch.float32 else "tf32"


def unsupported_reason(model, *, interpreter_ok: bool = False) -> str | None:
    """Why the kernels cannot serve ``model``'s decode step, or ``None`` when they can.

    They run on CUDA; with ``interpreter_ok`` also on the CPU under Triton's interpreter
    (``TRITON_INTERPRET=1``: slow, for tests).
    """
    import os

    if triton is None:
        return "Triton is not installed (it ships with CUDA builds of torch)"
    device = next(model.parameters()).device
    interpreted = interpreter_ok and os.environ.get("TRITON_INTERPRET") == "1"
    if device.type != "cuda" and not interpreted:
        return f"the model is on {device.type}, not CUDA"
    conf = model.config
    d = getattr(conf, "head_dim", None) or conf.hidden_size // conf.num_attention_heads
    if d < 16 or d & (d - 1):
        return f"the attention kernel needs a power-of-2 head size >= 16, the model has {d}"
    return None


if triton is not None:

    @triton.jit
    def pdl_enter(PDL: tl.constexpr):
        """A decode kernel's first instruction: launched early (:func:`pdl_args`), wait until
        the kernels before have finished and their writes are visible, then let the next
        kernel launch."""
        if PDL:
            gdc_wait()
            gdc_launch_dependents()

    @triton.jit
    def _decode_attention_kernel(
        q_ptr, k_ptr, v_ptr, valid_ptr, m_ptr, l_ptr, acc_ptr, count_ptr, out_ptr,
        sq_n, sq_h, sk_n, sk_h, sk_s, sv_n, sv_h, sv_s, s_valid, so_n, so_h,
        scale, S,
        HKV: tl.constexpr, G: tl.constexpr, BLOCK_G: tl.constexpr, D: tl.constexpr,
        BLOCK_S: tl.constexpr, CHUNK: tl.constexpr, SPLITS: tl.constexpr, PREC: tl.constexpr,
        PDL: tl.constexpr = False,
    ):  # fmt: skip
        """Keys [sp * CHUNK, (sp + 1) * CHUNK) of one (row, KV head); the last split merges.

        With one split the program writes its heads' outputs directly. Otherwise it writes its
        partial max, sum and output to the workspaces and counts itself in at ``count_ptr``;
        the program that arrives last merges the ``SPLITS`` partials, always in the order
        0, 1, ... (so the result does not depend on which program finished last), and puts the
        counter back to 0 for the next launch.
        """
        pdl_enter(PDL)
        row = tl.program_id(0).to(tl.int64)  # cache offsets can pass 2**31
        kvh = tl.program_id(1)
        sp = tl.program_id(2)
        g = tl.arange(0, BLOCK_G)
        d = tl.arange(0, D)
        head = kvh * G + g
        q = tl.load(
            q_ptr + row * sq_n + head[:, None] * sq_h + d[None, :], mask=g[:, None] < G, other=0.0
        )
        m = tl.full((BLOCK_G,), -1.0e30, tl.float32)
        lsum = tl.zeros((BLOCK_G,), tl.float32)
        acc = tl.zeros((BLOCK_G, D), tl.float32)
        for start in range(sp * CHUNK, sp * CHUNK + CHUNK, BLOCK_S):
            s = start + tl.arange(0, BLOCK_S)
            in_range = s < S
            ok = tl.load(valid_ptr + row * s_valid + s, mask=in_range, other=0) != 0
            k = tl.load(
                k_ptr + row * sk_n + kvh * sk_h + s[:, None] * sk_s + d[None, :],
                mask=in_range[:, None],
                other=0.0,
            )
            v = tl.load(
                v_ptr + row * sv_n + kvh * sv_h + s[:, None] * sv_s + d[None, :],
                mask=in_range[:, None],
                other=0.0,
            )
            scores = tl.dot(q, tl.trans(k), input_precision=PREC).to(tl.float32) * scale
            scores = tl.where(ok[None, :], scores, float("-inf"))
            m_new = tl.maximum(m, tl.max(scores, 1))
            p = tl.exp(scores - m_new[:, None])
            alpha = tl.exp(m - m_new)
            lsum = lsum * alpha + tl.sum(p, 1)
            pv = tl.dot(p.to(v.dtype), v, input_precision=PREC)
            acc = acc * alpha[:, None] + pv.to(tl.float32)
            m = m_new
        out_ptrs = out_ptr + row * so_n + head[:, None] * so_h + d[None, :]
        if SPLITS == 1:
            out = acc / lsum[:, None]
            tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=g[:, None] < G)
        else:
            first = (row * HKV + kvh) * SPLITS
            part = first + sp
            tl.store(m_ptr + part * BLOCK_G + g, m)
            tl.store(l_ptr + part * BLOCK_G + g, lsum)
            tl.store(acc_ptr + (part * BLOCK_G + g[:, None]) * D + d[None, :], acc)
            # The atomic is issued by one thread of the program: the barrier orders every
            # thread's partial stores before it, and its release (acq_rel, GPU scope) publishes
            # them to the program that later acquires the counter.
            tl.debug_barrier()
            arrived = tl.atomic_add(count_ptr + row * HKV + kvh, 1, sem="acq_rel", scope="gpu")
            if arrived == SPLITS - 1:
                # Last to arrive: every other split's stores happen-before this point. ".cg"
                # reads them from L2, never from a line this multiprocessor's L1 may still hold.
                mx = tl.full((BLOCK_G,), -1.0e30, tl.float32)
                for i in tl.static_range(SPLITS):
                    mi = tl.load(m_ptr + (first + i) * BLOCK_G + g, cache_modifier=".cg")
                    mx = tl.maximum(mx, mi)
                total = tl.zeros((BLOCK_G,), tl.float32)
                out = tl.zeros((BLOCK_G, D), tl.float32)
                for i in tl.static_range(SPLITS):
                    at = (first + i) * BLOCK_G + g
                    w = tl.exp(tl.load(m_ptr + at, cache_modifier=".cg") - mx)
                    total += tl.load(l_ptr + at, cache_modifier=".cg") * w
                    pacc = tl.load(acc_ptr + at[:, None] * D + d[None, :], cache_modifier=".cg")
                    out += pacc * w[:, None]
                out = out / total[:, None]
                tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=g[:, None] < G)
                tl.store(count_ptr + row * HKV + kvh, 0)  # ready for the next launch


#: Keys per iteration of :func:`decode_attention`, and the most programs the keys of one
#: (row, KV head) are split over (flash-decoding: 64 rows x 2 KV heads alone would give each
#: of an H100's 132 multiprocessors one program that reads 80 KB, 9.2 µs per layer).
ATTN_BLOCK_S = 64
ATTN_SPLITS = 8
ATTN_WARPS = 4
#: From this many (row, KV head) pairs the keys are not split (one program each, no partials
#: to merge): on an H200, 64 rows x 2 KV heads (the anchor) 8.5 us per layer with 8 splits
#: against 9.5 with one; 64 rows x 4 KV heads of 128-wide heads (7B) 17.1 us with one against
#: 23.3 with 8 (``benchmarks/decode_profile.py [--shape=qwen7b]``, 2026-11-28). Measured with
#: 320 keys; longer caches (past :data:`ATTN_UNSPLIT_MAX_KEYS`) keep the split.
ATTN_UNSPLIT_FROM = 256
ATTN_UNSPLIT_MAX_KEYS = 512

#: Arrival counters of the kernels whose last program merges the others' partial results
#: (:func:`decode_attention`: one per (row, KV head); split-K ``gemm.rows_linear``: one per
#: output tile), int32, by (device, count), zeroed once. Each launch leaves them at zero again
#: (the last program of each group resets its counter), so later launches need no fill kernel
#: (a per-call ``torch.zeros`` would be the launch the merge saves). They are kept for good,
#: never replaced or freed: a captured CUDA graph bakes in the address it was captured with
#: and goes on using it at every replay. Launches sharing a buffer must not overlap in time
#: (one stream, as the sampler's decode step and its graph replays are).
ARRIVAL_COUNTERS: dict[tuple[torch.device, int], torch.Tensor] = {}


def arrival_counters(device: torch.device, numel: int) -> torch.Tensor:
    """``numel`` zeroed arrival counters on ``device`` (see :data:`ARRIVAL_COUNTERS`)."""
    key = (device, numel)
    buf = ARRIVAL_COUNTERS.get(key)
    if buf is None:
        # Normally allocated by a warm-up call before any capture; allocated during a capture,
        # the fill is captured too (it then zeroes the already-zero counters on each replay).
        buf = ARRIVAL_COUNTERS[key] = torch.zeros(numel, dtype=torch.int32, device=device)
    return buf


def decode_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    valid: torch.Tensor,
    scale: float,
    *,
    splits: int | None = None,
    block_s: int | None = None,
    warps: int | None = None,
    pdl: bool = False,
) -> torch.Tensor:
    """One-token attention: q (N, Hq, D), k/v (N, Hkv, S, D), valid (N, S) bool -> (N, Hq, D).

    Query head ``h`` uses KV head ``h // (Hq // Hkv)`` (as ``repeat_kv``); keys where
    ``valid`` is False are left out. Every row needs at least one valid key. One kernel
    launch (``splits``, ``block_s``, ``warps``: the tile, for tuning; defaults
    :data:`ATTN_SPLITS`, :data:`ATTN_BLOCK_S`, :data:`ATTN_WARPS`): the keys of each (row, KV
    head) are split over up to :data:`ATTN_SPLITS` programs (none from
    :data:`ATTN_UNSPLIT_FROM` pairs on, for caches of up to :data:`ATTN_UNSPLIT_MAX_KEYS`
    keys), and the last of them to finish merges their partial softmaxes in a fixed order
    (the output is bitwise reproducible). Safe to capture in a CUDA graph; concurrent calls
    on different streams of one device are not (they would share the arrival counters).
    ``pdl``: launched early where supported (:func:`pdl_launch`).
    """
    n, hq, d = q.shape
    hkv, s = k.shape[1], k.shape[2]
    g = hq // hkv
    if d & (d - 1) or d < 16:
        raise ValueError(f"decode_attention needs a power-of-2 head size >= 16, got {d}")
    if q.stride(-1) != 1 or k.stride(-1) != 1 or v.stride(-1) != 1:
        raise ValueError("decode_attention needs q, k and v contiguous in the head dimension")
    block_g = max(16, triton.next_power_of_2(g))
    block_s = block_s or ATTN_BLOCK_S
    if splits is None:
        unsplit = n * hkv >= ATTN_UNSPLIT_FROM and s <= ATTN_UNSPLIT_MAX_KEYS
        splits = 1 if unsplit else ATTN_SPLITS
    splits = max(1, min(splits, triton.cdiv(s, block_s)))
    chunk = triton.cdiv(triton.cdiv(s, splits), block_s) * block_s
    dev = q.device
    out = torch.empty((n, hq, d), dtype=q.dtype, device=dev)
    if splits == 1:  # no partials to merge: the workspace arguments are unused
        m = lsum = acc = count = out
    else:
        # Per call, from the caching allocator (from the graph's pool while capturing): every
        # launch writes all of them before any is read.
        m = torch.empty((n, hkv, splits, block_g), dtype=torch.float32, device=dev)
        lsum = torch.empty_like(m)
        acc = torch.empty((n, hkv, splits, block_g, d), dtype=torch.float32, device=dev)
        count = arrival_counters(dev, n * hkv)
    valid = valid.view(torch.uint8)
    _decode_attention_kernel[(n, hkv, splits)](
        q, k, v, valid, m, lsum, acc, count, out,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), valid.stride(0), out.stride(0), out.stride(1),
        scale, s,
        HKV=hkv, G=g, BLOCK_G=block_g, D=d, BLOCK_S=block_s, CHUNK=chunk, SPLITS=splits,
        PREC=dot_precision(q.dtype), num_warps=warps or ATTN_WARPS, **pdl_args(dev, pdl),
    )  # fmt: skip
    return out
