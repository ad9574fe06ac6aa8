"""Triton matrix products for the static sampler's decode step (CUDA; optional).

A decode step multiplies a few rows (one per sequence, at most :data:`MAX_ROWS`) by every
weight matrix of the model: it is bound by streaming the weights, and cuBLAS spends a kernel
on each product and more on the pointwise work around it. These kernels stream each weight
matrix once, with the work around the product folded in:

- :func:`gate_up_silu`: the SiLU-gated MLP's ``silu(x W_gate^T) * (x W_up^T)``, both weight
  matrices streamed together (two matrix products and a pointwise kernel otherwise).

Tests run them on the CPU through Triton's interpreter (``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import torch

from steerl.generation.kernels import tl, triton

if triton is not None:

    @triton.jit
    def _gate_up_silu_kernel(
        x_ptr, wg_ptr, wu_ptr, out_ptr, M, N, K, sx_m, sw_n, so_m,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    ):  # fmt: skip
        """One (BLOCK_M rows, BLOCK_N columns) tile of silu(x Wg^T) * (x Wu^T)."""
        pid_n = tl.program_id(0)
        pid_m = tl.program_id(1)
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        rk = tl.arange(0, BLOCK_K)
        acc_g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        acc_u = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            kk = k0 + rk
            x = tl.load(
                x_ptr + rm[:, None] * sx_m + kk[None, :],
                mask=(rm[:, None] < M) & (kk[None, :] < K),
                other=0.0,
            )
            w_off = rn[None, :] * sw_n + kk[:, None]  # (BLOCK_K, BLOCK_N): W^T's tile
            w_mask = (rn[None, :] < N) & (kk[:, None] < K)
            wg = tl.load(wg_ptr + w_off, mask=w_mask, other=0.0)
            wu = tl.load(wu_ptr + w_off, mask=w_mask, other=0.0)
            acc_g = tl.dot(x, wg, acc_g)
            acc_u = tl.dot(x, wu, acc_u)
        out = acc_g * tl.sigmoid(acc_g) * acc_u
        tl.store(
            out_ptr + rm[:, None] * so_m + rn[None, :],
            out.to(out_ptr.dtype.element_ty),
            mask=(rm[:, None] < M) & (rn[None, :] < N),
        )


#: Tile of :func:`gate_up_silu`: rows are one tile up to 64, the weights stream in BLOCK_N x
#: BLOCK_K tiles. The fastest of ten configs on the anchor MLP (64 rows, 896 -> 4,864) on an
#: H200: 9.2 us per layer against 14.3 for two cuBLAS products and the pointwise kernel
#: (``benchmarks/decode_profile.py``, 2026-11-28).
GATE_UP_BLOCK_N = 64
GATE_UP_BLOCK_K = 128
GATE_UP_STAGES = 3
GATE_UP_WARPS = 4
#: Rows up to which the sampler uses :func:`gate_up_silu` (one row tile: the weights stream
#: once). More rows re-read the weights once per 64-row tile, where cuBLAS's products, no
#: longer bound by the weight reads, are the better choice (not measured above 64 rows).
GATE_UP_MAX_ROWS = 64


def gate_up_silu(
    x: torch.Tensor,
    w_gate: torch.Tensor,
    w_up: torch.Tensor,
    *,
    block_n: int | None = None,
    block_k: int | None = None,
    stages: int | None = None,
    warps: int | None = None,
) -> torch.Tensor:
    """``silu(x @ w_gate.T) * (x @ w_up.T)`` in one kernel: x (M, K), weights (N, K) -> (M, N).

    The SiLU-gated MLP's first half for the few rows of a decode step: both weight matrices
    stream through once, the products accumulate in float32 and the gating is applied before
    the single store (the tensor-op version is two matrix products and a pointwise kernel,
    with both products written out and read back).
    """
    m, k = x.shape
    n = w_gate.shape[0]
    if w_up.shape != w_gate.shape or w_gate.shape[1] != k:
        raise ValueError(f"gate_up_silu: x {tuple(x.shape)}, weights {tuple(w_gate.shape)} / "
                         f"{tuple(w_up.shape)} do not match")  # fmt: skip
    if x.stride(-1) != 1:
        x = x.contiguous()
    if w_gate.stride(-1) != 1 or w_up.stride(-1) != 1 or w_gate.stride(0) != w_up.stride(0):
        w_gate, w_up = w_gate.contiguous(), w_up.contiguous()
    block_m = min(64, max(16, triton.next_power_of_2(m)))
    block_n = block_n or GATE_UP_BLOCK_N
    block_k = block_k or GATE_UP_BLOCK_K
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    grid = (triton.cdiv(n, block_n), triton.cdiv(m, block_m))
    _gate_up_silu_kernel[grid](
        x, w_gate, w_up, out, m, n, k, x.stride(0), w_gate.stride(0), out.stride(0),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
        num_warps=warps or GATE_UP_WARPS, num_stages=stages or GATE_UP_STAGES,
    )  # fmt: skip
    return out
