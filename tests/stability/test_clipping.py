from __future__ import annotations

import math

import pytest
import torch

from steerl.config import StabilityConfig
from steerl.stability import ClipResult, GradClipper, unit_norms
from steerl.stability.clipping import percentile


def _param(values, grad) -> torch.nn.Parameter:
    p = torch.nn.Parameter(torch.tensor(values, dtype=torch.float32))
    p.grad = torch.tensor(grad, dtype=torch.float32)
    return p


def _clipper(**kw) -> GradClipper:
    return GradClipper(StabilityConfig(**kw))


def test_norm_mode_scales_to_the_threshold():
    a, b = _param([0.0], [3.0]), _param([0.0, 0.0], [0.0, 4.0])
    res = _clipper(clip="norm", max_grad_norm=1.0).clip([a, b])
    assert res.pre_norm == pytest.approx(5.0)
    assert res.post_norm == pytest.approx(1.0, rel=1e-5)
    assert res.clipped and res.threshold == 1.0
    assert a.grad.tolist() == pytest.approx([0.6], rel=1e-5)
    assert b.grad.tolist() == pytest.approx([0.0, 0.8], rel=1e-5)


def test_norm_mode_below_threshold_and_off():
    p = _param([0.0, 0.0], [0.3, 0.4])
    res = _clipper(max_grad_norm=1.0).clip([p])
    assert res == ClipResult(pytest.approx(0.5), pytest.approx(0.5), False, 1.0)
    assert p.grad.tolist() == pytest.approx([0.3, 0.4])
    p = _param([0.0, 0.0], [30.0, 40.0])
    res = _clipper(max_grad_norm=None).clip([p])  # max_grad_norm: null turns clipping off
    assert not res.clipped and res.pre_norm == res.post_norm == pytest.approx(50.0)
    assert res.metrics()["train/grad_norm"] == pytest.approx(50.0)


def test_value_mode_clamps_elements():
    p = _param([0.0, 0.0, 0.0], [0.5, -3.0, 2.0])
    res = _clipper(clip="value", clip_value=1.0).clip([p])
    assert p.grad.tolist() == [0.5, -1.0, 1.0]
    assert res.pre_norm == pytest.approx(math.sqrt(0.25 + 9 + 4))
    assert res.post_norm == pytest.approx(math.sqrt(0.25 + 1 + 1))
    assert res.clipped
    q = _param([0.0], [0.5])
    assert not _clipper(clip="value", clip_value=1.0).clip([q]).clipped


def test_none_mode_reports_without_changing():
    p = _param([0.0, 0.0], [30.0, 40.0])
    res = _clipper(clip="none").clip([p])
    assert res.pre_norm == res.post_norm == pytest.approx(50.0) and not res.clipped
    assert p.grad.tolist() == [30.0, 40.0]


def test_agc_is_unit_wise():
    # rows of a weight matrix are units: row norms 5 and 1 -> allowed grad norms 0.5 and 0.1
    w = _param([[3.0, 4.0], [0.0, 1.0]], [[0.3, 0.4], [1.0, 0.0]])
    # a 1-d parameter is one unit; zero weights use the eps floor: allowed 0.1 * 1e-3
    b = _param([0.0, 0.0], [0.3, 0.4])
    res = _clipper(clip="agc", agc_clip=0.1, agc_eps=1e-3).clip([w, b])
    assert res.clipped
    assert w.grad[0].tolist() == pytest.approx([0.3, 0.4])  # exactly at the limit: kept
    assert w.grad[1].tolist() == pytest.approx([0.1, 0.0], rel=1e-5)
    assert float(b.grad.norm()) == pytest.approx(1e-4, rel=1e-4)
    assert b.grad.tolist() == pytest.approx([0.6e-4, 0.8e-4], rel=1e-4)  # direction kept
    assert res.pre_norm == pytest.approx(math.sqrt(0.25 + 1 + 0.25))
    assert res.post_norm == pytest.approx(math.sqrt(0.25 + 0.01 + 1e-8), rel=1e-5)


