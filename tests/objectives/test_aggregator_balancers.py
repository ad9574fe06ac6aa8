"""Gradient-level balancers on a restricted parameter set, and GradNorm."""

from __future__ import annotations

import json

import pytest
import torch

from steerl.config import ObjectivesConfig
from steerl.objectives import (
    AGGREGATOR_METHODS,
    BalancerProtocolError,
    aggregate,
    build_balancer,
    jacobian,
    make_weighting,
    resolve_params,
)


class Net(torch.nn.Module):
    """Names like a transformer: ``layers.<i>`` blocks, then a head."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layers = torch.nn.ModuleList([torch.nn.Linear(4, 4) for _ in range(3)])
        self.head = torch.nn.Linear(4, 2)

    def forward(self, x):
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return self.head(x)


def _terms(net, x):
    out = net(x)
    return {"policy": out[:, 0].pow(2).sum(), "aux": (out[:, 1] - 1).pow(2).sum()}


def _grads(net):
    return {n: p.grad.clone() for n, p in net.named_parameters()}


@pytest.mark.parametrize("method", ["pcgrad", "mgda", "upgrad", "cagrad", "nash_mtl", "imtl_g"])
def test_aggregated_and_plain_gradients_with_micro_batches(method):
    net = Net()
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))
    cfg = ObjectivesConfig(balancer=method, aggregate_params="last_blocks:1", backend="builtin")
    bal = build_balancer(cfg, model=net, term_names=["policy", "aux"])
    assert bal.selection.names == ("layers.2.weight", "layers.2.bias")
    # two micro-batches
    bal.begin_step(0)
    for idx in (slice(0, 3), slice(3, 8)):
        assert bal.combine(_terms(net, x[idx]), net.parameters()) == {"policy": 1.0, "aux": 1.0}
    agg_weights = bal.end_step()
    got = _grads(net)
    # reference: the full batch, by hand
    net.zero_grad()
    terms = _terms(net, x)
    restricted = list(bal.selection.params)
    J = jacobian(list(terms.values()), restricted)
    d, a = aggregate(J, make_weighting(AGGREGATOR_METHODS[method][0], "builtin"))
    sum(terms.values()).backward()
    plain = _grads(net)
    offset = 0
    for name, p in zip(bal.selection.names, restricted):
        torch.testing.assert_close(
            got[name], d[offset : offset + p.numel()].view_as(p), atol=1e-5, rtol=1e-4
        )
        offset += p.numel()
    for name in bal.selection.plain_names:
        torch.testing.assert_close(got[name], plain[name], atol=1e-6, rtol=1e-5)
    assert list(agg_weights) == ["policy", "aux"]
    assert agg_weights["policy"] == pytest.approx(float(a[0]), rel=1e-4, abs=1e-6)
    assert set(bal.conflicts()) == {"cos/policy|aux"}


def test_weights_scale_the_terms_before_aggregation():
    net = Net()
    x = torch.randn(8, 4)
    cfg = ObjectivesConfig(balancer="pcgrad", weights={"aux": 0.0}, aggregate_params="regex:head")
    bal = build_balancer(cfg, model=net)
    bal.begin_step(0)
    bal.combine(_terms(net, x), net.parameters())
    bal.end_step()
    got = _grads(net)
    net.zero_grad()
    _terms(net, x)["policy"].backward()  # aux weighted 0: only the policy gradient is left
    for name, p in net.named_parameters():
        torch.testing.assert_close(got[name], p.grad, atol=1e-6, rtol=1e-5)


def test_hidden_state_mgda_ub_on_the_tiny_llm(tiny_policy):
    model = tiny_policy(scale=0.3).model
    model.train()
    bal = build_balancer(ObjectivesConfig(balancer="mgda_ub"), model=model)
    assert bal.selection.kind == "hidden_state" and bal.selection.names == ()
    ids = torch.randint(0, 20, (2, 6))
    with torch.no_grad():  # outside a step nothing is captured (warm-up, eval, generation)
        model(input_ids=ids)
    model(input_ids=ids)
    assert bal.terms_jacobian._captured == []
    bal.begin_step(0)
    for _ in range(2):
        logits = model(input_ids=ids).logits
        lp = logits.log_softmax(-1)
        used = bal.combine(
            {"policy": -lp[..., 3].mean(), "sft": -lp[..., 5].mean()}, model.parameters()
        )
        assert sum(used.values()) == pytest.approx(1.0)  # MGDA weights lie on the simplex
    weights = bal.end_step()
    assert sum(weights.values()) == pytest.approx(1.0)
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(BalancerProtocolError, match="captured no hidden state"):
        bal.begin_step(1)
        w = model.lm_head.weight
        bal.combine({"policy": w.sum(), "sft": w.mean()}, model.parameters())


def test_explicit_representation():
    """``combine(..., representation=h)``: weights from gradients w.r.t. a given tensor."""
    from steerl.objectives import make_aggregator

    net = Net()
    h = torch.tanh(net.layers[0](torch.randn(3, 4)))
    bal = make_aggregator("mgda", "regex:head", backend="builtin")
    bal.bind(net)
    bal.begin_step(0)
    # d a / d h = 1 and d b / d h = -2: opposite, so MGDA's min-norm point is 0:
    # weights (2/3, 1/3) give 2/3 * 1 - 1/3 * 2 = 0
    used = bal.combine({"a": h.sum(), "b": -2 * h.sum()}, net.parameters(), representation=h)
    assert used == {"a": pytest.approx(2 / 3), "b": pytest.approx(1 / 3)}
    assert bal.end_step() == used


def test_restrict_specs_on_real_models(tiny_policy):
    llama = tiny_policy("llama").model
    sel = resolve_params(llama, "last_blocks:1")
    assert sel.names and all(n.startswith("model.layers.1.") for n in sel.names)
    assert "model.norm.weight" in sel.plain_names
    both = resolve_params(llama, "last_blocks:5")  # more than there are: all blocks
    assert {n.split(".")[2] for n in both.names} == {"0", "1"}
    gpt2 = tiny_policy("gpt2").model
    assert all(
        n.startswith("transformer.h.1.") for n in resolve_params(gpt2, "last_blocks:1").names
    )
    rx = resolve_params(gpt2, r"regex:ln_f")
    assert rx.names == ("transformer.ln_f.weight", "transformer.ln_f.bias")
    d = rx.describe()
    assert d["aggregated"] == list(rx.names) and d["aggregated_numel"] == 64
    json.dumps(d)


@pytest.mark.parametrize("spec", ["lora", "regex:nothing_like_this"])
def test_empty_parameter_set_is_a_clear_error(tiny_policy, spec):
    model = tiny_policy().model
    with pytest.raises(ValueError) as e:
        build_balancer(ObjectivesConfig(balancer="upgrad", aggregate_params=spec), model=model)
    msg = str(e.value)
    assert "an aggregator requested on an empty parameter set" in msg
    assert f"objectives.aggregate_params={spec!r}" in msg and "upgrad" in msg


def test_aggregators_need_a_model_and_the_hooks():
    with pytest.raises(ValueError, match="model=..."):
        build_balancer(ObjectivesConfig(balancer="mgda"))
    net = Net()
    bal = build_balancer(ObjectivesConfig(balancer="mgda"), model=net)
    with pytest.raises(BalancerProtocolError, match="begin_step"):
        bal.combine(_terms(net, torch.randn(2, 4)), net.parameters())


def test_pcgrad_random_order_resumes(tiny_policy):
    net = Net()
    x = torch.randn(6, 4)

    def three_terms():
        out = net(x)
        return {
            "a": out[:, 0].sum(),
            "b": -out[:, 0].sum() + out[:, 1].sum(),
            "c": out.pow(2).sum(),
        }

    cfg = ObjectivesConfig(balancer="pcgrad", pcgrad={"order": "random", "seed": 7})
    bal = build_balancer(cfg, model=net)
    for step in range(3):
        bal.begin_step(step)
        bal.combine(three_terms(), net.parameters())
        bal.end_step()
    state = json.loads(json.dumps(bal.state_dict()))
    other = build_balancer(cfg, model=net)
    other.load_state_dict(state)
    for b in (bal, other):
        net.zero_grad()
        b.begin_step(3)
        b.combine(three_terms(), net.parameters())
        b.end_step()
    assert bal.last_weights == other.last_weights


def test_gradnorm_weights_sum_to_k_and_move(tiny_policy):
    net = Net()
    x = torch.randn(8, 4)
    bal = build_balancer(ObjectivesConfig(balancer="gradnorm", gradnorm={"lr": 0.1}), model=net)
    assert bal.selection.names == ("layers.2.weight", "layers.2.bias")
    first = None
    for step in range(5):
        net.zero_grad()
        bal.begin_step(step)
        terms = _terms(net, x)
        terms["aux"] = terms["aux"] * 10  # a term with a 10x larger gradient
        used = bal.combine(terms, net.parameters())
        bal.end_step()
        first = first or used
        assert sum(used.values()) == pytest.approx(2.0)
    assert first == {"policy": 1.0, "aux": 1.0}
    assert used["aux"] < used["policy"]  # GradNorm shrinks the weight of the larger gradient
    with pytest.raises(ValueError, match="not the hidden state"):
        b = build_balancer(ObjectivesConfig(balancer="gradnorm"), model=net)
        b.spec = "hidden_state"
        b.bind(net)
    json.dumps(bal.state_dict())


def test_describe_and_repr(tiny_policy):
    net = Net()
    bal = build_balancer(ObjectivesConfig(balancer="cagrad", cagrad={"c": 0.2}), model=net)
    weighting = "CAGradWeighting(c=0.2)"  # auto: torchjd's CAGrad only with cvxpy installed
    if "TorchJD" in repr(bal.weighting):
        weighting = repr(bal.weighting)
    assert repr(bal) == (
        f"AggregatorBalancer(method='cagrad', weighting={weighting}, "
        "aggregate_params='last_blocks:1')"
    )
    d = bal.describe()
    assert d["aggregated"] == ["layers.2.weight", "layers.2.bias"]
    assert d["plain_sum"][0] == "layers.0.weight"
