from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from steerl.config import ConfigError, LossConfig
from steerl.losses import (
    LOSSES,
    GRPOLoss,
    LossInputs,
    build_policy_loss,
    global_counts,
    kl_k3,
    sft_loss,
)

F64 = torch.float64


def _inputs(logprobs, old, adv, mask, total=None, ref=None) -> LossInputs:
    mask = torch.as_tensor(mask, dtype=F64)
    return LossInputs(
        logprobs=logprobs,
        old_logprobs=torch.as_tensor(old, dtype=F64),
        advantages=torch.as_tensor(adv, dtype=F64),
        mask=mask,
        total_tokens=float(mask.sum()) if total is None else total,
        total_sequences=float(mask.shape[0]),
        ref_logprobs=None if ref is None else torch.as_tensor(ref, dtype=F64),
    )


def test_registry_and_build():
    assert "grpo" in LOSSES and "sft" in LOSSES
    assert isinstance(build_policy_loss(LossConfig()), GRPOLoss)
    with pytest.raises(ConfigError, match="loss.name"):
        build_policy_loss(LossConfig(name="no-such-loss"))


def test_grpo_on_policy_loss_and_gradient_by_hand():
    """epochs=1: ratio is exactly 1, so L = -sum(mask * A) / tokens, dL/dlogp = -A mask / tokens."""
    lp_values = torch.tensor(
        [[-0.5, -1.0, -2.0, -0.1], [-0.3, -0.7, -9.0, -9.0], [-1.5, -0.2, -0.4, -9.0]], dtype=F64
    )
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]], dtype=F64)
    adv = torch.tensor([1.5, -0.5, 0.25], dtype=F64)
    lp = lp_values.clone().requires_grad_(True)
    loss, metrics = GRPOLoss(LossConfig())(_inputs(lp, lp_values, adv, mask))
    tokens = 9.0
    want = -(1.5 * 4 - 0.5 * 2 + 0.25 * 3) / tokens
    assert loss.dtype == F64
    assert loss.item() == pytest.approx(want, abs=1e-15)
    loss.backward()
    torch.testing.assert_close(lp.grad, -adv[:, None] * mask / tokens, atol=1e-15, rtol=0)
    assert metrics["clip_fraction"].item() == 0.0
    assert metrics["pg_loss"].item() == pytest.approx(want, abs=1e-15)
    assert "kl" not in metrics


def test_grpo_clipped_branch_outside_the_range():
    """Ratios 1.5 and 0.5 with A = +-1 and clip (0.2, 0.28): the pessimistic term is taken."""
    cfg = LossConfig(clip_low=0.2, clip_high=0.28)
    ratios = torch.tensor([[1.5, 0.5, 1.5, 0.5, 1.1]], dtype=F64)
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0, 2.0]], dtype=F64)  # per-token advantages
    old = torch.full_like(ratios, -1.0)
    lp = (old + ratios.log()).requires_grad_(True)
    mask = torch.ones_like(ratios)
    loss, metrics = GRPOLoss(cfg)(_inputs(lp, old, adv, mask))
    # per token: min(r A, clip(r) A)
    #   r=1.5, A=+1: min(1.5, 1.28)  = 1.28   clipped, no gradient
    #   r=0.5, A=+1: min(0.5, 0.8)   = 0.5    unclipped, gradient -r A
    #   r=1.5, A=-1: min(-1.5,-1.28) = -1.5   unclipped
    #   r=0.5, A=-1: min(-0.5,-0.8)  = -0.8   clipped, no gradient
    #   r=1.1, A=+2: inside the range = 2.2
    terms = [1.28, 0.5, -1.5, -0.8, 2.2]
    assert loss.item() == pytest.approx(-sum(terms) / 5, abs=1e-12)
    loss.backward()
    # d(-r A)/dlogp = -r A (r = exp(logp - old)); zero on the clipped tokens
    want = torch.tensor([[0.0, -0.5, 1.5, 0.0, -2.2]], dtype=F64) / 5
    torch.testing.assert_close(lp.grad, want, atol=1e-12, rtol=0)
    assert metrics["clip_fraction"].item() == pytest.approx(2 / 5)


def test_grpo_sequence_advantages_broadcast_over_tokens():
    old = torch.tensor([[-1.0, -2.0], [-0.5, -0.5]], dtype=F64)
    lp = (old + torch.tensor([[0.3, -0.4], [0.1, 0.0]], dtype=F64)).requires_grad_(True)
    mask = torch.tensor([[1, 1], [1, 0]], dtype=F64)
    seq = GRPOLoss(LossConfig())(_inputs(lp, old, [2.0, -1.0], mask))[0]
    tok = GRPOLoss(LossConfig())(_inputs(lp, old, [[2.0, 2.0], [-1.0, -1.0]], mask))[0]
    assert seq.item() == tok.item()


