from __future__ import annotations

import math

import pytest
import torch

from steerl.config import GuardsConfig
from steerl.stability import (
    NonFiniteError,
    NonFiniteGuard,
    StabilityError,
    ThresholdGuard,
    build_threshold_guards,
    diagnose,
)
from steerl.stability.guards import param_group_of


def test_nonfinite_guard_skips_then_stops():
    g = NonFiniteGuard(True, max_consecutive=3)
    assert g.check(1.0, 1.0)
    assert not g.check(math.nan, 1.0)
    assert not g.check(1.0, math.inf)
    assert g.check(1.0, 1.0) and g.consecutive == 0 and g.skipped == 2
    assert not g.check(math.nan, 1.0) and not g.check(math.nan, 1.0)
    with pytest.raises(NonFiniteError, match="3 consecutive steps"):
        g.check(math.nan, 1.0)
    assert issubclass(NonFiniteError, StabilityError)
    assert NonFiniteGuard(False, 1).check(math.nan, math.nan)  # disabled: always applies


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(4, 2)
        self.layers = torch.nn.ModuleList([torch.nn.Linear(2, 2) for _ in range(2)])
        self.lm_head = torch.nn.Linear(2, 4)


def test_diagnose_names_terms_params_and_groups():
    m = _Tiny()
    for p in m.parameters():
        p.grad = torch.zeros_like(p)
    m.layers[1].weight.grad[0, 0] = math.nan
    m.lm_head.bias.grad[2] = math.inf
    with torch.no_grad():
        m.embed.weight[1, 1] = math.nan
    d = diagnose({"policy": 0.3, "kl": math.nan, "sft": math.inf}, m.named_parameters())
    assert d.terms == ["kl", "sft"]
    assert d.grads == ["layers.1.weight", "lm_head.bias"]
    assert d.weights == ["embed.weight"]
    assert d.groups == ["embed", "layers.1", "lm_head"]
    text = str(d)
    assert "kl, sft" in text and "layers.1.weight" in text and "embed.weight" in text
    assert diagnose({"policy": 1.0}, _Tiny().named_parameters()).empty


def test_param_group_of():
    assert param_group_of("model.layers.3.mlp.down_proj.weight") == "model.layers.3"
    assert param_group_of("model.embed_tokens.weight") == "model.embed_tokens"
    assert param_group_of("lm_head.weight") == "lm_head"
    assert param_group_of("bias") == "bias"


def test_stop_error_includes_the_diagnosis():
    m = _Tiny()
    for p in m.parameters():
        p.grad = torch.zeros_like(p)
    m.layers[0].bias.grad[0] = math.nan
    g = NonFiniteGuard(True, max_consecutive=2)
    terms = {"policy": math.nan, "kl": 0.1}
    assert not g.check(math.nan, math.nan, terms=terms, named_params=m.named_parameters())
    with pytest.raises(NonFiniteError) as info:
        g.check(math.nan, math.nan, terms=terms, named_params=m.named_parameters())
    msg = str(info.value)
    assert "2 consecutive steps" in msg
    assert "non-finite loss term(s): policy" in msg
    assert "layers.0.bias" in msg and "layers.0" in msg


def test_threshold_guards():
    g = ThresholdGuard("train/kl", 0.1, "max", "rollback")
    assert not g.observe(0.05) and g.observe(0.2) and not g.observe(math.nan)
    assert g.hits == 1 and "above the maximum" in g.describe(0.2)
    e = ThresholdGuard("train/entropy", 0.5, "min")
    assert e.observe(0.1) and not e.observe(0.6)
    guards = build_threshold_guards(GuardsConfig(kl_max=0.1, entropy_min=0.2, action="stop"))
    assert [(x.metric, x.kind, x.limit, x.action) for x in guards] == [
        ("train/kl", "max", 0.1, "stop"),
        ("train/entropy", "min", 0.2, "stop"),
    ]
    assert build_threshold_guards(GuardsConfig()) == []
    with pytest.raises(ValueError, match="action"):
        ThresholdGuard("m", 1.0, "max", "explode")


def test_all_finite_checks_every_chunk():
    from steerl.stability.guards import all_finite

    t = torch.zeros(10, 7)
    assert all_finite(t, chunk=8)
    for bad in (float("nan"), float("inf"), -float("inf")):
        t[9, 6] = bad  # the last value, in the last (short) chunk
        assert not all_finite(t, chunk=8)
        t[9, 6] = 0.0
        t[0, 0] = bad
        assert not all_finite(t, chunk=8)
        t[0, 0] = 0.0
