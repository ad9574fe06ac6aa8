"""Triton matrix products for the static sampler's decode step (CUDA; optional).

A decode step multiplies a few rows (one per sequence, at most :data:`GATE_UP_MAX_ROWS`: one
row tile) by every weight matrix of the model: it is bound by streaming the weights, and
cuBLAS spends a kernel on each product and more on the pointwise work around it. One kernel
here streams a weight matrix (or the gated MLP's two) once, with the work around the product
folded in:

- the RMSNorm before it: ``rms_norm(x) W^T = r * ((x * w_norm) W^T)`` with the row scale
  ``r = rsqrt(mean(x^2) + eps)`` applied to the float32 accumulator at the end; either
  computed here (``norm_w``: the sums of squares accumulate in the same pass over ``x``) or
  handed over by the kernel before (``ss``: ``x`` already times ``w_norm``, with its rows'
  partial sums of squares, as :func:`rows_linear`'s ``norm_out`` prepares them);
- the SiLU gating of the MLP's two products (:func:`gate_up_silu`);
- the residual add after it (:func:`rows_linear`'s ``res``).

The fused decode layer (:mod:`steerl.generation.fused`) chains them with the hand-over.
Tests run them on the CPU through Triton's interpreter (``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import torch

from steerl.generation.kernels import dot_precision, pdl_args, tl, triton

if triton is not None:
    from steerl.generation.kernels import pdl_enter  # called in the kernel

    @triton.jit
    def _row_scale(ss_ptr, s_ss, rm, M, T, K, eps, BLOCK_T: tl.constexpr):
        """``rsqrt(mean(x^2) + eps)`` per row from the producer's T partial sums of squares,
        BLOCK_T at a time (a 14B layer hands over 320)."""
        total = rm.to(tl.float32) * 0.0
        for t0 in range(0, T, BLOCK_T):
            t = t0 + tl.arange(0, BLOCK_T)
            parts = tl.load(
                ss_ptr + rm[:, None] * s_ss + t[None, :],
                mask=(rm[:, None] < M) & (t[None, :] < T),
                other=0.0,
            )
            total += tl.sum(parts, 1)
        return tl.rsqrt(total / K + eps)

    @triton.jit
    def _rows_store(
        acc, rm, rn, M, N, res_ptr, sr_m, out_ptr, so_m, nwo_ptr, outw_ptr, ssout_ptr, tile_n,
        n_tiles, RES: tl.constexpr, NORM_OUT: tl.constexpr,
    ):  # fmt: skip
        """The residual add and the stores; with NORM_OUT also ``out * w_norm`` and the row
        sums of squares of this tile's columns (the next kernel's prescaled input)."""
        mask = (rm[:, None] < M) & (rn[None, :] < N)
        if RES:
            res = tl.load(res_ptr + rm[:, None] * sr_m + rn[None, :], mask=mask, other=0.0)
            acc += res.to(tl.float32)
        out = acc.to(out_ptr.dtype.element_ty)
        tl.store(out_ptr + rm[:, None] * so_m + rn[None, :], out, mask=mask)
        if NORM_OUT:
            of = tl.where(mask, out.to(tl.float32), 0.0)
            nw = tl.load(nwo_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)
            ow = (of * nw[None, :]).to(outw_ptr.dtype.element_ty)
            tl.store(outw_ptr + rm[:, None] * so_m + rn[None, :], ow, mask=mask)
            tl.store(ssout_ptr + rm * n_tiles + tile_n, tl.sum(of * of, 1), mask=rm < M)

    @triton.jit
    def _rows_kernel(
        x_ptr, w_ptr, w2_ptr, nw_ptr, ssin_ptr, res_ptr, out_ptr, nwo_ptr, outw_ptr, ssout_ptr,
        part_ptr, count_ptr, M, N, K, KC, sx_m, sw_n, s_ssin, T_IN, sr_m, so_m, eps,
        NORM: tl.constexpr, PRE: tl.constexpr, GATED: tl.constexpr, RES: tl.constexpr,
        NORM_OUT: tl.constexpr, SPLIT_K: tl.constexpr, BLOCK_T: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PREC: tl.constexpr,
        PDL: tl.constexpr = False,
    ):  # fmt: skip
        """One (BLOCK_M rows, BLOCK_N columns) tile, depth slice ``[pid_k KC, (pid_k + 1) KC)``,
        of ``[res +] f(norm?(x) W^T)``, ``f(a) = silu(a) * (norm?(x) W2^T)`` when GATED.

        NORM: the RMSNorm computed here (``x`` raw, ``nw`` its weight); PRE: ``x`` already
        times the norm weight and the row scale from ``ssin``'s partial sums of squares. With
        SPLIT_K > 1 each depth slice stores its float32 partial tile and the last of the slices
        to arrive sums them in slice order (deterministic) and stores the tile. PDL: launched
        early (:func:`~steerl.generation.kernels.pdl_launch`), so it waits first.
        """
        pdl_enter(PDL)
        pid_n = tl.program_id(0)
        pid_m = tl.program_id(1)
        pid_k = tl.program_id(2)
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        rk = tl.arange(0, BLOCK_K)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        acc2 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        ss = tl.zeros((BLOCK_M,), dtype=tl.float32)
        for k0 in range(pid_k * KC, pid_k * KC + KC, BLOCK_K):
            kk = k0 + rk
            x = tl.load(
                x_ptr + rm[:, None] * sx_m + kk[None, :],
                mask=(rm[:, None] < M) & (kk[None, :] < K),
                other=0.0,
            )
            if NORM:
                xf = x.to(tl.float32)
                ss += tl.sum(xf * xf, 1)
                nw = tl.load(nw_ptr + kk, mask=kk < K, other=0.0).to(tl.float32)
                x = (xf * nw[None, :]).to(w_ptr.dtype.element_ty)
            else:
                x = x.to(w_ptr.dtype.element_ty)  # tl.dot needs one operand dtype
            w_off = rn[None, :] * sw_n + kk[:, None]  # (BLOCK_K, BLOCK_N): W^T's tile
            w_mask = (rn[None, :] < N) & (kk[:, None] < K)
            acc = tl.dot(
                x, tl.load(w_ptr + w_off, mask=w_mask, other=0.0), acc, input_precision=PREC
            )
            if GATED:
                w2 = tl.load(w2_ptr + w_off, mask=w_mask, other=0.0)
                acc2 = tl.dot(x, w2, acc2, input_precision=PREC)
        n_tiles = tl.num_programs(0)
        if SPLIT_K == 1:
            if NORM:
                r = tl.rsqrt(ss / K + eps)
                acc = acc * r[:, None]
                acc2 = acc2 * r[:, None]
            if PRE:
                r = _row_scale(ssin_ptr, s_ssin, rm, M, T_IN, K, eps, BLOCK_T)
                acc = acc * r[:, None]
                acc2 = acc2 * r[:, None]
            if GATED:
                acc = acc * tl.sigmoid(acc) * acc2
            _rows_store(acc, rm, rn, M, N, res_ptr, sr_m, out_ptr, so_m, nwo_ptr, outw_ptr,
                        ssout_ptr, pid_n, n_tiles, RES, NORM_OUT)  # fmt: skip
        else:  # (neither NORM nor GATED: the wrapper refuses them with split_k)
            tile = pid_m * n_tiles + pid_n
            loc = tl.arange(0, BLOCK_M)[:, None] * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
            tl.store(part_ptr + (tile * SPLIT_K + pid_k) * BLOCK_M * BLOCK_N + loc, acc)
            # every thread's partial stores before the (one-thread) release of the counter
            tl.debug_barrier()
            arrived = tl.atomic_add(count_ptr + tile, 1, sem="acq_rel", scope="gpu")
            if arrived == SPLIT_K - 1:
                acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
                for i in tl.static_range(SPLIT_K):  # in slice order, read from L2 (".cg")
                    at = part_ptr + (tile * SPLIT_K + i) * BLOCK_M * BLOCK_N + loc
                    acc += tl.load(at, cache_modifier=".cg")
                if PRE:
                    r = _row_scale(ssin_ptr, s_ssin, rm, M, T_IN, K, eps, BLOCK_T)
                    acc = acc * r[:, None]
                _rows_store(acc, rm, rn, M, N, res_ptr, sr_m, out_ptr, so_m, nwo_ptr,
                            outw_ptr, ssout_ptr, pid_n, n_tiles, RES, NORM_OUT)  # fmt: skip
                tl.store(count_ptr + tile, 0)  # ready for the next launch


#: Widths (the model's hidden size) from which the ``wide`` tiles below serve.
WIDE = 2048
#: Tiles ``(BLOCK_N, BLOCK_K, stages, warps)`` of :func:`gate_up_silu` by the input width K
#: (rows are one tile up to 64; the weights stream in BLOCK_N x BLOCK_K tiles). The fastest
#: of ten per shape (64 rows, the norm's row scale from ``ss``; distinct weight pairs in one
#: CUDA graph; ``benchmarks/decode_profile.py [--shape=qwen7b]``, H200, 2026-11-28): narrow,
#: the anchor's 896 -> 4,864: 9.5 us per layer against 19.5 for RMSNorm + two cuBLAS products
#: + pointwise; wide, 7B's 3,584 -> 18,944: 74.6 us against 92.1 (the narrow tile: 80.1).
GATE_UP_TILES = {"narrow": (64, 128, 3, 4), "wide": (32, 64, 4, 4)}
#: Tiles of :func:`rows_linear` by the output width N, and for a wide output whether the depth
#: is split: narrow column tiles for narrow outputs (the anchor's 896 give 56 programs per
#: depth slice). Same sweeps: anchor output projection + residual + ``norm_out`` 4.7 us
#: against 8.5 for GEMM + add + RMSNorm, down projection (4,864 deep, 4 slices) 8.5 against
#: 12.7; 7B (3,584 wide) output projection 13.9 us against 16.6 (narrow tile 14.4), down
#: projection (18,944 deep, 4 slices) 43.5 against 47.4 (narrow tile 65.2).
ROWS_TILES = {"narrow": (16, 128, 4, 4), "wide": (32, 128, 4, 4), "wide_split": (64, 128, 3, 4)}
#: Depth slices of :func:`rows_linear` for deep products (K >= 2 N: the MLP's down
#: projection).
ROWS_SPLIT_K = 4


def width(n: int) -> str:
    """``narrow`` or ``wide``: which tiles serve a product ``n`` wide (see :data:`WIDE`)."""
    return "wide" if n >= WIDE else "narrow"


def rows_tile_key(n: int, split_k: int) -> str:
    """The :data:`ROWS_TILES` entry serving a :func:`rows_linear` with ``n`` outputs."""
    kind = width(n)
    return kind + ("_split" if kind == "wide" and split_k > 1 else "")


#: Rows up to which the sampler uses these kernels (one row tile: the weights stream once).
#: More rows re-read the weights once per 64-row tile, where cuBLAS's products, no longer
#: bound by the weight reads, are the better choice (not measured above 64 rows).
GATE_UP_MAX_ROWS = 64


def block_t(ss: torch.Tensor | None) -> int:
    """How many of the handed-over partial sums of squares a program reads at a time."""
    return min(64, max(16, triton.next_power_of_2(1 if ss is None else ss.shape[1])))


def _launch(x, w, w2, norm_w, eps, res, tile, defaults, *, ss=None, norm_out=None, split_k=1,
            pdl=False):  # fmt: skip
    m, k = x.shape
    n = w.shape[0]
    if w.shape[1] != k or (w2 is not None and w2.shape != w.shape):
        shapes = f"{tuple(w.shape)}" + ("" if w2 is None else f" / {tuple(w2.shape)}")
        raise ValueError(f"x {tuple(x.shape)} and weights {shapes} do not match")
    if norm_w is not None and norm_w.shape != (k,):
        raise ValueError(f"norm weight {tuple(norm_w.shape)} does not match x {tuple(x.shape)}")
    if norm_w is not None and ss is not None:
        raise ValueError("give norm_w (x raw) or ss (x prescaled), not both")
    if ss is not None and (ss.dim() != 2 or ss.shape[0] != m or ss.stride(-1) != 1):
        raise ValueError(f"ss {tuple(ss.shape)} must be (rows, partials) with rows {m}")
    if res is not None and res.shape != (m, n):
        raise ValueError(f"residual {tuple(res.shape)} is not the output's {(m, n)}")
    if norm_out is not None and norm_out.shape != (n,):
        raise ValueError(f"norm_out {tuple(norm_out.shape)} does not match the {n} outputs")
    if split_k < 1 or (split_k > 1 and (w2 is not None or norm_w is not None)):
        raise ValueError(f"split_k {split_k}: must be >= 1, and 1 with norm_w or a second weight")
    if x.stride(-1) != 1:
        x = x.contiguous()
    w2_ok = w2 is None or (w2.stride(-1) == 1 and w2.stride(0) == w.stride(0))
    if w.stride(-1) != 1 or not w2_ok:
        w, w2 = w.contiguous(), None if w2 is None else w2.contiguous()
    if res is not None and res.stride(-1) != 1:
        res = res.contiguous()
    block_n, block_k, stages, warps = (t or d for t, d in zip(tile, defaults, strict=True))
    block_m = min(64, max(16, triton.next_power_of_2(m)))
    grid = (triton.cdiv(n, block_n), triton.cdiv(m, block_m), split_k)
    kc = triton.cdiv(triton.cdiv(k, split_k), block_k) * block_k  # depth per slice
    dev = x.device
    out = torch.empty((m, n), dtype=x.dtype, device=dev)
    outw = ssout = part = count = out  # placeholders for the arguments a variant leaves unused
    if norm_out is not None:
        outw = torch.empty_like(out)
        ssout = torch.empty((m, grid[0]), dtype=torch.float32, device=dev)
    if split_k > 1:
        from steerl.generation.kernels import arrival_counters

        tiles = grid[0] * grid[1]
        part = torch.empty((tiles, split_k, block_m, block_n), dtype=torch.float32, device=dev)
        count = arrival_counters(dev, tiles)
    _rows_kernel[grid](
        x, w, w if w2 is None else w2, w if norm_w is None else norm_w,
        out if ss is None else ss, out if res is None else res, out,
        out if norm_out is None else norm_out, outw, ssout, part, count,
        m, n, k, kc, x.stride(0), w.stride(0), 0 if ss is None else ss.stride(0),
        0 if ss is None else ss.shape[1], 0 if res is None else res.stride(0), out.stride(0),
        eps,
        NORM=norm_w is not None, PRE=ss is not None, GATED=w2 is not None, RES=res is not None,
        NORM_OUT=norm_out is not None, SPLIT_K=split_k,
        BLOCK_T=block_t(ss),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, PREC=dot_precision(w.dtype),
        num_warps=warps, num_stages=stages, **pdl_args(dev, pdl),
    )  # fmt: skip
    return out if norm_out is None else (out, outw, ssout)


def gate_up_silu(
    x: torch.Tensor,
    w_gate: torch.Tensor,
    w_up: torch.Tensor,
    *,
    norm_w: torch.Tensor | None = None,
    ss: torch.Tensor | None = None,
    eps: float = 1e-6,
    block_n: int | None = None,
    block_k: int | None = None,
    stages: int | None = None,
    warps: int | None = None,
    pdl: bool = False,
) -> torch.Tensor:
    """``silu(x' @ w_gate.T) * (x' @ w_up.T)`` in one kernel: x (M, K), weights (N, K) -> (M, N),
    with ``x' = rms_norm(x, norm_w, eps)`` when ``norm_w`` is given, ``x * rsqrt(ss.sum(1) / K
    + eps)`` when ``ss`` is (``x`` then already times the norm weight: the ``norm_out`` outputs
    of :func:`rows_linear`), else ``x``.

    The SiLU-gated MLP's first half for the few rows of a decode step: both weight matrices
    stream through once, the products accumulate in float32 and the gating is applied before
    the single store (the tensor-op version is two matrix products and a pointwise kernel,
    with both products written out and read back). ``pdl``: launched early where supported
    (:func:`~steerl.generation.kernels.pdl_launch`).
    """
    tile = (block_n, block_k, stages, warps)
    defaults = GATE_UP_TILES[width(x.shape[-1])]
    return _launch(x, w_gate, w_up, norm_w, eps, None, tile, defaults, ss=ss, pdl=pdl)


def rows_linear(
    x: torch.Tensor,
    w: torch.Tensor,
    *,
    res: torch.Tensor | None = None,
    norm_w: torch.Tensor | None = None,
    ss: torch.Tensor | None = None,
    eps: float = 1e-6,
    norm_out: torch.Tensor | None = None,
    split_k: int | None = None,
    block_n: int | None = None,
    block_k: int | None = None,
    stages: int | None = None,
    warps: int | None = None,
    pdl: bool = False,
):
    """``y = res + x' @ w.T`` in one kernel: x (M, K), w (N, K), res (M, N) or None -> (M, N).

    ``x'`` is ``rms_norm(x, norm_w, eps)`` with ``norm_w``; ``x * rsqrt(ss.sum(1) / K + eps)``
    with ``ss`` (M, T), the partial sums of squares of the rows of which ``x`` is the
    norm-weighted copy; else ``x``. With ``norm_out`` (N,) returns ``(y, y * norm_out, ss_y)``:
    the next RMSNorm's input prepared for the next kernel (``ss_y`` (M, tiles) its partial
    sums of squares). ``split_k`` slices the depth over that many programs per output tile
    (more programs for a deep, narrow product; default :data:`ROWS_SPLIT_K` for K of twice N
    and more) whose last merges the slices in order. Accumulates in float32, rounds once.
    ``pdl``: launched early where supported (:func:`~steerl.generation.kernels.pdl_launch`).
    """
    if split_k is None:
        split_k = ROWS_SPLIT_K if x.shape[-1] >= 2 * w.shape[0] and norm_w is None else 1
    tile = (block_n, block_k, stages, warps)
    defaults = ROWS_TILES[rows_tile_key(w.shape[0], split_k)]
    return _launch(
        x, w, None, norm_w, eps, res, tile, defaults, ss=ss, norm_out=norm_out,
        split_k=split_k, pdl=pdl,
    )  # fmt: skip