def test_kl_penalty_adds_beta_times_k3():
    old = torch.tensor([[-1.0, -2.0, -0.5]], dtype=F64)
    ref = torch.tensor([[-1.2, -1.5, -0.5]], dtype=F64)
    mask = torch.tensor([[1, 1, 0]], dtype=F64)
    adv = torch.tensor([0.7], dtype=F64)
    base, m0 = GRPOLoss(LossConfig())(_inputs(old.clone(), old, adv, mask, ref=ref))
    pen, m1 = GRPOLoss(LossConfig(kl_coef=0.1))(_inputs(old.clone(), old, adv, mask, ref=ref))
    d = ref - old
    kl = ((d.exp() - d - 1) * mask).sum() / 2
    assert m0["kl"].item() == pytest.approx(kl.item())  # logged even when beta = 0
    assert pen.item() == pytest.approx(base.item() + 0.1 * kl.item(), abs=1e-14)
    assert m1["pg_loss"].item() == pytest.approx(base.item())


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(-20, 0, allow_nan=False), st.floats(-20, 0, allow_nan=False)),
        min_size=1,
        max_size=20,
    )
)
def test_k3_is_non_negative_and_zero_when_equal(pairs):
    lp = torch.tensor([p[0] for p in pairs], dtype=F64)
    ref = torch.tensor([p[1] for p in pairs], dtype=F64)
    k3 = kl_k3(lp, ref)
    assert (k3 >= 0).all()
    assert (kl_k3(lp, lp) == 0).all()
    close = (lp - ref).abs() < 1e-3
    assert (k3[close] < 1e-6).all()


def test_k3_is_unbiased_for_kl():
    """E_{x~pi}[k3] = KL(pi || ref) for categorical distributions."""
    g = torch.Generator().manual_seed(0)
    pi = torch.randn(6, generator=g, dtype=F64).log_softmax(-1)
    ref = torch.randn(6, generator=g, dtype=F64).log_softmax(-1)
    expected_k3 = (pi.exp() * kl_k3(pi, ref)).sum()
    kl = (pi.exp() * (pi - ref)).sum()
    assert expected_k3.item() == pytest.approx(kl.item(), abs=1e-12)


@pytest.mark.parametrize("micro", [1, 2, 3, 5])
def test_micro_batches_sum_to_the_full_batch_loss(micro):
    g = torch.Generator().manual_seed(0)
    n, t = 5, 6
    old = -torch.rand(n, t, generator=g, dtype=F64) * 3
    lp_values = old + 0.3 * torch.randn(n, t, generator=g, dtype=F64)
    ref = old + 0.2 * torch.randn(n, t, generator=g, dtype=F64)
    lengths = torch.tensor([6, 1, 4, 3, 5])
    mask = (torch.arange(t)[None] < lengths[:, None]).to(F64)
    adv = torch.randn(n, generator=g, dtype=F64)
    loss_fn = GRPOLoss(LossConfig(kl_coef=0.05))
    total = float(mask.sum())

    lp_full = lp_values.clone().requires_grad_(True)
    full, _ = loss_fn(_inputs(lp_full, old, adv, mask, total=total, ref=ref))
    full.backward()

    lp_mb = lp_values.clone().requires_grad_(True)
    parts = []
    for i in range(0, n, micro):
        s = slice(i, i + micro)
        part, _ = loss_fn(_inputs(lp_mb[s], old[s], adv[s], mask[s], total=total, ref=ref[s]))
        part.backward()
        parts.append(part.item())
    assert math.fsum(parts) == pytest.approx(full.item(), abs=1e-14)
    torch.testing.assert_close(lp_mb.grad, lp_full.grad, atol=1e-15, rtol=0)


def test_sft_loss():
    lp = torch.tensor([[-0.5, -1.0, -3.0], [-2.0, -9.0, -9.0]], dtype=F64, requires_grad=True)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=F64)
    loss, metrics = sft_loss(lp, mask, 4.0)
    assert loss.item() == pytest.approx((0.5 + 1.0 + 3.0 + 2.0) / 4)
    assert metrics["nll"].item() == loss.item()
    loss.backward()
    torch.testing.assert_close(lp.grad, -mask / 4)
    # micro-batches with the global count add up
    a, _ = sft_loss(lp[:1], mask[:1], 4.0)
    b, _ = sft_loss(lp[1:], mask[1:], 4.0)
    assert (a + b).item() == pytest.approx(loss.item())


def test_default_loss_is_the_policy_gradient_family_and_grpo_an_alias():
    assert LossConfig().name == "pg"
    assert type(build_policy_loss(LossConfig(name="grpo"))) is type(build_policy_loss(LossConfig()))


def test_all_truncated_batch_with_mask_truncated_gives_zero_not_nan():
    cfg = LossConfig(preset="dapo")
    lp = torch.tensor([[-1.0, -2.0]], dtype=F64, requires_grad=True)
    mask = torch.ones(1, 2, dtype=F64)
    trunc = torch.tensor([True])
    tokens, seqs = global_counts(mask, trunc, True)
    assert (tokens, seqs) == (1.0, 1.0)  # clamped: no division by zero
    x = LossInputs(lp, lp.detach(), torch.tensor([1.0], dtype=F64), mask, tokens, seqs)
    x.truncated = trunc
    loss, _ = GRPOLoss(cfg)(x)
    loss.backward()
    assert loss.item() == 0.0 and (lp.grad == 0).all()
