"""Projection-based weightings: PCGrad, UPGrad, IMTL-G.

Each projects the gradients onto or away from one another (PCGrad: away from the ones they
conflict with; UPGrad: onto the dual cone of all of them; IMTL-G: equal projections on every
unit gradient). The methods' definitions are in ``steerl.objectives.weightings``, which
re-exports everything here.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from steerl.objectives.gramian_solvers import _TINY, project_dual_cone
from steerl.objectives.weightings import WEIGHTINGS, Weighting


@WEIGHTINGS.register("pcgrad", "PCGrad (Yu et al. 2020): project away conflicting components")
class PCGradWeighting(Weighting):
    """PCGrad on the Gramian; ``order`` = "expected" (all orders averaged) or "random"."""

    name = "pcgrad"
    MAX_EXPECTED = 8

    def __init__(self, order: str = "expected", seed: int = 0):
        if order not in ("expected", "random"):
            raise ValueError(f"pcgrad order={order!r}; allowed: expected, random")
        self.order = order
        self.seed = seed
        self.rng = np.random.default_rng(seed)

    def weights(self, G: np.ndarray) -> np.ndarray:
        k = G.shape[0]
        if self.order == "expected" and k > self.MAX_EXPECTED:
            raise ValueError(
                f"pcgrad order=expected averages over all (K-1)! orders; K={k} is more than "
                f"{self.MAX_EXPECTED}: use objectives.pcgrad.order=random"
            )
        diag = np.diag(G)
        total = np.zeros(k)
        for i in range(k):
            others = [j for j in range(k) if j != i]
            if self.order == "expected":
                perms = np.array(list(itertools.permutations(others)), dtype=int)
            else:
                perms = self.rng.permutation(others)[None, :].astype(int)
            if perms.size == 0:  # K == 1
                total[i] += 1.0
                continue
            C = np.zeros((len(perms), k))
            C[:, i] = 1.0
            rows = np.arange(len(perms))
            for pos in range(perms.shape[1]):
                j = perms[:, pos]
                inner = np.einsum("pk,pk->p", G[j], C)
                hit = (inner < 0) & (diag[j] > _TINY)
                C[rows[hit], j[hit]] -= inner[hit] / diag[j[hit]]
            total += C.mean(0)
        return total

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "rng" in state:
            self.rng.bit_generator.state = state["rng"]

    def __repr__(self) -> str:
        seed = f", seed={self.seed}" if self.order == "random" else ""
        return f"PCGradWeighting(order={self.order!r}{seed})"


@WEIGHTINGS.register("upgrad", "UPGrad (Quinton & Rey 2024): mean of dual-cone projections")
class UPGradWeighting(Weighting):
    """Sum over i of the dual-cone projection weights of ``pref_i e_i`` (pref: 1/K each)."""

    name = "upgrad"

    def __init__(self, pref: list[float] | None = None):
        self.pref = None if pref is None else [float(x) for x in pref]

    def weights(self, G: np.ndarray) -> np.ndarray:
        k = G.shape[0]
        pref = np.full(k, 1.0 / k) if self.pref is None else np.asarray(self.pref, float)
        if pref.shape != (k,):
            raise ValueError(f"upgrad pref has {pref.size} entries for {k} objectives")
        return project_dual_cone(G, np.diag(pref)).sum(0)

    def __repr__(self) -> str:
        return f"UPGradWeighting(pref={self.pref})"


@WEIGHTINGS.register("imtl_g", "IMTL-G (Liu et al. 2021): equal projections on every unit g_i")
class IMTLGWeighting(Weighting):
    """``pinv(G) sqrt(diag G)`` divided by the absolute value of its sum (0 when it vanishes).

    ``sign_fix=False`` divides by the sum itself, as the paper and torchjd do.
    """

    name = "imtl_g"

    def __init__(self, sign_fix: bool = True):
        self.sign_fix = sign_fix

    def weights(self, G: np.ndarray) -> np.ndarray:
        d = np.sqrt(np.maximum(np.diag(G), 0.0))
        v = np.linalg.pinv(G, rcond=1e-10, hermitian=True) @ d
        s = float(v.sum())
        if abs(s) < 1e-12:
            return np.zeros_like(v)
        return v / (abs(s) if self.sign_fix else s)

    def __repr__(self) -> str:
        return "IMTLGWeighting()" if self.sign_fix else "IMTLGWeighting(sign_fix=False)"
