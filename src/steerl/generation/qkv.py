"""RMSNorm, q/k/v projection, RoPE and KV-cache write of a decode step in one Triton kernel.

:func:`qkv_rope` replaces the input RMSNorm, the fused q/k/v projection (with its bias, Qwen2),
the rotary embedding of q and k, and the writes of k and v into the static KV cache: the
tensor-op version (:func:`steerl.generation.layers.attn_in`) is a normalisation kernel, a
matrix product, three pointwise RoPE kernels and two cache copies, with the normalised input
and the projection written out and read back. A decode step has few rows (at most
:data:`QKV_MAX_ROWS`, one row tile), so the work is bound by streaming the weight matrix once;
everything else is folded around that stream:

- RMSNorm: ``rms_norm(x) W^T = r * ((x * norm_w) W^T)`` with ``r = rsqrt(mean(x^2) + eps)``
  per row. The depth loop multiplies each x tile by its slice of ``norm_w`` before the
  product and sums the squares on the way; ``r`` scales the float32 accumulators at the end,
  before the bias. (Every program recomputes the row sums: x is tiny and stays in cache.)
- RoPE: ``t * cos + swap_halves(t) * sin_signed`` pairs column ``j`` of a head with column
  ``j + D/2``. Each program owns one such pair of half-tiles of one head, columns
  ``[c, c + BLOCK_H)`` ("a") and ``D/2 + [c, c + BLOCK_H)`` ("b"), in two accumulators, so
  the rotation is pointwise on registers: ``a' = a cos_a + b sin_a``, ``b' = b cos_b + a sin_b``.
- Outputs: q heads go to the returned q, k heads (rotated) and v heads (not) straight into
  the cache at the position read from the device-side ``slot`` (no host sync: the call is
  captured in a CUDA graph).

Tests run it on the CPU through Triton's interpreter (``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import torch

from steerl.generation.gemm import GATE_UP_MAX_ROWS, block_t
from steerl.generation.kernels import dot_precision, pdl_args, tl, triton

if triton is not None:
    from steerl.generation.gemm import _row_scale  # called in the kernel
    from steerl.generation.kernels import pdl_enter

    @triton.jit
    def _qkv_rope_kernel(
        x_ptr, nw_ptr, ss_ptr, w_ptr, b_ptr, cos_ptr, sin_ptr, slot_ptr, q_ptr, kc_ptr, vc_ptr,
        M, K, eps, sx_m, s_ss, T_IN, sw_n, scos_m, ssin_m, sq_m, sq_h,
        skc_m, skc_h, skc_s, svc_m, svc_h, svc_s,
        NQ: tl.constexpr, NKV: tl.constexpr, D: tl.constexpr, HAS_BIAS: tl.constexpr,
        PRE: tl.constexpr, BLOCK_T: tl.constexpr, PREC: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
        PDL: tl.constexpr = False,
    ):  # fmt: skip
        """Columns [c, c + BLOCK_H) and D/2 + [c, c + BLOCK_H) of one head, all rows: RMSNorm,
        projection, bias, RoPE (q and k heads) and the store (q, or the cache at ``slot``).
        PDL: launched early (:func:`~steerl.generation.kernels.pdl_launch`), so it waits first."""
        pdl_enter(PDL)
        HALF: tl.constexpr = D // 2
        CHUNKS: tl.constexpr = HALF // BLOCK_H
        pid = tl.program_id(0)
        head = pid // CHUNKS
        c = (pid % CHUNKS) * BLOCK_H
        rm = tl.arange(0, BLOCK_M)
        rh = c + tl.arange(0, BLOCK_H)  # the "a" columns within the head; "b" is rh + HALF
        rk = tl.arange(0, BLOCK_K)
        cols_a = head * D + rh
        cols_b = cols_a + HALF
        row_ok = rm < M
        acc_a = tl.zeros((BLOCK_M, BLOCK_H), dtype=tl.float32)
        acc_b = tl.zeros((BLOCK_M, BLOCK_H), dtype=tl.float32)
        ss = tl.zeros((BLOCK_M,), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            kk = k0 + rk
            k_ok = kk < K
            x = tl.load(
                x_ptr + rm[:, None] * sx_m + kk[None, :],
                mask=row_ok[:, None] & k_ok[None, :],
                other=0.0,
            )
            if PRE:  # x already times the norm weight (rows_linear's norm_out)
                xw = x.to(w_ptr.dtype.element_ty)
            else:
                xf = x.to(tl.float32)
                ss += tl.sum(xf * xf, axis=1)
                nw = tl.load(nw_ptr + kk, mask=k_ok, other=0.0).to(tl.float32)
                xw = (xf * nw[None, :]).to(w_ptr.dtype.element_ty)
            w_mask = k_ok[:, None]  # every column exists: the grid covers exactly the heads
            wa = tl.load(w_ptr + cols_a[None, :] * sw_n + kk[:, None], mask=w_mask, other=0.0)
            wb = tl.load(w_ptr + cols_b[None, :] * sw_n + kk[:, None], mask=w_mask, other=0.0)
            acc_a = tl.dot(xw, wa, acc_a, input_precision=PREC)  # (BLOCK_K, BLOCK_H) tiles of W^T
            acc_b = tl.dot(xw, wb, acc_b, input_precision=PREC)
        if PRE:
            r = _row_scale(ss_ptr, s_ss, rm, M, T_IN, K, eps, BLOCK_T)
        else:
            r = tl.rsqrt(ss / K + eps)
        acc_a = acc_a * r[:, None]
        acc_b = acc_b * r[:, None]
        if HAS_BIAS:
            acc_a += tl.load(b_ptr + cols_a).to(tl.float32)[None, :]
            acc_b += tl.load(b_ptr + cols_b).to(tl.float32)[None, :]
        mask = row_ok[:, None]
        rm64 = rm.to(tl.int64)  # cache offsets can pass 2**31 (views of a whole-model cache)
        if head < NQ + NKV:
            cs_a = rm[:, None] * scos_m + rh[None, :]
            sn_a = rm[:, None] * ssin_m + rh[None, :]
            cos_a = tl.load(cos_ptr + cs_a, mask=mask, other=0.0).to(tl.float32)
            cos_b = tl.load(cos_ptr + cs_a + HALF, mask=mask, other=0.0).to(tl.float32)
            sin_a = tl.load(sin_ptr + sn_a, mask=mask, other=0.0).to(tl.float32)
            sin_b = tl.load(sin_ptr + sn_a + HALF, mask=mask, other=0.0).to(tl.float32)
            out_a = acc_a * cos_a + acc_b * sin_a
            out_b = acc_b * cos_b + acc_a * sin_b
            if head < NQ:
                q_off = rm[:, None] * sq_m + head * sq_h + rh[None, :]
                tl.store(q_ptr + q_off, out_a.to(q_ptr.dtype.element_ty), mask=mask)
                tl.store(q_ptr + q_off + HALF, out_b.to(q_ptr.dtype.element_ty), mask=mask)
            else:
                slot = tl.load(slot_ptr).to(tl.int64)
                k_off = rm64[:, None] * skc_m + (head - NQ) * skc_h + slot * skc_s + rh[None, :]
                tl.store(kc_ptr + k_off, out_a.to(kc_ptr.dtype.element_ty), mask=mask)
                tl.store(kc_ptr + k_off + HALF, out_b.to(kc_ptr.dtype.element_ty), mask=mask)
        else:
            slot = tl.load(slot_ptr).to(tl.int64)
            v_off = rm64[:, None] * svc_m + (head - NQ - NKV) * svc_h + slot * svc_s + rh[None, :]
            tl.store(vc_ptr + v_off, acc_a.to(vc_ptr.dtype.element_ty), mask=mask)
            tl.store(vc_ptr + v_off + HALF, acc_b.to(vc_ptr.dtype.element_ty), mask=mask)


#: Tile of :func:`qkv_rope`: each program owns two half-tiles of BLOCK_H columns of one head
#: ((n_heads + 2 n_kv) * D / (2 BLOCK_H) programs; BLOCK_H is cut to D/2 for smaller heads)
#: and streams the weights in BLOCK_K-deep slices. On an H200 under CUDA-graph replay, the
#: anchor layer (64 rows, 896 -> 14 + 2 * 2 heads of 64) with the norm's input prepared by the
#: kernel before (``ss``): 6.2 us at (16, 128, 4 stages, 4 warps) against 21.2 for the tensor
#: ops; (32, 32) 10.4, (32, 64) 9.1 (``benchmarks/decode_profile.py``, 2026-11-28). With the
#: norm computed in the loop (no ``ss``) (32, 32) was the fastest at 11.1 us. On a
#: 3,584-wide layer (28 + 2 * 4 heads of 128; ``--shape=qwen7b``) the same tile was the
#: fastest: 18.4 us against 33.3 for the tensor ops (the norm in the loop: 35.0 against
#: cuBLAS's 28.1 alone).
QKV_BLOCK_H = 16
QKV_BLOCK_K = 128
QKV_STAGES = 4
QKV_WARPS = 4
#: Most rows :func:`qkv_rope` takes: one row tile, so the weights stream once (the same tile
#: as the layer's other products).
QKV_MAX_ROWS = GATE_UP_MAX_ROWS


def _pow2(v: int) -> bool:
    return v > 0 and v & (v - 1) == 0


def qkv_rope(
    x: torch.Tensor,
    norm_w: torch.Tensor | None,
    eps: float,
    w_qkv: torch.Tensor,
    b_qkv: torch.Tensor | None,
    cos: torch.Tensor,
    sin_signed: torch.Tensor,
    slot: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    n_heads: int,
    n_kv: int,
    *,
    ss: torch.Tensor | None = None,
    block_h: int | None = None,
    block_k: int | None = None,
    stages: int | None = None,
    warps: int | None = None,
    pdl: bool = False,
) -> torch.Tensor:
    """RMSNorm, q/k/v projection, RoPE and cache writes of one decode step in one kernel.

    ``x`` (N, H) is the residual stream, ``norm_w`` (H,) and ``eps`` the input RMSNorm,
    ``w_qkv`` ((n_heads + 2 n_kv) D, H) the q, k and v projections stacked by rows (``b_qkv``
    their biases or ``None``), ``cos`` / ``sin_signed`` (N, D) each row's RoPE tables
    (``sin_signed = cat(-sin1, sin2)``, see :func:`steerl.generation.layers.rope`), ``slot``
    a one-element integer tensor on the device (the cache position, read in the kernel) and
    ``k_cache`` / ``v_cache`` (N, n_kv, S, D) the layer's cache (any strides, contiguous in D).

    Writes k (rotated) and v into ``k_cache[:, :, slot]`` / ``v_cache[:, :, slot]`` and
    returns q (N, n_heads, D), rotated: :func:`steerl.generation.layers.attn_in` without the
    residual add. N is at most :data:`QKV_MAX_ROWS` and D a power of 2 >= 32.

    With ``ss`` (N, T), ``x`` is already times the norm weight (``norm_w`` unused) and ``ss``
    holds the partial sums of squares of the rows it was made from (the ``norm_out`` outputs
    of :func:`steerl.generation.gemm.rows_linear`): the norm's row scale comes from them.
    ``pdl``: launched early where supported (:func:`steerl.generation.kernels.pdl_launch`).
    """
    block_k = block_k or QKV_BLOCK_K
    heads = n_heads + 2 * n_kv

    def bad(why: str) -> ValueError:
        return ValueError(
            f"qkv_rope: {why} (x {tuple(x.shape)}, norm_w "
            f"{None if norm_w is None else tuple(norm_w.shape)}, w_qkv "
            f"{tuple(w_qkv.shape)}, b_qkv {None if b_qkv is None else tuple(b_qkv.shape)}, "
            f"cos {tuple(cos.shape)}, sin {tuple(sin_signed.shape)}, k_cache "
            f"{tuple(k_cache.shape)}, v_cache {tuple(v_cache.shape)}, heads {n_heads}/{n_kv})"
        )

    if x.dim() != 2:
        raise bad("x must be (N, H)")
    m, k = x.shape
    if not 1 <= m <= QKV_MAX_ROWS:
        raise bad(f"needs 1 to {QKV_MAX_ROWS} rows (one row tile), got {m}")
    if n_heads < 1 or n_kv < 1:
        raise bad("needs at least one query and one KV head")
    d = cos.shape[-1]
    if cos.dim() != 2 or not _pow2(d) or d < 32:
        raise bad(f"needs (N, D) RoPE tables with D a power of 2 >= 32, got D = {d}")
    block_h = block_h or min(QKV_BLOCK_H, d // 2)
    if cos.shape != (m, d) or sin_signed.shape != (m, d):
        raise bad("cos and sin_signed must be (N, D)")
    if ss is None and (norm_w is None or norm_w.shape != (k,)):
        raise bad("norm_w must be (H,)")
    if ss is not None and (ss.dim() != 2 or ss.shape[0] != m or ss.stride(-1) != 1):
        raise bad(f"ss must be (N, partials), got {tuple(ss.shape)}")
    if w_qkv.shape != (heads * d, k):
        raise bad("w_qkv must be ((n_heads + 2 n_kv) D, H)")
    if b_qkv is not None and b_qkv.shape != (heads * d,):
        raise bad("b_qkv must be ((n_heads + 2 n_kv) D,)")
    if k_cache.dim() != 4 or k_cache.shape[:2] != (m, n_kv) or k_cache.shape[3] != d:
        raise bad("k_cache must be (N, n_kv, S, D)")
    if v_cache.shape != k_cache.shape:
        raise bad("v_cache must have k_cache's shape")
    if k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1:
        raise bad("the caches must be contiguous in D")
    if slot.numel() != 1:
        raise bad(f"slot must hold one position, it has {slot.numel()}")
    if not _pow2(block_h) or block_h < 16 or (d // 2) % block_h:
        raise bad(f"block_h must be a power of 2 >= 16 dividing D/2, got {block_h}")
    if not _pow2(block_k) or block_k < 16:
        raise bad(f"block_k must be a power of 2 >= 16, got {block_k}")
    if x.stride(-1) != 1:
        x = x.contiguous()
    if w_qkv.stride(-1) != 1:
        w_qkv = w_qkv.contiguous()
    if cos.stride(-1) != 1:
        cos = cos.contiguous()
    if sin_signed.stride(-1) != 1:
        sin_signed = sin_signed.contiguous()
    norm_w = x if ss is not None else norm_w.contiguous()  # (unused with ss)
    if b_qkv is not None:
        b_qkv = b_qkv.contiguous()
    q = torch.empty((m, n_heads, d), dtype=k_cache.dtype, device=x.device)  # attention's dtype
    block_m = max(16, triton.next_power_of_2(m))
    grid = (heads * (d // 2 // block_h),)
    _qkv_rope_kernel[grid](
        x, norm_w, x if ss is None else ss, w_qkv, w_qkv if b_qkv is None else b_qkv, cos,
        sin_signed, slot, q, k_cache, v_cache, m, k, float(eps), x.stride(0),
        0 if ss is None else ss.stride(0), 0 if ss is None else ss.shape[1], w_qkv.stride(0),
        cos.stride(0),
        sin_signed.stride(0), q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        NQ=n_heads, NKV=n_kv, D=d, HAS_BIAS=b_qkv is not None, PRE=ss is not None,
        PREC=dot_precision(w_qkv.dtype),
        BLOCK_T=block_t(ss),
        BLOCK_M=block_m, BLOCK_H=block_h, BLOCK_K=block_k,
        num_warps=warps or QKV_WARPS, num_stages=stages or QKV_STAGES, **pdl_args(x.device, pdl),
    )  # fmt: skip
    return q
