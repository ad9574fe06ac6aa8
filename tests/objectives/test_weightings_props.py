"""Properties of the Gramian weightings / aggregators (torchjd-style property tests).

What is checked, and why (see also the report in steerl.objectives.weightings):

- no conflict (all pairwise cosines >= 0) -> every method except IMTL-G returns a *positive*
  combination of the gradients (weights >= 0), hence <d, g_i> >= 0. IMTL-G does not: its
  weights pinv(G) sqrt(diag G) can be negative even without conflict (a counterexample is
  pinned below). With the paper's sum-to-one normalisation it can even increase every loss
  (pinned below, also without conflict); steerl's |sum| normalisation never conflicts.
- permuting the objectives leaves the aggregated vector unchanged (pcgrad: order="expected").
- rescaling one loss: the claim "does not change MGDA's / UPGrad's direction" is false for
  raw MGDA and for UPGrad (counterexample below). What holds: MGDA with normalize="l2",
  Nash-MTL and IMTL-G keep their direction exactly; UPGrad is *linear under scaling*
  (Quinton & Rey 2024): c -> UPGrad(diag(c) J) is linear on c > 0, and it is
  non-conflicting for every J.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from steerl.objectives import aggregate, make_weighting
from steerl.objectives.weightings import (
    AUTO_TORCHJD,
    CAGradWeighting,
    IMTLGWeighting,
    MGDAWeighting,
    NashMTLWeighting,
    PCGradWeighting,
    UPGradWeighting,
    min_norm_simplex,
    project_dual_cone,
)

BUILTIN = ["pcgrad", "mgda", "upgrad", "cagrad", "nash_mtl", "imtl_g"]
POSITIVE = ["pcgrad", "mgda", "upgrad", "cagrad", "nash_mtl"]  # IMTL-G: see module doc

try:
    make_weighting("upgrad", "torchjd")
    HAS_TORCHJD = True
except (ImportError, ValueError):
    HAS_TORCHJD = False

PROPS = settings(
    max_examples=int(os.environ.get("STEERL_HYPOTHESIS_EXAMPLES", 25)),
    deadline=None,
    derandomize=True,  # the same examples on every run: CI stays deterministic
    suppress_health_check=[HealthCheck.too_slow],
)


@st.composite
def jacobians(draw, nonneg: bool = False, k_max: int = 5):
    k = draw(st.integers(2, k_max))
    n = draw(st.integers(k, 8))
    elems = st.floats(0.0 if nonneg else -3.0, 3.0, allow_nan=False, width=64)
    J = draw(arrays(np.float64, (k, n), elements=elems))
    if (np.linalg.norm(J, axis=1) > 1e-3).sum() < 2:
        J = J + np.eye(k, n)
    if nonneg:  # all cosines >= 0; rotate so nothing is axis-aligned
        seed = draw(st.integers(0, 2**16))
        Q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(n, n)))
        J = J @ Q
    return J


def _agg(name: str, J: np.ndarray, backend: str = "builtin", **kw) -> tuple[np.ndarray, np.ndarray]:
    d, a = aggregate(torch.tensor(J), make_weighting(name, backend, **kw))
    return d.numpy(), a.numpy()


def _scale(J: np.ndarray) -> float:
    return float(np.max(np.sum(J * J, axis=1)))


# --------------------------------------------------------------------------- no conflict
@PROPS
@given(J=jacobians(nonneg=True))
@pytest.mark.parametrize("name", POSITIVE)
def test_no_conflict_gives_a_positive_combination(name, J):
    d, a = _agg(name, J)
    assert a.min() >= -1e-8 * max(1.0, np.abs(a).max())
    np.testing.assert_allclose(d, a @ J, atol=1e-9)
    assert (J @ d).min() >= -1e-7 * _scale(J) * max(1.0, np.abs(a).max())


@PROPS
@given(J=jacobians(nonneg=True))
def test_pcgrad_without_conflict_is_the_plain_sum(J):
    d, _ = _agg("pcgrad", J)
    np.testing.assert_allclose(d, J.sum(0), atol=1e-9 * max(1.0, np.sqrt(_scale(J))))


@PROPS
@given(J=jacobians(nonneg=True))
def test_upgrad_without_conflict_is_the_mean(J):
    _, a = _agg("upgrad", J)
    np.testing.assert_allclose(a, np.full(len(J), 1 / len(J)), atol=1e-7)


def test_imtl_g_is_not_a_positive_combination_even_without_conflict():
    # all entries >= 0, so every pairwise cosine is >= 0, yet one weight is negative
    J = np.array([[2.0, 1.0, 2.0], [1.0, 1.0, 2.0], [2.0, 1.0, 1.0]])
    d, a = _agg("imtl_g", J)
    assert a.min() < -1.0
    proj = (J @ d) / np.linalg.norm(J, axis=1)
    assert proj.min() > 0  # ... but it does not conflict with any objective


@PROPS
@given(J=jacobians())
def test_imtl_g_never_conflicts_and_has_equal_unit_projections(J):
    """For linearly independent gradients (with dependent ones the pinv solution need not
    have equal projections, and can conflict)."""
    norms = np.linalg.norm(J, axis=1)
    if np.linalg.matrix_rank(J, tol=1e-3) < len(J) or norms.min() < 1e-2:
        return
    d, _ = _agg("imtl_g", J)
    proj = (J @ d) / norms
    assert proj.min() >= -1e-9
    np.testing.assert_allclose(proj, proj.mean(), atol=1e-6 * max(1.0, abs(proj).max()))


def test_imtl_g_of_the_paper_can_increase_every_loss_without_conflict():
    # rows of a non-negative matrix, rotated: no two gradients conflict
    J = np.array(
        [
            [-1.15184414, -1.76479522, 0.74749776],
            [-1.26336126, -1.49788624, -1.46978064],
            [-1.16769367, -1.16324772, -0.53230277],
        ]
    )
    assert (J @ J.T).min() >= 0
    G = torch.tensor(J @ J.T)
    paper = IMTLGWeighting(sign_fix=False)(G).numpy() @ J
    assert (J @ paper).max() < 0  # uphill for every objective
    ours = IMTLGWeighting()(G).numpy() @ J
    assert (J @ ours).min() > 0
    np.testing.assert_allclose(ours, -paper, rtol=1e-9)


# --------------------------------------------------------------------------- always
@PROPS
@given(J=jacobians())
@pytest.mark.parametrize("name", ["mgda", "upgrad", "nash_mtl"])
def test_never_conflicts(name, J):
    """MGDA, UPGrad and Nash-MTL: <d, g_i> >= 0 for every J, conflicting or not (Nash-MTL:
    up to its 1e-9 Tikhonov term, visible when the gradients are Pareto-stationary)."""
    d, _ = _agg(name, J)
    tol = 1e-4 if name == "nash_mtl" else 1e-6
    assert (J @ d).min() >= -tol * _scale(J) * max(1.0, np.linalg.norm(d))


@PROPS
@given(J=jacobians())
def test_mgda_is_the_min_norm_point_of_the_hull(J):
    d, a = _agg("mgda", J)
    assert a.min() >= 0 and abs(a.sum() - 1) < 1e-9
    # optimality: <d, g_j> >= ||d||^2 for all j (KKT of the min-norm problem)
    assert (J @ d).min() >= d @ d - 1e-7 * _scale(J)


@PROPS
@given(J=jacobians())
def test_nash_mtl_solves_the_bargaining_equation(J):
    G = J @ J.T
    if np.linalg.matrix_rank(G, tol=1e-6 * np.abs(G).max()) < len(G):
        return  # no solution when 0 is in the hull's span; covered by the cap
    a = NashMTLWeighting(iterations=50).weights(G)
    Gn = G / np.linalg.norm(G) + NashMTLWeighting.EPS * np.eye(len(G))
    np.testing.assert_allclose(Gn @ a, 1 / a, rtol=1e-6)


# --------------------------------------------------------------------------- permutation
@PROPS
@given(J=jacobians(), seed=st.integers(0, 1000))
@pytest.mark.parametrize("name", BUILTIN)
def test_permuting_the_objectives_does_not_change_the_result(name, J, seed):
    perm = np.random.default_rng(seed).permutation(len(J))
    d, a = _agg(name, J)
    dp, ap = _agg(name, J[perm])
    # CAGrad: iterative solver stopped on stall; UPGrad: R = sqrt(G) squares the condition;
    # MGDA: min-norm objective resolved to 1e-10, so ||d|| to ~1e-5
    rel = {"cagrad": 1e-4, "upgrad": 1e-5, "mgda": 1e-5}.get(name, 1e-6)
    tol = rel * max(1.0, np.linalg.norm(d)) * max(1.0, np.sqrt(_scale(J)))
    np.testing.assert_allclose(dp, d, atol=tol)


def test_pcgrad_random_order_is_seeded_and_matches_the_paper_for_two():
    J = np.array([[1.0, 0.0], [-1.0, 1.0]])  # conflicting
    # the paper for K = 2: g1' = g1 - <g1,g2>/|g2|^2 g2, g2' = g2 - <g2,g1>/|g1|^2 g1
    g1, g2 = J
    want = (g1 - (g1 @ g2) / (g2 @ g2) * g2) + (g2 - (g2 @ g1) / (g1 @ g1) * g1)
    for order in ("expected", "random"):
        d, _ = _agg("pcgrad", J, order=order)
        np.testing.assert_allclose(d, want, atol=1e-12)
    J3 = np.random.default_rng(0).normal(size=(4, 6))
    w1, w2 = PCGradWeighting("random", seed=3), PCGradWeighting("random", seed=3)
    G = J3 @ J3.T
    np.testing.assert_array_equal(w1.weights(G), w2.weights(G))
    w3 = PCGradWeighting("random", seed=3)
    w3.load_state_dict(w1.state_dict())  # resumes the shuffles
    np.testing.assert_array_equal(w1.weights(G), w3.weights(G))


# --------------------------------------------------------------------------- scaling
def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_claim_scale_invariance_is_false_for_raw_mgda_and_upgrad():
    """'Scaling one loss by a constant does not change MGDA/UPGrad's direction' is false."""
    J = np.array([[1.0, 0.0], [0.0, 1.0]])
    Js = np.diag([10.0, 1.0]) @ J
    for name in ("mgda", "upgrad"):
        d, _ = _agg(name, J)
        ds, _ = _agg(name, Js)
        assert _cos(d, ds) < 0.9, name


