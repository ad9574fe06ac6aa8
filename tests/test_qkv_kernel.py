"""The decode step's fused RMSNorm + q/k/v projection + RoPE + cache write
(steerl.generation.qkv) on the CPU, under Triton's interpreter (conftest sets
``TRITON_INTERPRET=1`` when there is no GPU), against :func:`steerl.generation.layers.attn_in`."""

from __future__ import annotations

import pytest
import torch

from steerl.generation import kernels as K
from steerl.generation.layers import attn_in

needs_triton = pytest.mark.skipif(K.triton is None, reason="Triton is not installed")

HQ, HKV, H, S, EPS = 4, 2, 48, 7, 1e-5


def make(n: int, d: int, bias: bool, seed: int = 0):
    """Inputs for ``n`` rows and head size ``d``; random RoPE tables (not a real rotation, so
    a mix-up of the a/b halves of cos or sin shows)."""
    g = torch.Generator().manual_seed(seed)
    rows = (HQ + 2 * HKV) * d
    x = torch.randn(n, H, generator=g)
    norm_w = 1.0 + 0.5 * torch.randn(H, generator=g)
    w = torch.randn(rows, H, generator=g) / H**0.5
    b = torch.randn(rows, generator=g) if bias else None
    cos, sin = torch.randn(2, n, d, generator=g)
    return x, norm_w, w, b, cos, sin


def caches(n: int, d: int, seed: int = 1):
    """k and v caches as strided views: k one layer of a (layers, N, Hkv, S, D) cache, v a
    (S, N, Hkv, D)-stored cache permuted to (N, Hkv, S, D)."""
    g = torch.Generator().manual_seed(seed)
    kc = torch.randn(2, n, HKV, S, d, generator=g)[1]
    vc = torch.randn(S, n, HKV, d, generator=g).permute(1, 2, 0, 3)
    return kc, vc


def reference(x, norm_w, w, b, cos, sin, kc, vc, slot):
    n, d = cos.shape
    _, q = attn_in(
        x[:, None], None, norm_w, w, b, cos[:, None, None], sin[:, None, None],
        kc, vc, slot, EPS, HQ, HKV,
    )  # fmt: skip
    return q[:, :, 0]


@needs_triton
@pytest.mark.parametrize(
    ("n", "d", "bias", "block_h"),
    [(3, 32, True, None), (20, 64, False, None), (3, 64, True, 16), (20, 32, False, 16)],
)
def test_qkv_rope_matches_attn_in(n, d, bias, block_h):
    """One partial row tile (3 or 20 rows of 16 or 32), a partial depth tile (48 = 32 + 16),
    q, k and v heads, one or two column chunks per head (the default block_h is cut to D/2
    for D = 32), strided caches."""
    from steerl.generation.qkv import qkv_rope

    x, norm_w, w, b, cos, sin = make(n, d, bias)
    kc, vc = caches(n, d)
    kr, vr = kc.clone(), vc.clone()
    slot = torch.tensor([S // 2])
    q_ref = reference(x, norm_w, w, b, cos, sin, kr, vr, slot)
    before_k, before_v = kc.clone(), vc.clone()
    q = qkv_rope(x, norm_w, EPS, w, b, cos, sin, slot, kc, vc, HQ, HKV, block_h=block_h, block_k=32)
    assert q.shape == (n, HQ, d) and q.is_contiguous() and q.dtype == x.dtype
    torch.testing.assert_close(q, q_ref, atol=1e-5, rtol=1e-5)
    s = S // 2
    torch.testing.assert_close(kc[:, :, s], kr[:, :, s], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(vc[:, :, s], vr[:, :, s], atol=1e-5, rtol=1e-5)
    others = [i for i in range(S) if i != s]
    assert torch.equal(kc[:, :, others], before_k[:, :, others])
    assert torch.equal(vc[:, :, others], before_v[:, :, others])


@needs_triton
def test_qkv_rope_rejects_bad_shapes():
    from steerl.generation.qkv import qkv_rope

    def call(n=3, d=32, *, w_rows=None, kc_shape=None, block_h=None, slot=None):
        x, norm_w, w, b, cos, sin = make(n, d, True)
        if w_rows is not None:
            w = w[:w_rows]
        kc, vc = caches(n, d)
        if kc_shape is not None:
            kc = torch.zeros(kc_shape)
        slot = torch.tensor([1]) if slot is None else slot
        return qkv_rope(x, norm_w, EPS, w, b, cos, sin, slot, kc, vc, HQ, HKV, block_h=block_h)

    with pytest.raises(ValueError, match="rows"):
        call(n=65)
    with pytest.raises(ValueError, match="power of 2 >= 32"):
        call(d=16)
    with pytest.raises(ValueError, match="power of 2 >= 32"):
        call(d=48)
    with pytest.raises(ValueError, match="w_qkv"):
        call(w_rows=32)
    with pytest.raises(ValueError, match="k_cache"):
        call(kc_shape=(3, HKV + 1, S, 32))
    with pytest.raises(ValueError, match="block_h"):
        call(block_h=32)  # D/2 = 16
    with pytest.raises(ValueError, match="slot"):
        call(slot=torch.tensor([1, 2]))


@needs_triton
def test_qkv_rope_takes_the_prescaled_input_of_the_previous_kernel():
    """``ss=``: x already times the norm weight, its rows' partial sums of squares from the
    previous kernel (``rows_linear(..., norm_out=norm_w)``): the same q and cache."""
    from steerl.generation.qkv import qkv_rope

    n, d = 5, 32
    x, norm_w, w, b, cos, sin = make(n, d, True, seed=3)
    slot = torch.tensor([2])
    kc, vc = caches(n, d)
    q_ref = qkv_rope(x, norm_w, EPS, w, b, cos, sin, slot, kc, vc, HQ, HKV, block_k=32)
    k_ref, v_ref = kc[:, :, 2].clone(), vc[:, :, 2].clone()
    kc[:, :, 2] = 0
    vc[:, :, 2] = 0
    ss = torch.stack([x[:, :30].pow(2).sum(1), x[:, 30:].pow(2).sum(1)], 1)  # two partials
    q = qkv_rope(x * norm_w, None, EPS, w, b, cos, sin, slot, kc, vc, HQ, HKV, ss=ss, block_k=32)
    torch.testing.assert_close(q, q_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(kc[:, :, 2], k_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(vc[:, :, 2], v_ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="ss must be"):
        qkv_rope(x, None, EPS, w, b, cos, sin, slot, kc, vc, HQ, HKV, ss=ss[:2])
    with pytest.raises(ValueError, match="norm_w"):
        qkv_rope(x, None, EPS, w, b, cos, sin, slot, kc, vc, HQ, HKV)
