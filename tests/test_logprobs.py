"""Memory-lean log-probabilities: the chunked LM head against a full-logits forward."""

from __future__ import annotations

import pytest
import torch

from steerl import logprobs as lp_mod
from steerl.logprobs import completion_logprobs, head_logprobs
from steerl.rollout import encode_prompts, generate

PROMPTS = ["1+2=", "123+456=", "7=", "98+1=", "5+55=", "4321+8765="]


def _batch(policy):
    ids, mask = encode_prompts(policy.tokenizer, PROMPTS, policy.device)
    tok = policy.tokenizer
    return generate(
        policy.model,
        ids,
        mask,
        max_new_tokens=8,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        generator=torch.Generator().manual_seed(0),
    )


def _values_and_grads(model, batch, monkeypatch, lean: bool):
    """(logprobs, entropy, parameter gradients) of a loss that uses both with weights."""
    if not lean:
        monkeypatch.setattr(lp_mod, "_decoder_and_head", lambda m: None)
    model.zero_grad(set_to_none=True)
    lp, ent = completion_logprobs(model, batch, with_entropy=True, entropy_grad=True)
    monkeypatch.undo()
    w = torch.randn(lp.shape, generator=torch.Generator().manual_seed(1))
    m = batch.completion_mask.float()
    ((lp * w * m).sum() + (ent * w.flip(0) * m).sum()).backward()
    return lp.detach(), ent.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_chunked_head_matches_full_logits_values_and_gradients(tiny_policy, monkeypatch, arch):
    policy = tiny_policy(arch, scale=0.5)  # eval mode: GPT-2's dropout would differ per call
    batch = _batch(policy)
    monkeypatch.setattr(lp_mod, "CHUNK_ELEMENTS", 3 * len(policy.tokenizer))  # many chunks
    lean = _values_and_grads(policy.model, batch, monkeypatch, lean=True)
    full = _values_and_grads(policy.model, batch, monkeypatch, lean=False)
    torch.testing.assert_close(lean[0], full[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lean[1], full[1], atol=1e-5, rtol=1e-5)
    for a, b in zip(lean[2], full[2]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_lean_path_never_calls_the_full_model_forward(tiny_policy, monkeypatch):
    policy = tiny_policy(scale=0.5)
    batch = _batch(policy)

    def boom(*a, **k):
        raise AssertionError("full forward: (N, T, V) logits materialised")

    monkeypatch.setattr(type(policy.model), "forward", boom)
    lp, ent = completion_logprobs(policy.model, batch, with_entropy=True)
    assert lp.shape == batch.completion_ids.shape and not ent.requires_grad


def test_head_logprobs_chunks_agree_with_one_chunk():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 7, 16, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 16, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(50, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 50, (3, 7), generator=g)
    logits = torch.nn.functional.linear(hidden, weight, bias)
    logp = logits.log_softmax(-1)
    want_lp = logp.gather(-1, targets[..., None]).squeeze(-1)
    want_ent = -(logp.exp() * logp).sum(-1)
    got_lp, got_ent = head_logprobs(hidden, weight, bias, targets, chunk_elements=50 * 4)
    torch.testing.assert_close(got_lp, want_lp.float())
    torch.testing.assert_close(got_ent, want_ent.float())
    # gradients (float64 reference vs the chunked backward)
    for f in (lambda a, b: (a * 1.3).sum() - b.sum(), lambda a, b: a.sum(), lambda a, b: b.sum()):
        grads_want = torch.autograd.grad(
            f(want_lp, want_ent), (hidden, weight, bias), retain_graph=True
        )
        lp_, ent_ = head_logprobs(hidden, weight, bias, targets, chunk_elements=50 * 4)
        grads_got = torch.autograd.grad(f(lp_, ent_), (hidden, weight, bias))
        for a, b in zip(grads_got, grads_want):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_gradient_checkpointing_gives_the_same_gradients(tiny_model_config):
    from steerl.models import load_policy

    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        policy = load_policy(tiny_model_config(gradient_checkpointing=ckpt))
        policy.model.train()
        on = getattr(policy.model, "is_activation_checkpointing", None)
        assert (on if on is not None else policy.model.is_gradient_checkpointing) == ckpt
        batch = _batch(policy)
        lp, _ = completion_logprobs(policy.model, batch)
        (lp * batch.completion_mask).sum().backward()
        grads.append([p.grad.clone() for p in policy.model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_head_gradient_added_in_place_equals_autograd_accumulation(monkeypatch):
    """Micro-batched accumulation: with ``head_grad_into_param`` the head's weight gradient
    goes straight into ``weight.grad`` (autograd gets None) and the sums are the same."""
    g = torch.Generator().manual_seed(0)
    weight0 = torch.randn(50, 16, generator=g, dtype=torch.float64)
    batches = [
        (torch.randn(2, 5, 16, generator=g, dtype=torch.float64), torch.randint(0, 50, (2, 5)))
        for _ in range(3)
    ]

    allocated = []
    zeros_like = torch.zeros_like

    def counting_zeros_like(t, *a, **k):
        allocated.append(t.shape)
        return zeros_like(t, *a, **k)

    monkeypatch.setattr(torch, "zeros_like", counting_zeros_like)

    def accumulate(into: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        allocated.clear()
        weight = weight0.clone().requires_grad_(True)
        seen = []
        for hidden, targets in batches:
            hidden = hidden.clone().requires_grad_(True)
            with lp_mod.head_grad_into_param(into):
                lp, ent = head_logprobs(hidden, weight, None, targets, chunk_elements=50 * 3)
            before = None if weight.grad is None else weight.grad.data_ptr()
            (lp.sum() - 0.5 * ent.sum()).backward()
            if before is not None:  # the same buffer, added to (never replaced) either way
                assert weight.grad.data_ptr() == before
            seen.append(hidden.grad)
        # head-sized gradient buffers: the first micro-batch's only, or one per micro-batch
        assert allocated.count(weight.shape) == (1 if into else len(batches))
        return weight.grad, seen

    (w_in, h_in), (w_ag, h_ag) = accumulate(True), accumulate(False)
    torch.testing.assert_close(w_in, w_ag)
    for a, b in zip(h_in, h_ag):
        torch.testing.assert_close(a, b)
    # torch.autograd.grad outside the context still gets the head's gradient returned
    weight = weight0.clone().requires_grad_(True)
    hidden, targets = batches[0]
    lp, _ = head_logprobs(hidden, weight, None, targets)
    (gw,) = torch.autograd.grad(lp.sum(), weight)
    assert gw.abs().sum() > 0 and weight.grad is None