def test_unit_norms_shapes():
    assert unit_norms(torch.ones(3, 4)).shape == (3, 1)
    assert unit_norms(torch.ones(2, 3, 4)).shape == (2, 1, 1)
    assert unit_norms(torch.ones(2, 3, 4))[0].item() == pytest.approx(math.sqrt(12))
    assert unit_norms(torch.ones(5)).shape == (1,)
    assert unit_norms(torch.tensor(2.0)).item() == 2.0


def test_percentile_matches_numpy():
    np = pytest.importorskip("numpy")
    xs = [3.0, 1.0, 7.0, 2.0, 10.0, 4.0]
    for q in (1, 25, 50, 90, 100):
        assert percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)))


def _norm_param(norm: float) -> torch.nn.Parameter:
    return _param([0.0], [norm])


def test_adaptive_percentile_threshold_and_fallback():
    c = _clipper(
        clip="adaptive",
        max_grad_norm=100.0,
        adaptive={"percentile": 50, "window": 10, "min_history": 4},
    )
    # before min_history norms: the max_grad_norm fallback
    for n in (1.0, 2.0, 3.0):
        res = c.clip([_norm_param(n)])
        assert res.threshold == 100.0 and not res.clipped
    assert c.clip([_norm_param(1000.0)]).post_norm == pytest.approx(100.0, rel=1e-5)
    assert list(c.history) == [1.0, 2.0, 3.0, 1000.0]  # the pre-clip norm is recorded
    assert c.threshold() == pytest.approx(2.5)  # median of 1, 2, 3, 1000
    res = c.clip([_norm_param(5.0)])
    assert res.clipped and res.threshold == pytest.approx(2.5)
    assert res.post_norm == pytest.approx(2.5, rel=1e-5)
    # non-finite norms never enter the history, and their gradients are left as they are
    p = _param([0.0], [float("nan")])
    res = c.clip([p])
    assert math.isnan(res.pre_norm) and not res.clipped
    assert list(c.history) == [1.0, 2.0, 3.0, 1000.0, 5.0]
    assert c.clip([_param([0.0], [float("inf")])]).pre_norm == math.inf
    assert len(c.history) == 5
    # the window keeps the newest values
    for n in range(20):
        c.clip([_norm_param(0.1 * (n + 1))])
    assert len(c.history) == 10 and c.history[-1] == pytest.approx(2.0)


def test_adaptive_multiple_of_median():
    c = _clipper(
        clip="adaptive",
        max_grad_norm=None,
        adaptive={"multiple": 2.0, "window": 5, "min_history": 3},
    )
    assert c.threshold() is None  # no fallback threshold: nothing is clipped early
    assert not c.clip([_norm_param(50.0)]).clipped
    for n in (1.0, 2.0):
        c.clip([_norm_param(n)])
    assert c.threshold() == pytest.approx(4.0)  # 2 x median(50, 1, 2)


def test_adaptive_state_round_trip():
    kw = {"clip": "adaptive", "adaptive": {"percentile": 80, "window": 6, "min_history": 2}}
    a = _clipper(**kw)
    for n in (1.0, 4.0, 2.0, 8.0):
        a.clip([_norm_param(n)])
    b = _clipper(**kw)
    b.load_state_dict(a.state_dict())
    for n in (3.0, 50.0, 0.5):
        assert a.clip([_norm_param(n)]) == b.clip([_norm_param(n)])
    assert a.state_dict() == b.state_dict()


def test_no_gradients():
    p = torch.nn.Parameter(torch.zeros(2))
    assert _clipper().clip([p]) == ClipResult(0.0, 0.0, False, 1.0)


def test_non_finite_gradients_are_left_for_the_diagnosis():
    # clipping a NaN/inf norm would spread NaN into every gradient and hide where it came from
    for mode in ("norm", "value", "agc", "adaptive"):
        good, bad = _param([1.0, 1.0], [3.0, 4.0]), _param([1.0], [float("inf")])
        res = _clipper(clip=mode, max_grad_norm=1.0, clip_value=0.1).clip([good, bad])
        assert res.pre_norm == math.inf and not res.clipped, mode
        assert good.grad.tolist() == [3.0, 4.0], mode
