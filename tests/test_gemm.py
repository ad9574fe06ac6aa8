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
