"""Exact small solvers on a K x K Gramian, shared by the weightings (float64 numpy, CPU).

NNLS (Lawson & Hanson 1974), the min-norm point of a convex hull, the projection onto a
dual cone, the projection onto the simplex. ``steerl.objectives.weightings`` re-exports them.
"""

from __future__ import annotations

import numpy as np

_TINY = 1e-30


# --------------------------------------------------------------------------- small solvers
def _project_simplex(v: np.ndarray) -> np.ndarray:
    """Euclidean projection of each row of ``v`` onto the probability simplex (Duchi 2008)."""
    v = np.atleast_2d(v)
    k = v.shape[-1]
    u = -np.sort(-v, axis=-1)
    css = np.cumsum(u, axis=-1) - 1.0
    ind = np.arange(1, k + 1)
    cond = u - css / ind > 0
    rho = k - 1 - np.argmax(cond[:, ::-1], axis=-1)
    theta = css[np.arange(v.shape[0]), rho] / (rho + 1)
    return np.maximum(v - theta[:, None], 0.0)


def _lipschitz(G: np.ndarray) -> float:
    return float(max(np.linalg.eigvalsh(G)[-1], _TINY))


def nnls(A: np.ndarray, b: np.ndarray, max_iter: int | None = None) -> np.ndarray:
    """``argmin_{x >= 0} ||A x - b||``: Lawson & Hanson's active-set algorithm (1974, ch. 23).

    Exact after finitely many steps (at most ``max_iter``, default 3 n); rank-deficient A is
    fine (``lstsq`` on the passive set). A: (m, n), b: (m,). Returns x: (n,).
    """
    n = A.shape[1]
    x = np.zeros(n)
    passive = np.zeros(n, dtype=bool)
    tol = 10 * max(A.shape) * np.finfo(float).eps * max(1.0, float(np.abs(A).max()))
    for _ in range(max_iter or 3 * n):
        w = A.T @ (b - A @ x)
        cand = ~passive & (w > tol)
        if not cand.any():
            break
        passive[np.argmax(np.where(cand, w, -np.inf))] = True
        while True:
            z = np.zeros(n)
            z[passive] = np.linalg.lstsq(A[:, passive], b, rcond=None)[0]
            if np.all(z[passive] > 0):
                x = z
                break
            neg = passive & (z <= 0)
            alpha = np.min(x[neg] / (x[neg] - z[neg]))
            x = x + alpha * (z - x)
            passive &= x > tol
            x[~passive] = 0.0
    return x


def _sqrt_psd(G: np.ndarray) -> np.ndarray:
    """Symmetric R with R^T R = G (eigenvalues clipped at 0)."""
    lam, Q = np.linalg.eigh(G)
    return (Q * np.sqrt(np.maximum(lam, 0.0))) @ Q.T


def min_norm_point(A: np.ndarray) -> np.ndarray:
    """``argmin_{w in simplex} ||A w||`` exactly: the NNLS solution x of
    min_{x >= 0} ||A x||^2 + (1^T x - 1)^2 is s w* with s = 1 / (1 + ||A w*||^2), so
    w* = x / sum(x). A: (m, K). Returns w: (K,), w >= 0, sum 1."""
    k = A.shape[1]
    if k == 1:
        return np.ones(1)
    x = nnls(np.vstack([A, np.ones((1, k))]), np.r_[np.zeros(A.shape[0]), 1.0])
    s = x.sum()
    return x / s if s > 0 else np.full(k, 1.0 / k)


def min_norm_simplex(G: np.ndarray) -> np.ndarray:
    """``argmin_{w in simplex} w^T G w`` (G = J J^T: the min-norm point of the convex hull of
    the rows of J), exactly, through ``min_norm_point`` on R = sqrt(G). G: (K, K)."""
    scale = max(float(np.max(np.diag(G))), _TINY)
    return min_norm_point(_sqrt_psd(G / scale))


def project_dual_cone(G: np.ndarray, U: np.ndarray) -> np.ndarray:
    """For every row u of U: ``argmin_{v >= u} v^T G v`` (Quinton & Rey 2024, Prop. 1).

    ``J^T v`` is then the projection of ``J^T u`` onto the dual cone {x : J x >= 0} of the
    rows of J (G = J J^T). With v = u + x and G = R^T R (symmetric square root), this is the
    non-negative least-squares problem min_{x >= 0} ||R x + R u||, solved exactly by
    ``nnls``. When G is singular v may not be unique, ``J^T v`` (what matters) is.
    G: (K, K), U: (R, K). Returns V: (R, K).
    """
    scale = max(float(np.max(np.diag(G))), _TINY)
    R = _sqrt_psd(G / scale)
    return np.stack([u + nnls(R, -R @ u) for u in U])