@PROPS
@given(J=jacobians(), i=st.integers(0, 4), c=st.floats(0.05, 20.0))
@pytest.mark.parametrize(
    "name,kw", [("mgda", {"normalize": "l2"}), ("nash_mtl", {}), ("imtl_g", {})]
)
def test_direction_is_invariant_to_scaling_one_loss(name, kw, J, i, c):
    i = i % len(J)
    if np.linalg.matrix_rank(J, tol=1e-3) < len(J) or np.linalg.norm(J, axis=1).min() < 1e-2:
        return  # Nash-MTL / IMTL-G are defined for independent rows
    d, _ = _agg(name, J, **kw)
    Js = J.copy()
    Js[i] *= c
    ds, _ = _agg(name, Js, **kw)
    if np.linalg.norm(d) < 1e-6 * np.sqrt(_scale(J)) or np.linalg.norm(ds) < 1e-9:
        return
    assert _cos(d, ds) > 1 - 1e-6


def test_imtl_g_of_the_paper_flips_when_one_loss_is_rescaled():
    """The paper's IMTL-G divides by sum(v); rescaling one loss can flip that sum's sign and
    the update then goes uphill for every loss. steerl's |sum| keeps the direction."""
    J = np.array([[0.0, 0.0, 1.0, 1.0], [1.5, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    Js = np.diag([1.0, 3.0, 1.0]) @ J
    paper = IMTLGWeighting(sign_fix=False)
    assert (J @ (paper(torch.tensor(J @ J.T)).numpy() @ J)).min() > 0
    assert (Js @ (paper(torch.tensor(Js @ Js.T)).numpy() @ Js)).max() < 0
    d, _ = _agg("imtl_g", J)
    ds, _ = _agg("imtl_g", Js)
    assert _cos(d, ds) > 1 - 1e-9


@PROPS
@given(
    J=jacobians(),
    c1=arrays(np.float64, 5, elements=st.floats(0.1, 5.0)),
    c2=arrays(np.float64, 5, elements=st.floats(0.1, 5.0)),
)
def test_upgrad_is_linear_under_scaling(J, c1, c2):
    """UPGrad(diag(c) J) = 1/K sum_i c_i pi_J(g_i): linear in c > 0 (Quinton & Rey 2024)."""
    k = len(J)
    c1, c2 = c1[:k], c2[:k]
    d1, _ = _agg("upgrad", np.diag(c1) @ J)
    d2, _ = _agg("upgrad", np.diag(c2) @ J)
    d12, _ = _agg("upgrad", np.diag(c1 + c2) @ J)
    np.testing.assert_allclose(d12, d1 + d2, atol=1e-6 * 10 * max(1.0, np.sqrt(_scale(J))))


# --------------------------------------------------------------------------- small cases
def test_one_objective_returns_its_gradient():
    J = np.array([[3.0, -4.0, 1.0]])
    for name in ("pcgrad", "mgda", "upgrad", "imtl_g"):
        d, _ = _agg(name, J)
        np.testing.assert_allclose(d, J[0], atol=1e-9)
    d, _ = _agg("cagrad", J, c=0.5)  # the paper's d = g0 + c ||g0|| g0 / ||g0||
    np.testing.assert_allclose(d, 1.5 * J[0], atol=1e-9)
    d, _ = _agg("nash_mtl", J)
    assert _cos(d, J[0]) > 1 - 1e-12


def test_upgrad_matches_torchjds_documented_example():
    J = np.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]])
    d, _ = _agg("upgrad", J)
    np.testing.assert_allclose(d, [0.2929, 1.9004, 1.9004], atol=2e-3)  # torchjd regularises


