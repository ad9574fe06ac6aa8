"""The decode step's Triton matrix products (steerl.generation.gemm) on the CPU, under
Triton's interpreter (conftest sets ``TRITON_INTERPRET=1`` when there is no GPU)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from steerl.generation import gemm as G
from steerl.generation import kernels as K

needs_triton = pytest.mark.skipif(K.triton is None, reason="Triton is not installed")


@needs_triton
@pytest.mark.parametrize(("m", "n", "k"), [(3, 70, 40), (20, 64, 160)])
def test_gate_up_silu_matches_the_mlp_in_float64(m, n, k):
    """Partial row, column and depth tiles (70 columns: 3 tiles of 32; 160 deep: 2 of 128;
    20 rows: a 32-row tile) and float32 accumulation."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(m, k, generator=g)
    wg, wu = torch.randn(2, n, k, generator=g) / k**0.5
    out = G.gate_up_silu(x, wg, wu)
    xd, gd, ud = x.double(), wg.double(), wu.double()
    ref = F.silu(xd @ gd.T) * (xd @ ud.T)
    assert out.shape == (m, n) and out.dtype == x.dtype
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
    # transposed weight views (not contiguous in K) are made contiguous first
    torch.testing.assert_close(G.gate_up_silu(x, wg.T.contiguous().T, wu), out, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="do not match"):
        G.gate_up_silu(x, wg, wu[:, :-1])


def _rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


