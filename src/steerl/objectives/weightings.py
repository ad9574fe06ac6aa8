r"""Weightings: the K x K Gramian of K per-objective gradients -> K weights.

This is the innermost layer of the gradient-level balancers (the layering of torchjd):

1. something computes the Jacobian ``J`` (K, n) of K loss terms: one row per term
   (``steerl.objectives.aggregators``);
2. a *weighting* sees only the Gramian ``G = J J^T`` (K, K) and returns weights ``w`` (K,);
3. the aggregated update is ``d = w^T J`` (n,), written to ``.grad``.

Every method below is expressed this way (weights on the *raw* rows of ``J``), so a weighting
never touches the n-dimensional gradients and costs O(K^3) at most. The solvers work in
float64 numpy on the CPU (one K x K copy per optimizer step).

=================  ============================================================================
``pcgrad``         Yu et al. 2020, "Gradient Surgery for Multi-Task Learning" (arXiv:2001.06782):
                   each g_i is projected onto the normal plane of every g_j it conflicts with
                   (<g_i, g_j> < 0), in a random order of the j; the results are summed.
                   ``order="expected"`` averages over *all* orders of the j (the expectation of
                   the paper's random update): deterministic and permutation-invariant (K <= 8).
                   ``order="random"``: one seeded shuffle per call, as in the paper.
``mgda``           Désidéri 2012; Sener & Koltun 2018 (arXiv:1810.04650): the min-norm point of
                   the convex hull of the gradients, w = argmin_{w in simplex} w^T G w.
                   ``normalize="l2"`` runs it on g_i / ||g_i|| (Sener & Koltun's gradient
                   normalisation), which makes the direction invariant to rescaling a loss.
``upgrad``         Quinton & Rey 2024, "Jacobian Descent for Multi-Objective Optimization"
                   (arXiv:2406.16232): the mean of the projections of every g_i onto the dual
                   cone {x : J x >= 0}. Projection of J^T u: J^T v with
                   v = argmin_{v >= u} v^T G v (a box-constrained QP on K x K, solved exactly
                   as a non-negative least-squares problem, Lawson & Hanson 1974).
``cagrad``         Liu et al. 2021, "Conflict-Averse Gradient Descent" (arXiv:2110.14048):
                   d = g0 + sqrt(phi) g_w / ||g_w||, g0 = mean g_i, phi = c^2 ||g0||^2,
                   w = argmin_{w in simplex} g_w^T g0 + sqrt(phi) ||g_w||. (No final division by
                   1 + c^2: that is an option of the authors' code, not of the paper's
                   algorithm, and torchjd omits it too.)
``nash_mtl``       Navon et al. 2022, "Multi-Task Learning as a Bargaining Game"
                   (arXiv:2202.01017): alpha > 0 with G alpha = 1 / alpha (elementwise).
                   We solve it as the minimiser of the strictly convex
                   f(alpha) = 1/2 alpha^T G alpha - sum_i log alpha_i (whose stationarity
                   condition is exactly that equation) by damped Newton steps, instead of the
                   paper's sequence of convex (CCP) programs in cvxpy. As in the authors' code, G
                   is first divided by its Frobenius norm (so ||d|| = sqrt(K ||G||_F)); their
                   ``max_norm`` clipping and ``update_weights_every`` are left to
                   ``stability.clip``. When 0 is a positive combination of some of the
                   gradients (Pareto-stationary there) the equation has no solution and alpha
                   diverges along the null space of J while d = J^T alpha converges; a
                   Tikhonov term 1e-9 ||alpha||^2 keeps alpha finite and d within ~1e-4 of
                   that limit. At most ``iterations`` Newton steps (default 50; well-posed
                   problems converge in < 10).
``imtl_g``         Liu et al. 2021, "Towards Impartial Multi-task Learning" (ICLR): the update
                   has equal projections on every unit vector g_i / ||g_i||: weights
                   v = pinv(G) sqrt(diag G) (torchjd's generalisation to linearly dependent
                   rows), divided by |sum v|. The paper and torchjd divide by sum v, whose
                   sign is not fixed: when it is negative (it happens even when no two
                   gradients conflict) their update increases *every* loss. Dividing by
                   |sum v| keeps G (J^T w) = sqrt(diag G) / |sum v| > 0 (full rank): it never
                   conflicts, and its direction is invariant to rescaling a loss.
                   ``IMTLGWeighting(sign_fix=False)`` is the paper's version.
=================  ============================================================================

Backends (``make_weighting(name, backend)``): ``builtin`` uses the solvers here; ``torchjd``
uses torchjd's own weighting (``pip install steerl[mo]``) for ``mgda``, ``upgrad``, ``imtl_g``
(the paper's sign convention) and ``cagrad`` (which there also needs cvxpy); ``auto`` (the
default) takes torchjd's ``upgrad`` and ``cagrad`` when they import with their solvers, and
the built-in otherwise. ``auto`` keeps the built-in ``mgda`` because torchjd's Frank-Wolfe loop
stops at a tolerance (its min-norm objective can be a few % above the optimum for K >= 5,
where ours is exact to ~1e-12), the built-in ``imtl_g`` for its sign fix, the built-in
``pcgrad`` because torchjd's draws its order from torch's global RNG (not resumable), and the
built-in ``nash_mtl`` (torchjd's needs cvxpy + ecos).
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import torch

from steerl.registry import Registry

WEIGHTINGS: Registry = Registry("weighting")

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


# --------------------------------------------------------------------------- weightings
class Weighting:
    """Gramian (K, K) -> weights (K,). Subclasses implement ``weights(G: np.ndarray)``."""

    name = "weighting"

    def __call__(self, gramian: torch.Tensor) -> torch.Tensor:
        G = gramian.detach().to("cpu", torch.float64).numpy()
        G = 0.5 * (G + G.T)
        if G.shape[0] == 0:
            return gramian.new_zeros(0)
        w = self.weights(G)
        return torch.as_tensor(w, dtype=gramian.dtype, device=gramian.device)

    def weights(self, G: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


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


# --------------------------------------------------------------------------- torchjd adapters
class TorchJDWeighting(Weighting):
    """A torchjd ``Weighting[PSDMatrix]`` behind steerl's interface (``backend="torchjd"``)."""

    def __init__(self, name: str, inner: Any):
        self.name = name
        self.inner = inner

    def __call__(self, gramian: torch.Tensor) -> torch.Tensor:
        G = gramian.detach().to(torch.float64)
        G = 0.5 * (G + G.T)
        w = self.inner(G)
        return w.to(dtype=gramian.dtype, device=gramian.device)

    def __repr__(self) -> str:
        return f"TorchJDWeighting(torchjd.aggregation.{type(self.inner).__name__})"


