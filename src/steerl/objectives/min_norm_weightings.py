"""Min-norm and bargaining weightings: MGDA, CAGrad, Nash-MTL.

Each solves a small convex program over the weights: MGDA the min-norm point of the convex
hull, CAGrad a min-norm-type problem over the simplex around the mean gradient, Nash-MTL the
bargaining equation G a = 1 / a. The methods' definitions are in
``steerl.objectives.weightings``, which re-exports everything here.
"""

from __future__ import annotations

import math

import numpy as np

from steerl.objectives.gramian_solvers import (
    _TINY,
    _lipschitz,
    _project_simplex,
    _sqrt_psd,
    min_norm_point,
    min_norm_simplex,
)
from steerl.objectives.weightings import WEIGHTINGS, Weighting


@WEIGHTINGS.register("mgda", "MGDA (Désidéri 2012; Sener & Koltun 2018): min-norm point")
class MGDAWeighting(Weighting):
    """Min-norm element of the convex hull; ``normalize="l2"`` on unit-norm gradients."""

    name = "mgda"

    def __init__(self, normalize: str = "none"):
        if normalize not in ("none", "l2"):
            raise ValueError(f"mgda normalize={normalize!r}; allowed: none, l2")
        self.normalize = normalize

    def weights(self, G: np.ndarray) -> np.ndarray:
        if self.normalize == "none":
            return min_norm_simplex(G)
        norms = np.sqrt(np.maximum(np.diag(G), 0.0))
        live = norms > _TINY
        w = np.zeros(G.shape[0])
        if live.any():
            n = norms[live]
            Gn = G[np.ix_(live, live)] / np.outer(n, n)
            w[live] = min_norm_simplex(Gn) / n
        return w

    def __repr__(self) -> str:
        return f"MGDAWeighting(normalize={self.normalize!r})"


@WEIGHTINGS.register("cagrad", "CAGrad (Liu et al. 2021): best worst-case improvement near g0")
class CAGradWeighting(Weighting):
    """``d = g0 + sqrt(phi) g_w / ||g_w||`` as weights: ``1/K + sqrt(phi) w / ||g_w||``."""

    name = "cagrad"

    def __init__(self, c: float = 0.4, iters: int = 1000):
        if c < 0:
            raise ValueError(f"cagrad c={c} must be >= 0")
        self.c = float(c)
        self.iters = iters

    def weights(self, G: np.ndarray) -> np.ndarray:
        k = G.shape[0]
        scale = max(float(np.max(np.diag(G))), _TINY)
        Gs = G / scale
        a = Gs @ np.full(k, 1.0 / k)  # <g_i, g0>
        g0_sq = float(np.full(k, 1.0 / k) @ a)
        sqrt_phi = self.c * math.sqrt(max(g0_sq, 0.0))
        eps2 = 1e-12

        def f(w: np.ndarray) -> float:
            return float(a @ w + sqrt_phi * math.sqrt(max(w @ Gs @ w, 0.0) + eps2))

        def grad(w: np.ndarray) -> np.ndarray:
            return a + sqrt_phi * (Gs @ w) / math.sqrt(max(w @ Gs @ w, 0.0) + eps2)

        w = np.full(k, 1.0 / k)
        step = 1.0 / _lipschitz(Gs)
        fw = f(w)
        for _ in range(self.iters):
            g = grad(w)
            while True:  # backtracking on the projected-gradient step
                cand = _project_simplex(w - step * g)[0]
                fc = f(cand)
                if fc <= fw - 0.5 / step * float(np.sum((cand - w) ** 2)) + 1e-15 or step < 1e-12:
                    break
                step *= 0.5
            stalled = fw - fc <= 1e-14 * max(1.0, abs(fw))
            w, fw = cand, fc
            if stalled:
                break
            step *= 2.0
        w = self._refine(Gs, a, sqrt_phi, w, f)
        gw_norm = math.sqrt(max(w @ Gs @ w, 0.0))
        out = np.full(k, 1.0 / k)
        if gw_norm > 1e-9 * math.sqrt(max(g0_sq, _TINY)):
            out = out + sqrt_phi / gw_norm * w
        return out

    @staticmethod
    def _refine(Gs, a, sqrt_phi, w, f, iters: int = 50) -> np.ndarray:
        """Majorise-minimise from ``w``: with rho = ||g_w||, sqrt(phi) ||g_v|| <=
        sqrt(phi) (||g_v||^2 / (2 rho) + rho / 2), and the majoriser's minimum over the simplex
        is a min-norm problem (solved exactly): F decreases monotonically to its minimum."""
        k = len(a)
        R = _sqrt_psd(Gs)
        one = np.full(k, 1.0 / k)
        fw = f(w)
        for _ in range(iters):
            rho = math.sqrt(max(w @ Gs @ w, 0.0))
            if rho < 1e-12 or sqrt_phi == 0:
                break
            c = math.sqrt(sqrt_phi / rho)  # min a.v + c^2/2 v'Gv = 1/2 ||c R v + R one / c||^2
            cand = min_norm_point(c * R + (R @ one / c)[:, None])
            fc = f(cand)
            if fc >= fw - 1e-15 * max(1.0, abs(fw)):
                if fc < fw:
                    w = cand
                break
            w, fw = cand, fc
        return w

    def __repr__(self) -> str:
        return f"CAGradWeighting(c={self.c})"


@WEIGHTINGS.register("nash_mtl", "Nash-MTL (Navon et al. 2022): bargaining solution G a = 1/a")
class NashMTLWeighting(Weighting):
    """Damped Newton on ``1/2 a^T (G + eps I) a - sum log a``, G divided by its Frobenius
    norm, eps = 1e-9 (so a solution always exists; see the module docstring)."""

    name = "nash_mtl"
    EPS = 1e-9

    def __init__(self, iterations: int = 50):
        if iterations < 1:
            raise ValueError(f"nash_mtl iterations={iterations} must be >= 1")
        self.iterations = iterations

    def weights(self, G: np.ndarray) -> np.ndarray:
        k = G.shape[0]
        nf = float(np.linalg.norm(G))
        if nf <= _TINY:
            return np.zeros(k)
        Gn = G / nf
        live = np.diag(Gn) > 1e-12 * np.max(np.diag(Gn))
        a = np.zeros(k)
        Gl = Gn[np.ix_(live, live)] + self.EPS * np.eye(int(live.sum()))
        x = 1.0 / np.sqrt(np.diag(Gl) * live.sum())

        def f(z: np.ndarray) -> float:
            return float(0.5 * z @ Gl @ z - np.sum(np.log(z)))

        fx = f(x)
        for _ in range(self.iterations):
            g = Gl @ x - 1.0 / x
            H = Gl + np.diag(1.0 / x**2)
            dx = -np.linalg.solve(H, g)
            dec = float(-g @ dx)  # squared Newton decrement
            if dec < 1e-24:
                break
            neg = dx < 0
            t = min(1.0, 0.99 * float(np.min(-x[neg] / dx[neg]))) if neg.any() else 1.0
            while t > 1e-14:
                cand = x + t * dx
                fc = f(cand)
                if fc <= fx - 0.25 * t * dec:
                    break
                t *= 0.5
            else:
                break
            x, fx = cand, fc
        a[live] = x
        return a

    def __repr__(self) -> str:
        return f"NashMTLWeighting(iterations={self.iterations})"
