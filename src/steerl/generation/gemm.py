"""Triton matrix products for the static sampler's decode step (CUDA; optional).

A decode step multiplies a few rows (one per sequence, at most :data:`GATE_UP_MAX_ROWS`: one
row tile) by every weight matrix of the model: it is bound by streaming the weights, and
cuBLAS spends a kernel on each product and more on the pointwise work around it. One kernel
here streams a weight matrix (or the gated MLP's two) once, with the work around the product
folded in:

- the RMSNorm before it: ``rms_norm(x) W^T = r * ((x * w_norm) W^T)`` with the row scale
  ``r = rsqrt(mean(x^2) + eps)`` applied to the float32 accumulator at the end (the sums of
  squares accumulate in the same pass over ``x``);
- the SiLU gating of the MLP's two products (:func:`gate_up_silu`);
- the residual add after it (:func:`rows_linear`'s ``res``).

A Llama/Qwen2 decode layer is then :func:`steerl.generation.qkv.qkv_rope`, the attention,
``rows_linear(o, W_o, res=h)``, ``gate_up_silu(h, W_gate, W_up, norm_w=...)`` and
``rows_linear(a, W_down, res=h)``. Tests run them on the CPU through Triton's interpreter
(``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import torch

from steerl.generation.kernels import tl, triton

if triton is not None:

    @triton.jit
    def _rows_kernel(
        x_ptr, w_ptr, w2_ptr, nw_ptr, res_ptr, out_ptr, M, N, K, sx_m, sw_n, sr_m, so_m, eps,
        NORM: tl.constexpr, GATED: tl.constexpr, RES: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    ):  # fmt: skip
        """One (BLOCK_M rows, BLOCK_N columns) tile of ``[res +] f(norm?(x) W^T)``, with
        ``f(a) = silu(a) * (norm?(x) W2^T)`` when GATED, else the identity."""
        pid_n = tl.program_id(0)
        pid_m = tl.program_id(1)
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        rk = tl.arange(0, BLOCK_K)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        acc2 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        ss = tl.zeros((BLOCK_M,), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
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
            w_off = rn[None, :] * sw_n + kk[:, None]  # (BLOCK_K, BLOCK_N): W^T's tile
            w_mask = (rn[None, :] < N) & (kk[:, None] < K)
            acc = tl.dot(x, tl.load(w_ptr + w_off, mask=w_mask, other=0.0), acc)
            if GATED:
                acc2 = tl.dot(x, tl.load(w2_ptr + w_off, mask=w_mask, other=0.0), acc2)
        if NORM:
            r = tl.rsqrt(ss / K + eps)
            acc = acc * r[:, None]
            acc2 = acc2 * r[:, None]
        if GATED:
            acc = acc * tl.sigmoid(acc) * acc2
        out_mask = (rm[:, None] < M) & (rn[None, :] < N)
        if RES:
            res = tl.load(res_ptr + rm[:, None] * sr_m + rn[None, :], mask=out_mask, other=0.0)
            acc += res.to(tl.float32)
        tl.store(
            out_ptr + rm[:, None] * so_m + rn[None, :],
            acc.to(out_ptr.dtype.element_ty),
            mask=out_mask,
        )


#: Tile of :func:`gate_up_silu`: rows are one tile up to 64, the weights stream in BLOCK_N x
#: BLOCK_K tiles. The fastest of ten configs on the anchor MLP (64 rows, 896 -> 4,864) on an
#: H200: 9.2 us per layer against 14.3 for two cuBLAS products and the pointwise kernel
#: (``benchmarks/decode_profile.py``, 2026-11-28).
GATE_UP_BLOCK_N = 64
GATE_UP_BLOCK_K = 128
GATE_UP_STAGES = 3
GATE_UP_WARPS = 4
#: Tile of :func:`rows_linear` (narrow output columns: the anchor's 896-wide outputs give
#: 56 programs, to keep more of the card streaming weights).
ROWS_BLOCK_N = 16
ROWS_BLOCK_K = 128
ROWS_STAGES = 4
ROWS_WARPS = 4
#: Rows up to which the sampler uses these kernels (one row tile: the weights stream once).
#: More rows re-read the weights once per 64-row tile, where cuBLAS's products, no longer
#: bound by the weight reads, are the better choice (not measured above 64 rows).
GATE_UP_MAX_ROWS = 64


def _launch(x, w, w2, norm_w, eps, res, tile, defaults) -> torch.Tensor:
    m, k = x.shape
    n = w.shape[0]
    if w.shape[1] != k or (w2 is not None and w2.shape != w.shape):
        shapes = f"{tuple(w.shape)}" + ("" if w2 is None else f" / {tuple(w2.shape)}")
        raise ValueError(f"x {tuple(x.shape)} and weights {shapes} do not match")
    if norm_w is not None and norm_w.shape != (k,):
        raise ValueError(f"norm weight {tuple(norm_w.shape)} does not match x {tuple(x.shape)}")
    if res is not None and res.shape != (m, n):
        raise ValueError(f"residual {tuple(res.shape)} is not the output's {(m, n)}")
    if x.stride(-1) != 1:
        x = x.contiguous()
    w2_ok = w2 is None or (w2.stride(-1) == 1 and w2.stride(0) == w.stride(0))
    if w.stride(-1) != 1 or not w2_ok:
        w, w2 = w.contiguous(), None if w2 is None else w2.contiguous()
    if res is not None and res.stride(-1) != 1:
        res = res.contiguous()
    block_n, block_k, stages, warps = (t or d for t, d in zip(tile, defaults, strict=True))
    block_m = min(64, max(16, triton.next_power_of_2(m)))
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    grid = (triton.cdiv(n, block_n), triton.cdiv(m, block_m))
    _rows_kernel[grid](
        x, w, w if w2 is None else w2, w if norm_w is None else norm_w,
        out if res is None else res, out, m, n, k,
        x.stride(0), w.stride(0), 0 if res is None else res.stride(0), out.stride(0), eps,
        NORM=norm_w is not None, GATED=w2 is not None, RES=res is not None,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps, num_stages=stages,
    )  # fmt: skip
    return out


def gate_up_silu(
    x: torch.Tensor,
    w_gate: torch.Tensor,
    w_up: torch.Tensor,
    *,
    norm_w: torch.Tensor | None = None,
    eps: float = 1e-6,
    block_n: int | None = None,
    block_k: int | None = None,
    stages: int | None = None,
    warps: int | None = None,
) -> torch.Tensor:
    """``silu(x' @ w_gate.T) * (x' @ w_up.T)`` in one kernel: x (M, K), weights (N, K) -> (M, N),
    with ``x' = rms_norm(x, norm_w, eps)`` when ``norm_w`` is given, else ``x``.

    The SiLU-gated MLP's first half for the few rows of a decode step: both weight matrices
    stream through once, the products accumulate in float32 and the gating is applied before
    the single store (the tensor-op version is two matrix products and a pointwise kernel,
    with both products written out and read back).
    """
    tile = (block_n, block_k, stages, warps)
    defaults = (GATE_UP_BLOCK_N, GATE_UP_BLOCK_K, GATE_UP_STAGES, GATE_UP_WARPS)
    return _launch(x, w_gate, w_up, norm_w, eps, None, tile, defaults)


def rows_linear(
    x: torch.Tensor,
    w: torch.Tensor,
    *,
    res: torch.Tensor | None = None,
    norm_w: torch.Tensor | None = None,
    eps: float = 1e-6,
    block_n: int | None = None,
    block_k: int | None = None,
    stages: int | None = None,
    warps: int | None = None,
) -> torch.Tensor:
    """``res + x' @ w.T`` in one kernel: x (M, K), w (N, K), res (M, N) or None -> (M, N), with
    ``x' = rms_norm(x, norm_w, eps)`` when ``norm_w`` is given. Accumulates in float32 and
    rounds once (the residual add included)."""
    tile = (block_n, block_k, stages, warps)
    defaults = (ROWS_BLOCK_N, ROWS_BLOCK_K, ROWS_STAGES, ROWS_WARPS)
    return _launch(x, w, None, norm_w, eps, res, tile, defaults)
