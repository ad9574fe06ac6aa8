"""Per-term gradients through the LM head in one pass (``objectives.jacobian=auto``).

The factorised path must give the same gradients as one backward per term
(``jacobian=autograd``), take effect on the trainer's log-prob layout, and step aside (with
the reason in ``last_path``) wherever it would not be exact.
"""

from __future__ import annotations

import pytest
import torch

from steerl.config import ObjectivesConfig
from steerl.logprobs import completion_logprobs, entropy_from_logits
from steerl.objectives import build_balancer
from steerl.objectives.factored import graph_reach, head_input_grads
from steerl.rollout import Rollout

N, P, T = 4, 5, 6


def _batch(gen: torch.Generator) -> Rollout:
    prompt_mask = torch.ones(N, P, dtype=torch.long)
    prompt_mask[0, :2] = 0  # left padding
    completion_mask = torch.ones(N, T, dtype=torch.long)
    completion_mask[1, 4:] = 0  # right padding
    return Rollout(
        torch.randint(3, 20, (N, P), generator=gen),
        prompt_mask,
        torch.randint(3, 20, (N, T), generator=gen),
        completion_mask,
        torch.zeros(N, T),
        torch.zeros(N, dtype=torch.bool),
    )


def _terms(lp: torch.Tensor, ent: torch.Tensor | None, gen: torch.Generator, K: int):
    """K policy-gradient terms with their own advantages, a k3-KL term, an entropy bonus."""
    adv = torch.randn(K, N, generator=gen)
    ratio = torch.exp(lp - lp.detach())
    terms = {f"r{k}": -(adv[k][:, None] * ratio).mean() for k in range(K)}
    ref = lp.detach() + 0.1 * torch.randn(N, T, generator=gen)
    terms["kl"] = 0.5 * (torch.exp(ref - lp) - (ref - lp) - 1).mean()
    if ent is not None:
        terms["entropy"] = -0.01 * ent.mean()
    return terms


def _run(method, jacobian, model, batches, K=2, spec=None, entropy=False, tap=True):
    cfg = ObjectivesConfig(
        balancer=method, aggregate_params=spec, jacobian=jacobian, backend="builtin"
    )
    bal = build_balancer(cfg, model=model)
    model.zero_grad(set_to_none=True)
    bal.begin_step(0)
    gen = torch.Generator().manual_seed(7)
    for batch in batches:
        lp, ent = completion_logprobs(model, batch, with_entropy=entropy, entropy_grad=entropy)
        if tap:
            bal.tap(lp, ent)
        bal.combine(_terms(lp, ent, gen, K), model.parameters())
    weights = bal.end_step()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    return bal, weights, grads


def _assert_same(a, b, rtol=1e-4, atol=1e-6):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=rtol, atol=atol, msg=k)


@pytest.fixture
def model_and_batches(tiny_policy):
    model = tiny_policy(scale=0.3).model
    model.train()
    gen = torch.Generator().manual_seed(3)
    return model, [_batch(gen), _batch(gen)]


@pytest.mark.parametrize("method", ["pcgrad", "mgda", "upgrad", "imtl_g", "gradnorm"])
@pytest.mark.parametrize("K", [1, 3])
def test_factored_equals_one_backward_per_term(model_and_batches, method, K):
    model, batches = model_and_batches
    fast, w_fast, g_fast = _run(method, "auto", model, batches, K=K)
    slow, w_slow, g_slow = _run(method, "autograd", model, batches, K=K)
    assert fast.terms_jacobian.last_path == "factored"
    assert slow.terms_jacobian.last_path.startswith("autograd")
    _assert_same(g_fast, g_slow)
    assert w_fast == pytest.approx(w_slow, rel=1e-4, abs=1e-6)


def test_factored_with_entropy_tap_and_two_blocks(model_and_batches):
    model, batches = model_and_batches
    kw = {"spec": "last_blocks:2", "entropy": True}
    fast, _, g_fast = _run("upgrad", "auto", model, batches, **kw)
    _, _, g_slow = _run("upgrad", "autograd", model, batches, **kw)
    assert fast.terms_jacobian.last_path == "factored"
    _assert_same(g_fast, g_slow)