def test_solvers_by_hand():
    G = np.array([[1.0, 0.0], [0.0, 4.0]])  # g1 = e1, g2 = 2 e2: min-norm w = (0.8, 0.2)
    np.testing.assert_allclose(min_norm_simplex(G), [0.8, 0.2], atol=1e-12)
    V = project_dual_cone(np.array([[1.0, -1.0], [-1.0, 1.0]]), np.eye(2))
    # opposite gradients: the dual cone is the orthogonal complement, both projections 0
    np.testing.assert_allclose(V @ np.array([[1.0, -1.0], [-1.0, 1.0]]) @ V.T, 0, atol=1e-9)


def test_readable_reprs():
    assert repr(PCGradWeighting()) == "PCGradWeighting(order='expected')"
    assert repr(MGDAWeighting("l2")) == "MGDAWeighting(normalize='l2')"
    assert repr(UPGradWeighting()) == "UPGradWeighting(pref=None)"
    assert repr(CAGradWeighting(0.3)) == "CAGradWeighting(c=0.3)"
    assert repr(NashMTLWeighting(5)) == "NashMTLWeighting(iterations=5)"
    assert repr(IMTLGWeighting()) == "IMTLGWeighting()"


def test_bad_arguments():
    with pytest.raises(ValueError, match="order"):
        PCGradWeighting("sorted")
    with pytest.raises(ValueError, match="normalize"):
        MGDAWeighting("l1")
    with pytest.raises(ValueError, match="order=random"):
        PCGradWeighting().weights(np.eye(9))
    with pytest.raises(ValueError, match="backend"):
        make_weighting("mgda", "cvxpy")
    with pytest.raises(ValueError, match="steerl uses its own"):
        make_weighting("pcgrad", "torchjd")