@needs_triton
@pytest.mark.parametrize(("m", "n", "k"), [(3, 40, 200), (17, 16, 48)])
def test_rows_linear_with_norm_and_residual_matches_float64(m, n, k):
    """``res + rms_norm(x) W^T`` (partial row/column/depth tiles: 40 columns are 3 tiles of
    16, 200 deep 2 of 128), and each part alone."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(m, k, generator=g) * 3
    w = torch.randn(n, k, generator=g) / k**0.5
    nw = 1 + 0.5 * torch.randn(k, generator=g)
    res = torch.randn(m, n, generator=g)
    xd, wd = x.double(), w.double()
    normed = _rms(xd, nw.double(), 1e-5)
    cases = {
        "plain": (G.rows_linear(x, w), xd @ wd.T),
        "res": (G.rows_linear(x, w, res=res), res.double() + xd @ wd.T),
        "norm": (G.rows_linear(x, w, norm_w=nw, eps=1e-5), normed @ wd.T),
        "both": (G.rows_linear(x, w, res=res, norm_w=nw, eps=1e-5), res.double() + normed @ wd.T),
    }
    for name, (out, ref) in cases.items():
        assert out.shape == (m, n) and out.dtype == x.dtype, name
        torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5, msg=name)
    # a strided residual (a column slice) is read as its values
    wide = torch.randn(m, n + 5, generator=g)
    torch.testing.assert_close(
        G.rows_linear(x, w, res=wide[:, :n]), G.rows_linear(x, w, res=wide[:, :n].contiguous())
    )
    with pytest.raises(ValueError, match="residual"):
        G.rows_linear(x, w, res=res[:, :-1])
    with pytest.raises(ValueError, match="norm weight"):
        G.rows_linear(x, w, norm_w=nw[:-1])
    with pytest.raises(ValueError, match="do not match"):
        G.rows_linear(x, w[:, :-1])


@needs_triton
def test_gate_up_silu_with_the_norm_folded_in_matches_float64():
    g = torch.Generator().manual_seed(3)
    m, n, k = 5, 70, 160
    x = torch.randn(m, k, generator=g) * 2
    wg, wu = torch.randn(2, n, k, generator=g) / k**0.5
    nw = 1 + 0.5 * torch.randn(k, generator=g)
    out = G.gate_up_silu(x, wg, wu, norm_w=nw, eps=1e-6)
    xn = _rms(x.double(), nw.double(), 1e-6)
    ref = F.silu(xn @ wg.double().T) * (xn @ wu.double().T)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


@needs_triton
@pytest.mark.parametrize("split_k", [1, 3])
def test_prescaled_chain_and_split_k_match_float64(split_k):
    """The fused layer's hand-over: ``rows_linear(..., norm_out=w)`` returns the next norm's
    input as ``y * w`` and its partial sums of squares, which the next product turns into
    ``rms_norm(y, w) W^T`` (``ss=``); with the depth split over programs (the last merges, and
    puts its counter back to zero) and the residual, as the down projection is run."""
    g = torch.Generator().manual_seed(4)
    m, k, n, n2 = 6, 300, 40, 24  # 300 deep in 3 slices of 128 (the last partly empty)
    x = torch.randn(m, k, generator=g)
    w = torch.randn(n, k, generator=g) / k**0.5
    w2, w3 = torch.randn(2, n2, n, generator=g) / n**0.5
    nw = 1 + 0.5 * torch.randn(n, generator=g)
    res = torch.randn(m, n, generator=g) * 2
    y, yw, ss = G.rows_linear(x, w, res=res, norm_out=nw, split_k=split_k, block_k=128)
    yd = res.double() + x.double() @ w.double().T
    torch.testing.assert_close(y.double(), yd, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(yw, y * nw, atol=1e-6, rtol=1e-6)
    assert ss.shape == (m, 3)  # one partial per 16-column tile
    torch.testing.assert_close(ss.sum(1).double(), yd.pow(2).sum(1), atol=1e-4, rtol=1e-5)
    normed = _rms(yd, nw.double(), 1e-6)
    out = G.rows_linear(yw, w2, ss=ss, eps=1e-6)
    torch.testing.assert_close(out.double(), normed @ w2.double().T, atol=1e-5, rtol=1e-5)
    gated = G.gate_up_silu(yw, w2, w3, ss=ss, eps=1e-6)
    ref = F.silu(normed @ w2.double().T) * (normed @ w3.double().T)
    torch.testing.assert_close(gated.double(), ref, atol=1e-5, rtol=1e-5)
    if split_k > 1:
        counters = K.ARRIVAL_COUNTERS[(x.device, 3)]  # 3 column tiles x 1 row tile
        assert not counters.any()
        again = G.rows_linear(x, w, res=res, norm_out=nw, split_k=split_k, block_k=128)
        assert all(torch.equal(a, b) for a, b in zip(again, (y, yw, ss)))
        with pytest.raises(ValueError, match="split_k"):
            G.rows_linear(x, w, norm_w=torch.ones(k), split_k=2)
    with pytest.raises(ValueError, match="not both"):
        G.rows_linear(yw, w2, ss=ss, norm_w=nw)
    with pytest.raises(ValueError, match="norm_out"):
        G.rows_linear(x, w, norm_out=nw[:-1])


def test_float32_products_ask_for_ieee_precision():
    """A float32 model's decode products are not rounded to TF32 (Triton's default for
    float32 operands on the GPU); bf16/fp16 ones keep the default."""
    assert K.dot_precision(torch.float32) == "ieee"
    assert K.dot_precision(torch.bfloat16) == K.dot_precision(torch.float16) == "tf32"


@needs_triton
def test_many_handed_over_partials_are_summed_in_chunks():
    """A wide producer (1,100 outputs in 16-column tiles: 69 partial sums per row, more than
    the 64 a program reads at a time) hands its norm input to the next product."""
    g = torch.Generator().manual_seed(5)
    m, k, n = 3, 32, 1100
    x = torch.randn(m, k, generator=g)
    w = torch.randn(n, k, generator=g) / k**0.5
    w2 = torch.randn(8, n, generator=g) / n**0.5
    nw = 1 + 0.5 * torch.randn(n, generator=g)
    y, yw, ss = G.rows_linear(x, w, norm_out=nw)
    assert ss.shape == (m, 69) and G.block_t(ss) == 64
    out = G.rows_linear(yw, w2, ss=ss, eps=1e-6)
    ref = _rms(y.double(), nw.double(), 1e-6) @ w2.double().T
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


@needs_triton
def test_wide_products_take_the_wide_tiles_and_deep_ones_split(monkeypatch):
    """From ``G.WIDE`` on, rows_linear takes the wide tile (the split one when the depth is at
    least twice the output width: ROWS_SPLIT_K slices) and gate_up_silu the wide tile; the
    results match float64 with every tile."""
    monkeypatch.setattr(G, "WIDE", 64)  # small shapes stand for a 7B layer's
    seen = []
    launch = G._launch

    def spy(*args, **kw):
        seen.append((args[7], kw.get("split_k", 1)))
        return launch(*args, **kw)

    monkeypatch.setattr(G, "_launch", spy)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 128, generator=g)
    for n, k, tile, split in [
        (64, 64, "wide", 1),
        (64, 128, "wide_split", G.ROWS_SPLIT_K),
        (32, 128, "narrow", G.ROWS_SPLIT_K),
        (32, 32, "narrow", 1),
    ]:
        w = torch.randn(n, k, generator=g) / k**0.5
        out = G.rows_linear(x[:, :k], w)
        assert seen[-1] == (G.ROWS_TILES[tile], split), (n, k)
        torch.testing.assert_close(
            out.double(), x[:, :k].double() @ w.double().T, atol=1e-5, rtol=1e-5
        )
    for k, tile in [(64, "wide"), (32, "narrow")]:
        wg, wu = torch.randn(2, 40, k, generator=g) / k**0.5
        out = G.gate_up_silu(x[:, :k], wg, wu)
        assert seen[-1][0] == G.GATE_UP_TILES[tile]
        xd = x[:, :k].double()
        ref = F.silu(xd @ wg.double().T) * (xd @ wu.double().T)
        torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


def test_width_classes():
    assert G.width(G.WIDE - 1) == "narrow" and G.width(G.WIDE) == "wide"
    assert set(G.GATE_UP_TILES) == {"narrow", "wide"}
    assert set(G.ROWS_TILES) == {"narrow", "wide", "wide_split"}


@needs_triton
def test_early_launch_off_cuda_is_a_plain_launch():
    """``pdl=True`` asks for programmatic dependent launch; off CUDA (or on cards before
    Hopper) the kernels launch as before and give the same bits."""
    assert K.pdl_launch(torch.device("cpu")) == {}
    assert K.pdl_launch(torch.device("cpu"), want=False) == {}
    g = torch.Generator().manual_seed(5)
    x, h = torch.randn(2, 3, 48, generator=g)
    w, nw = torch.randn(48, 48, generator=g) / 7, 1 + torch.randn(48, generator=g) / 10
    plain = G.rows_linear(x, w, res=h, norm_out=nw)
    early = G.rows_linear(x, w, res=h, norm_out=nw, pdl=True)
    for a, b in zip(plain, early):
        assert torch.equal(a, b)