def test_mgda_ub_hidden_state_factored(model_and_batches):
    model, batches = model_and_batches
    fast, w_fast, g_fast = _run("mgda_ub", "auto", model, batches[:1], K=3)
    _, w_slow, g_slow = _run("mgda_ub", "autograd", model, batches[:1], K=3)
    assert fast.terms_jacobian.last_path == "factored"
    assert w_fast == pytest.approx(w_slow, rel=1e-4, abs=1e-6)
    _assert_same(g_fast, g_slow)


def test_untapped_entropy_falls_back_exactly(model_and_batches):
    """A term that reaches the model around the taps (entropy with a gradient, not tapped)."""
    model, batches = model_and_batches
    cfg = ObjectivesConfig(balancer="mgda", jacobian="auto", backend="builtin")
    bal = build_balancer(cfg, model=model)
    bal.begin_step(0)
    lp, ent = completion_logprobs(model, batches[0], with_entropy=True, entropy_grad=True)
    bal.tap(lp)  # entropy not tapped
    bal.combine(_terms(lp, ent, torch.Generator().manual_seed(0), 2), model.parameters())
    bal.end_step()
    assert bal.terms_jacobian.last_path.startswith("autograd: a term depends on the model")


def test_no_taps_and_head_in_the_restricted_set_fall_back(model_and_batches):
    model, batches = model_and_batches
    bal, _, _ = _run("mgda", "auto", model, batches, tap=False)
    assert bal.terms_jacobian.last_path.startswith("autograd: no per-token tensor")
    bal, _, g_fast = _run("mgda", "auto", model, batches, spec="regex:lm_head|embed")
    assert bal.terms_jacobian.last_path == "autograd: the restricted set holds LM-head parameters"
    assert "never" in bal.describe()["jacobian_factored"]


def test_a_tap_read_from_other_positions_is_refused(tiny_policy):
    """The window convention (token t read at h[:, S - T - 1 + t]) is checked, not assumed."""
    model = tiny_policy(scale=0.3).model
    model.train()
    captured = []
    hook = model.get_output_embeddings().register_forward_pre_hook(
        lambda m, a: captured.append(a[0])
    )
    ids = torch.randint(3, 20, (2, 9))
    logits = model(input_ids=ids).logits
    hook.remove()
    good = logits[:, 2:8].log_softmax(-1)[..., 5]  # positions S-T-1 .. S-2 with S=9, T=6
    bad = logits[:, 0:6].log_softmax(-1)[..., 5]
    head_ids = {id(p) for p in model.get_output_embeddings().parameters()}
    h, grads = head_input_grads([good.sum(), 2 * good.mean()], [good], captured, head_ids)
    assert h is captured[0] and len(grads) == 2
    (ref,) = torch.autograd.grad(2 * good.mean(), h, retain_graph=True)
    torch.testing.assert_close(grads[1], ref)
    why = head_input_grads([bad.sum()], [bad], captured, head_ids)
    assert why.startswith("a tapped tensor is not read")
    ent = entropy_from_logits(logits)[:, 2:8]
    why = head_input_grads([(good + ent).sum()], [good], captured, head_ids)
    assert why.startswith("a term depends on the model")
    why = head_input_grads([good.sum()], [good], captured)  # the head's weight is not allowed
    assert why.startswith("a tapped tensor depends on parameters other than the head's")


def test_graph_reach_stops_at_the_given_edges():
    w = torch.randn(3, requires_grad=True)
    v = torch.randn(3, requires_grad=True)
    a = w * 2
    loss = (a.sin() + v).sum()
    _, leaked = graph_reach(loss, [(a.grad_fn, a.output_nr)])
    assert leaked  # v is reached around the stop
    reached, leaked = graph_reach(loss, [(a.grad_fn, a.output_nr)], allowed_leaves={id(v)})
    assert reached == {0} and not leaked


def test_jacobian_key_is_checked():
    from steerl.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="jacobian='autograd' is read by gradnorm"):
        load_config("default", ["objectives.jacobian=autograd"])  # balancer=static
    with pytest.raises(ConfigError) as err:
        load_config("default", ["objectives.balancer=mgda", "objectives.jacobian=vmap"])
    assert "'objectives.jacobian': got 'vmap'; allowed values are 'auto' or 'autograd'" in str(
        err.value
    )