class _NormalizedTorchJD(Weighting):
    """MGDA with ``normalize="l2"`` on top of torchjd's MGDA weighting."""

    def __init__(self, inner: Any):
        self.name = "mgda"
        self.inner = inner

    def weights(self, G: np.ndarray) -> np.ndarray:
        norms = np.sqrt(np.maximum(np.diag(G), 0.0))
        live = norms > _TINY
        w = np.zeros(G.shape[0])
        if live.any():
            n = norms[live]
            Gn = torch.as_tensor(G[np.ix_(live, live)] / np.outer(n, n))
            w[live] = self.inner(Gn).numpy() / n
        return w

    def __repr__(self) -> str:
        return f"TorchJDWeighting(torchjd.aggregation.{type(self.inner).__name__}, normalize='l2')"


#: Methods that ``backend="torchjd"`` takes from torchjd.
TORCHJD_METHODS = ("mgda", "upgrad", "imtl_g", "cagrad")
#: Methods for which ``backend="auto"`` prefers torchjd's implementation when it imports.
AUTO_TORCHJD = ("upgrad", "cagrad")


def torchjd_weighting(name: str, **kw: Any) -> Weighting:
    """torchjd's weighting for ``name``; raises ImportError when torchjd or its solver is
    missing (``pip install steerl[mo]``), ValueError for a method torchjd is not used for."""
    import torchjd.aggregation as tja  # noqa: PLC0415 - optional extra, imported lazily

    if name == "mgda":
        inner = tja.MGDAWeighting(epsilon=1e-6, max_iters=1000)
        if kw.get("normalize", "none") == "l2":
            return _NormalizedTorchJD(inner)
        return TorchJDWeighting(name, inner)
    if name == "upgrad":
        pref = kw.get("pref")
        return TorchJDWeighting(
            name, tja.UPGradWeighting(None if pref is None else torch.tensor(pref))
        )
    if name == "imtl_g":
        return TorchJDWeighting(name, tja.IMTLGWeighting())
    if name == "cagrad":
        return TorchJDWeighting(name, tja.CAGradWeighting(c=kw.get("c", 0.4)))
    raise ValueError(
        f"steerl does not use torchjd for {name!r}; torchjd methods: {TORCHJD_METHODS}"
    )


def make_weighting(name: str, backend: str = "auto", **kw: Any) -> Weighting:
    """A weighting by name. ``backend``: ``builtin``, ``torchjd`` (error if missing) or
    ``auto`` (torchjd for ``AUTO_TORCHJD`` when importable, else built-in)."""
    if backend not in ("auto", "builtin", "torchjd"):
        raise ValueError(f"backend={backend!r}; allowed: auto, builtin, torchjd")
    use_torchjd = name in (TORCHJD_METHODS if backend == "torchjd" else AUTO_TORCHJD)
    if backend != "builtin" and use_torchjd:
        try:
            w = torchjd_weighting(name, **kw)
            probe = len(kw.get("pref") or (0, 0))
            w(torch.eye(probe, dtype=torch.float64))  # solvers import lazily: fail here
            return w
        except ImportError as e:
            if backend == "torchjd":
                raise ImportError(
                    f"objectives.backend=torchjd for {name}: {e}. Install the extra with "
                    "`pip install steerl[mo]`, or use objectives.backend=builtin"
                ) from None
    elif backend == "torchjd":
        raise ValueError(
            f"objectives.backend=torchjd: steerl uses its own {name} (torchjd methods: "
            f"{', '.join(TORCHJD_METHODS)}); use backend=auto or builtin"
        )
    cls = WEIGHTINGS.get(name)
    return cls(**kw)