# --------------------------------------------------------------------------- torchjd backend
@pytest.mark.skipif(not HAS_TORCHJD, reason="torchjd (steerl[mo]) not installed")
@settings(max_examples=15, deadline=None)
@given(J=jacobians())
@pytest.mark.parametrize("name", ["mgda", "upgrad", "imtl_g"])
def test_torchjd_backend_agrees_with_the_builtin(name, J):
    norms = np.linalg.norm(J, axis=1)
    if norms.min() < 0.1 * norms.max() or np.linalg.matrix_rank(J, tol=1e-2) < len(J):
        return  # torchjd regularises the Gramian: ill-conditioned cases legitimately differ
    d, _ = _agg(name, J)
    if name == "imtl_g":
        d, _ = _agg(name, J, sign_fix=False)
    dt, _ = _agg(name, J, backend="torchjd")
    # torchjd regularises UPGrad's Gramian (1e-4) and stops MGDA's Frank-Wolfe at a tolerance
    scale = max(1.0, np.linalg.norm(d)) * max(1.0, np.sqrt(_scale(J)))
    assert np.linalg.norm(dt - d) <= 0.05 * scale


def test_auto_backend_uses_torchjd_only_where_it_is_exact():
    assert set(AUTO_TORCHJD) == {"upgrad", "cagrad"}
    for name in ("mgda", "pcgrad", "nash_mtl", "imtl_g"):
        w = make_weighting(name, "auto")
        assert not type(w).__name__.startswith("TorchJD"), name
