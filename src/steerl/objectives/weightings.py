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

Modules: this one holds the interface (``Weighting``), the registry ``WEIGHTINGS`` and
``make_weighting``; ``gramian_solvers`` the exact small solvers (NNLS, min-norm point,
dual-cone projection); ``projection_weightings`` PCGrad, UPGrad and IMTL-G;
``min_norm_weightings`` MGDA, CAGrad and Nash-MTL; ``torchjd_weightings`` the torchjd
backend. All of them are importable from here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from steerl.objectives.gramian_solvers import (  # noqa: F401 - re-exported
    _TINY,
    _lipschitz,
    _project_simplex,
    _sqrt_psd,
    min_norm_point,
    min_norm_simplex,
    nnls,
    project_dual_cone,
)
from steerl.registry import Registry

WEIGHTINGS: Registry = Registry("weighting")


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


# --------------------------------------------------------------------------- re-exports
# The weightings register themselves into ``WEIGHTINGS`` when their modules run. They import
# ``Weighting`` and ``WEIGHTINGS`` from this module, so they are imported here, at the end,
# once those are defined: importing this module (or the ``steerl.objectives`` package, which
# does) fills the registry, and their names stay importable from here.
from steerl.objectives.min_norm_weightings import (  # noqa: E402, F401 - re-exported
    CAGradWeighting,
    MGDAWeighting,
    NashMTLWeighting,
)
from steerl.objectives.projection_weightings import (  # noqa: E402, F401 - re-exported
    IMTLGWeighting,
    PCGradWeighting,
    UPGradWeighting,
)
from steerl.objectives.torchjd_weightings import (  # noqa: E402, F401 - re-exported
    AUTO_TORCHJD,
    TORCHJD_METHODS,
    TorchJDWeighting,
    _NormalizedTorchJD,
    torchjd_weighting,
)
