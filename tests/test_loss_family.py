"""The clipped policy-gradient family: presets, formulas, aggregation, KL, advantages, wiring."""

from __future__ import annotations

import math

import pytest
import torch
import yaml

from steerl.config import LOSS_PRESETS, PRESET_KEYS, ConfigError, LossConfig, load_config
from steerl.losses import (
    LOSS_TERMS,
    LOSSES,
    LossInputs,
    PolicyGradientLoss,
    build_aux_terms,
    build_loss_terms,
    build_policy_loss,
    global_counts,
    kl_k1,
    kl_k2,
    kl_k3,
    loss_requirements,
)
from steerl.objectives.advantages import compute_advantages

F64 = torch.float64
NAN = float("nan")
AGGREGATIONS = [
    "token-mean",
    "seq-mean-token-mean",
    "seq-mean-token-sum",
    "seq-mean-token-sum-norm",
]


def _t(x) -> torch.Tensor:
    return torch.as_tensor(x, dtype=F64)


def _inputs(lp, old, adv, mask, *, ref=None, truncated=None, entropy=None, max_len=None, cfg=None):
    mask = _t(mask)
    trunc = None if truncated is None else torch.as_tensor(truncated, dtype=torch.bool)
    tokens, seqs = global_counts(mask, trunc, bool(cfg and cfg.mask_truncated))
    return LossInputs(
        logprobs=lp,
        old_logprobs=_t(old),
        advantages=_t(adv),
        mask=mask,
        total_tokens=tokens,
        total_sequences=seqs,
        ref_logprobs=None if ref is None else _t(ref),
        entropy=entropy,
        max_len=max_len,
        truncated=trunc,
    )


def _logprobs_with_ratios(ratios, old=-1.0):
    """Leaf logprobs whose ratio to ``old`` is ``ratios`` (pad entries: ratio 1)."""
    r = _t(ratios)
    old_t = torch.full_like(r, old)
    return (old_t + r.log()).requires_grad_(True), old_t


# --------------------------------------------------------------------------- presets
def test_presets_fill_unset_keys_and_explicit_keys_win(tmp_path):
    for name, values in LOSS_PRESETS.items():
        cfg = LossConfig(preset=name)
        assert {k: getattr(cfg, k) for k in PRESET_KEYS} == values, name
    dapo = LossConfig(preset="dapo", clip_high=0.35, aggregation="seq-mean-token-mean")
    assert (dapo.clip_low, dapo.clip_high, dapo.aggregation) == (0.2, 0.35, "seq-mean-token-mean")
    assert dapo.mask_truncated is True  # still from the preset
    # no preset: the field defaults (steerl's historical GRPO)
    plain = LossConfig()
    assert (plain.aggregation, plain.kl_coef, plain.clip_high) == ("token-mean", 0.0, 0.2)
    # through a recipe and overrides: keys in the recipe file are explicit too
    recipe = tmp_path / "r.yaml"
    recipe.write_text("loss: {preset: dapo, clip_low: 0.1}\n")
    cfg = load_config(recipe, ["loss.preset=gspo", "loss.clip_high=5e-4"]).loss
    assert (cfg.ratio_level, cfg.clip_low, cfg.clip_high) == ("sequence", 0.1, 5e-4)


def test_preset_table_values():
    p = LOSS_PRESETS
    assert (p["dapo"]["clip_low"], p["dapo"]["clip_high"], p["dapo"]["mask_truncated"]) == (
        0.2,
        0.28,
        True,
    )
    assert p["dr_grpo"]["aggregation"] == "seq-mean-token-sum-norm"
    assert p["dr_grpo"]["advantage"] == "group_mean"
    assert (p["gspo"]["ratio_level"], p["gspo"]["clip_low"], p["gspo"]["clip_high"]) == (
        "sequence",
        3e-4,
        4e-4,
    )
    assert p["cispo"]["surrogate"] == "cispo" and p["cispo"]["clip_low"] == 1.0
    assert p["ppo"]["epochs"] > 1 and p["ppo"]["clip_c"] == 3.0
    assert p["grpo"]["kl_coef"] == 0.04 and p["grpo"]["aggregation"] == "seq-mean-token-mean"


def test_kl_in_reward_defaults_to_k1_unless_set():
    assert LossConfig(kl_in="reward").kl_estimator == "k1"
    assert LossConfig(kl_in="reward", kl_estimator="k3").kl_estimator == "k3"
    assert LossConfig(preset="grpo", kl_in="reward").kl_estimator == "k1"
    assert LossConfig().kl_estimator == "k3"


def test_saved_config_keeps_only_keys_that_differ_so_presets_can_be_switched(tmp_path):
    cfg = load_config(None, ["loss.preset=dapo", "loss.clip_high=0.3"])
    saved = yaml.safe_load(cfg.to_yaml())
    assert saved["loss"]["preset"] == "dapo" and saved["loss"]["clip_high"] == 0.3
    assert "clip_low" not in saved["loss"] and "mask_truncated" not in saved["loss"]
    (tmp_path / "config.yaml").write_text(cfg.to_yaml())
    assert load_config(tmp_path / "config.yaml") == cfg  # round trip
    # resuming a run directory with another preset: the preset's keys follow it ...
    switched = load_config(tmp_path / "config.yaml", ["loss.preset=dr_grpo"]).loss
    assert switched.aggregation == "seq-mean-token-sum-norm" and switched.advantage == "group_mean"
    assert switched.clip_high == 0.3  # ... except the ones set explicitly
    # a run without a preset switches too
    (tmp_path / "plain.yaml").write_text(load_config(None, []).to_yaml())
    assert load_config(tmp_path / "plain.yaml", ["loss.preset=gspo"]).loss.clip_low == 3e-4


# --------------------------------------------------------------------------- incompatible
@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        (["loss.preset=gspo", "loss.aggregation=token-mean"], ["ratio_level", "aggregation"]),
        (["loss.ratio_level=sequence"], ["ratio_level", "aggregation"]),
        (["loss.preset=cispo", "loss.clip_c=3"], ["cispo", "clip_c"]),
        (
            [
                "loss.surrogate=cispo",
                "loss.ratio_level=sequence",
                "loss.aggregation=seq-mean-token-mean",
            ],
            ["cispo", "ratio_level"],
        ),
        (
            ["loss.aux=[{name: dpo, args: {variant: hinge, label_smoothing: 0.1}}]"],
            ["label_smoothing", "variant"],
        ),
        (["loss.aux=[{name: sft}, {name: sft}]"], ["aux", "sft"]),
    ],
)
def test_incompatible_combinations_name_both_keys(overrides, names):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    msg = str(info.value)
    assert "loss" in msg
    for n in names:
        assert n in msg, (n, msg)


def test_bad_values_name_the_key():
    for override, key in [
        ("loss.clip_c=0.5", "loss.clip_c"),
        ("loss.preset=trpo", "loss.preset"),
        ("loss.aggregation=seq-sum", "loss.aggregation"),
        ("loss.advantage=gae", "loss.advantage"),
        ("loss.kl_estimator=k4", "loss.kl_estimator"),
    ]:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load_config(None, [override])


def test_cross_section_requirements_name_both_keys():
    cfg = load_config(
        None,
        ["rollout.group_size=1", "curriculum.drop_zero_variance=false", "loss.advantage=rloo"],
    )
    (msg,) = loss_requirements(cfg)
    assert "loss.advantage=rloo" in msg and "rollout.group_size" in msg
    cfg = load_config(None, ["loss.kl_coef=0.1", "model.reference=none"])
    (msg,) = loss_requirements(cfg)
    assert "loss.kl_coef" in msg and "model.reference=none" in msg
    cfg = load_config(None, ["loss.aux=[{name: dpo}]", "model.reference=none"])
    assert "dpo" in loss_requirements(cfg)[0]
    assert loss_requirements(load_config(None, ["loss.kl_in=reward"])) == []  # kl_coef=0: no-op


# --------------------------------------------------------------------------- formulas by hand
def test_grpo_preset_seq_mean_token_mean_with_k3_kl_by_hand():
    """Ratios r, advantages A = (1, -2); two sequences of 3 and 2 tokens; beta = 0.04."""
    cfg = LossConfig(preset="grpo")
    lp, old = _logprobs_with_ratios([[1.1, 0.7, 1.3], [0.9, 1.25, 1.0]])
    ref = _t([[-1.2, -0.9, -1.0], [-1.1, -1.3, -1.0]])
    mask = [[1, 1, 1], [1, 1, 0]]
    loss, m = PolicyGradientLoss(cfg)(_inputs(lp, old, [1.0, -2.0], mask, ref=ref))
    # min(rA, clip(r)A), clip to [0.8, 1.2]:
    #   seq 0 (A=1):  1.1, min(0.7, 0.8)=0.7, min(1.3, 1.2)=1.2 (clipped)
    #   seq 1 (A=-2): min(-1.8, -1.8)=-1.8, min(-2.5, -2.4)=-2.5
    pg = -((1.1 + 0.7 + 1.2) / 3 + (-1.8 - 2.5) / 2) / 2
    lpv = lp.detach()
    k3 = [
        [math.exp(a - b) - (a - b) - 1 for a, b in zip(ra, rb)]
        for ra, rb in zip(ref.tolist(), lpv.tolist())
    ]
    kl = ((k3[0][0] + k3[0][1] + k3[0][2]) / 3 + (k3[1][0] + k3[1][1]) / 2) / 2
    assert m["pg_loss"].item() == pytest.approx(pg, abs=1e-12)
    assert m["kl"].item() == pytest.approx(kl, abs=1e-12)
    assert loss.item() == pytest.approx(pg + 0.04 * kl, abs=1e-12)
    assert m["clip_fraction"].item() == pytest.approx(1 / 5)
    loss.backward()
    # d/dlogp: -r A w (unclipped) or 0 (clipped), w = 1 / (N L_i); k3' = 1 - exp(ref - logp)
    w = _t([[1 / 6] * 3, [1 / 4] * 2 + [0]])
    pg_grad = _t([[-1.1, -0.7, 0.0], [0.9 * 2, 1.25 * 2, 0.0]])
    kl_grad = 1 - (ref - lpv).exp()
    torch.testing.assert_close(lp.grad, (pg_grad + 0.04 * kl_grad) * w, atol=1e-12, rtol=0)


def test_dapo_preset_clip_higher_token_mean_and_overlong_filtering_by_hand():
    cfg = LossConfig(preset="dapo")
    lp, old = _logprobs_with_ratios([[1.3, 1.25, 0.7], [1.5, 0.5, 1.0]])
    mask = [[1, 1, 1], [1, 1, 0]]
    x = _inputs(lp, old, [1.0, -1.0], mask, truncated=[False, True], cfg=cfg)
    assert (x.total_tokens, x.total_sequences) == (3.0, 1.0)  # the truncated row counts nowhere
    loss, _ = PolicyGradientLoss(cfg)(x)
    # clip to [0.8, 1.28]: min(1.3, 1.28)=1.28 (clipped), 1.25, min(0.7, 0.8)=0.7
    assert loss.item() == pytest.approx(-(1.28 + 1.25 + 0.7) / 3, abs=1e-12)
    loss.backward()
    want = _t([[0.0, -1.25, -0.7], [0.0, 0.0, 0.0]]) / 3
    torch.testing.assert_close(lp.grad, want, atol=1e-12, rtol=0)
    # without mask_truncated the truncated row counts (and 0.2 clips its 0.5: no gradient)
    keep = LossConfig(preset="dapo", mask_truncated=False)
    lp2, _ = _logprobs_with_ratios([[1.3, 1.25, 0.7], [1.5, 0.5, 1.0]])
    x2 = _inputs(lp2, old, [1.0, -1.0], mask, truncated=[False, True], cfg=keep)
    loss2, _ = PolicyGradientLoss(keep)(x2)
    assert loss2.item() == pytest.approx(-(1.28 + 1.25 + 0.7 - 1.5 - 0.8) / 5, abs=1e-12)


def test_dr_grpo_preset_sums_over_a_constant_by_hand():
    cfg = LossConfig(preset="dr_grpo")
    lp, old = _logprobs_with_ratios([[1.0, 1.1, 1.0], [0.9, 1.0, 1.0]])
    mask = [[1, 1, 1], [1, 0, 0]]
    loss, _ = PolicyGradientLoss(cfg)(_inputs(lp, old, [0.5, -1.0], mask, max_len=4.0))
    # sum of min(rA, clip(r)A) / (N * max_len) = (0.5 + 0.55 + 0.5 - 0.9) / (2 * 4)
    assert loss.item() == pytest.approx(-(0.5 + 0.55 + 0.5 - 0.9) / 8, abs=1e-12)
    loss.backward()
    want = _t([[-0.5, -0.55, -0.5], [0.9, 0, 0]]) / 8
    torch.testing.assert_close(lp.grad, want, atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="max_len"):
        PolicyGradientLoss(cfg)(_inputs(lp, old, [0.5, -1.0], mask))


def test_gspo_preset_sequence_ratio_by_hand():
    cfg = LossConfig(preset="gspo")
    log_r = _t([[1e-4, 5e-4, 3e-4], [-6e-4, -2e-4, 0.0]])
    old = torch.full_like(log_r, -1.0)
    lp = (old + log_r).requires_grad_(True)
    mask = [[1, 1, 1], [1, 1, 0]]
    loss, m = PolicyGradientLoss(cfg)(_inputs(lp, old, [1.0, -2.0], mask))
    s0 = math.exp(3e-4)  # exp(mean log r) of seq 0; seq 1: exp(-4e-4) = 0.9996
    # seq 0: s0 = 1.0003 inside [1 - 3e-4, 1 + 4e-4]; seq 1: s1 = 0.9996 below 0.9997 and
    # A < 0, so min(s A, clip(s) A) = clip(s) A = -2 * 0.9997 (clipped)
    assert loss.item() == pytest.approx(-(s0 * 1.0 + 0.9997 * -2.0) / 2, abs=1e-12)
    assert m["clip_fraction"].item() == pytest.approx(2 / 5)  # both tokens of seq 1
    loss.backward()
    # d(-s0 / 2)/dlogp_t = -s0 / 2 * 1/3 for each token of seq 0; nothing for seq 1
    want = _t([[-s0 / 6] * 3, [0.0, 0.0, 0.0]])
    torch.testing.assert_close(lp.grad, want, atol=1e-12, rtol=0)


def test_cispo_preset_stop_gradient_clipped_weight_by_hand():
    cfg = LossConfig(preset="cispo")
    lp, old = _logprobs_with_ratios([[1.5, 0.5, 1.1]])
    loss, m = PolicyGradientLoss(cfg)(_inputs(lp, old, [2.0], [[1, 1, 1]]))
    w = [1.28, 0.5, 1.1]  # clip(r, 0, 1.28): no lower bound (clip_low=1)
    lpv = lp.detach()[0].tolist()
    assert loss.item() == pytest.approx(-sum(wi * 2.0 * li for wi, li in zip(w, lpv)) / 3)
    loss.backward()
    # every token keeps a gradient, even the clipped one (unlike PPO's clip)
    torch.testing.assert_close(lp.grad, -2.0 * _t([w]) / 3, atol=1e-12, rtol=0)
    assert m["clip_fraction"].item() == pytest.approx(1 / 3)


def test_ppo_preset_dual_clip_bounds_negative_advantages_by_hand():
    cfg = LossConfig(preset="ppo")
    assert cfg.epochs == 4 and cfg.clip_c == 3.0
    lp, old = _logprobs_with_ratios([[4.0, 2.0, 0.5]])
    loss, m = PolicyGradientLoss(cfg)(_inputs(lp, old, [-1.0], [[1, 1, 1]]))
    # A = -1: r=4: min(-4, -1.2) = -4 < c A = -3 -> -3 (dual clip, no gradient)
    #         r=2: min(-2, -1.2) = -2 (unclipped); r=0.5: min(-0.5, -0.8) = -0.8 (clipped)
    assert loss.item() == pytest.approx((3.0 + 2.0 + 0.8) / 3, abs=1e-12)
    assert m["dual_clip_fraction"].item() == pytest.approx(1 / 3)
    loss.backward()
    torch.testing.assert_close(lp.grad, _t([[0.0, 2.0, 0.0]]) / 3, atol=1e-12, rtol=0)
    # positive advantages are not dual-clipped
    lp, old = _logprobs_with_ratios([[4.0]])
    loss, _ = PolicyGradientLoss(cfg)(_inputs(lp, old, [1.0], [[1]]))
    assert loss.item() == pytest.approx(-1.2)


def test_entropy_bonus_uses_the_same_aggregation():
    cfg = LossConfig(aggregation="seq-mean-token-mean", entropy_coef=0.01)
    lp, old = _logprobs_with_ratios([[1.0, 1.0], [1.0, 1.0]])
    ent = _t([[2.0, 1.0], [0.5, 9.0]]).requires_grad_(True)
    x = _inputs(lp, old, [0.0, 0.0], [[1, 1], [1, 0]], entropy=ent)
    loss, m = PolicyGradientLoss(cfg)(x)
    assert m["entropy_bonus"].item() == pytest.approx((1.5 + 0.5) / 2)
    assert loss.item() == pytest.approx(-0.01 * 1.0, abs=1e-12)
    loss.backward()
    torch.testing.assert_close(ent.grad, -0.01 * _t([[0.25, 0.25], [0.5, 0.0]]), atol=1e-15, rtol=0)
    with pytest.raises(ValueError, match="entropy"):
        PolicyGradientLoss(cfg)(_inputs(lp, old, [0.0, 0.0], [[1, 1], [1, 0]]))


def test_kl_in_reward_is_not_added_to_the_loss():
    lp, old = _logprobs_with_ratios([[1.0, 1.0]])
    ref = _t([[-1.5, -0.2]])
    cfg = LossConfig(kl_in="reward", kl_coef=0.5)
    loss, m = PolicyGradientLoss(cfg)(_inputs(lp, old, [1.0], [[1, 1]], ref=ref))
    assert loss.item() == pytest.approx(-1.0)
    assert m["kl"].item() == pytest.approx(((-1 + 1.5) + (-1 + 0.2)) / 2)  # k1, logged only


# --------------------------------------------------------------------------- micro-batches
def _random_batch(n=6, t=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(n, t, generator=g, dtype=F64) * 3
    lp = old + 0.3 * torch.randn(n, t, generator=g, dtype=F64)
    ref = old + 0.2 * torch.randn(n, t, generator=g, dtype=F64)
    ent = torch.rand(n, t, generator=g, dtype=F64) * 2
    lengths = torch.tensor([5, 1, 4, 3, 5, 2])[:n]
    mask = (torch.arange(t)[None] < lengths[:, None]).to(F64)
    adv = torch.randn(n, generator=g, dtype=F64)
    truncated = lengths == t
    return lp, old, ref, ent, mask, adv, truncated


_COMBOS = [
    *[{"preset": p} for p in LOSS_PRESETS],
    *[
        {"aggregation": a, "kl_coef": 0.05, "kl_estimator": k, "entropy_coef": 0.01, "clip_c": 3}
        for a, k in zip(AGGREGATIONS, ["k1", "k2", "k3", "k3"])
    ],
    *[{"aggregation": a, "mask_truncated": True, "surrogate": "cispo"} for a in AGGREGATIONS],
]


@pytest.mark.parametrize("keys", _COMBOS, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()))
def test_micro_batches_sum_to_the_full_batch_loss_and_gradient(keys):
    cfg = LossConfig(**keys)
    loss_fn = PolicyGradientLoss(cfg)
    lp_values, old, ref, ent_values, mask, adv, trunc = _random_batch()
    # epochs > 1 style: ratios away from 1, so clipping is exercised
    tokens, seqs = global_counts(mask, trunc, cfg.mask_truncated)

    def run(micro):
        lp = lp_values.clone().requires_grad_(True)
        ent = ent_values.clone().requires_grad_(True)
        parts = []
        for i in range(0, lp.shape[0], micro):
            s = slice(i, i + micro)
            x = LossInputs(
                lp[s], old[s], adv[s], mask[s], tokens, seqs, ref[s], ent[s], 5.0, trunc[s]
            )
            part, _ = loss_fn(x)
            part.backward()
            parts.append(part.item())
        return math.fsum(parts), lp.grad, ent.grad

    full, g_full, e_full = run(6)
    for micro in (1, 2, 4):
        total, g, e = run(micro)
        assert total == pytest.approx(full, abs=1e-13)
        torch.testing.assert_close(g, g_full, atol=1e-14, rtol=0)
        if e_full is not None:
            torch.testing.assert_close(e, e_full, atol=1e-14, rtol=0)


# --------------------------------------------------------------------------- length bias
@pytest.mark.parametrize(
    ("aggregation", "ratio"),
    [
        ("token-mean", 3.0),  # every token weighs 1/8: long 6/8, short 2/8
        ("seq-mean-token-mean", 1.0),  # every sequence weighs 1/2 in total
        ("seq-mean-token-sum", 3.0),  # every token weighs 1/N
        ("seq-mean-token-sum-norm", 3.0),  # every token weighs 1/(N T_max)
    ],
)
def test_length_bias_of_the_aggregation_modes(aggregation, ratio):
    """One long (6 tokens) and one short (2 tokens) sequence, equal advantage +1, on-policy."""
    cfg = LossConfig(aggregation=aggregation)
    lp_values = torch.full((2, 6), -1.0, dtype=F64)
    mask = [[1] * 6, [1, 1, 0, 0, 0, 0]]
    lp = lp_values.clone().requires_grad_(True)
    loss, _ = PolicyGradientLoss(cfg)(_inputs(lp, lp_values, [1.0, 1.0], mask, max_len=8.0))
    loss.backward()
    weight = -lp.grad.sum(-1)  # total gradient weight each sequence's log-likelihood gets
    assert (weight > 0).all()
    assert (weight[0] / weight[1]).item() == pytest.approx(ratio)
    per_token = -lp.grad[:, 0]
    if aggregation == "seq-mean-token-mean":  # a short sequence's tokens weigh more
        assert (per_token[1] / per_token[0]).item() == pytest.approx(3.0)


# --------------------------------------------------------------------------- KL estimators
def test_kl_estimators_on_known_distributions():
    """Convention: log r = log ref(x) - log pi(x), x ~ pi; KL = KL(pi || ref)."""
    g = torch.Generator().manual_seed(1)
    pi = torch.randn(8, generator=g, dtype=F64).log_softmax(-1)
    ref = (pi + 0.3 * torch.randn(8, generator=g, dtype=F64)).log_softmax(-1)
    p = pi.exp()
    kl = (p * (pi - ref)).sum()
    log_r = ref - pi
    k1, k2, k3 = kl_k1(pi, ref), kl_k2(pi, ref), kl_k3(pi, ref)
    torch.testing.assert_close(k1, -log_r)
    torch.testing.assert_close(k2, 0.5 * log_r**2)
    torch.testing.assert_close(k3, log_r.exp() - 1 - log_r)
    assert (k1 < 0).any()  # k1 takes both signs ...
    assert (p * k1).sum().item() == pytest.approx(kl.item(), abs=1e-12)  # ... and is unbiased
    assert (k3 >= 0).all()
    assert (p * k3).sum().item() == pytest.approx(kl.item(), abs=1e-12)  # unbiased, >= 0
    assert (k2 >= 0).all()
    # k2 is biased, but second-order close for nearby distributions
    assert (p * k2).sum().item() != pytest.approx(kl.item(), abs=1e-6)
    assert (p * k2).sum().item() == pytest.approx(kl.item(), rel=0.2)


def test_k2_gradient_matches_the_true_kl_gradient_on_policy():
    """E_pi[grad k2] = grad KL(pi_theta || ref) for samples from pi (the reason to use k2)."""
    g = torch.Generator().manual_seed(2)
    theta = torch.randn(5, generator=g, dtype=F64, requires_grad=True)
    ref = torch.randn(5, generator=g, dtype=F64).log_softmax(-1)
    logp = theta.log_softmax(-1)
    true = torch.autograd.grad((logp.exp() * (logp - ref)).sum(), theta, retain_graph=True)[0]
    # expectation over x ~ pi (weights detached: the samples do not move with theta)
    est = torch.autograd.grad((logp.exp().detach() * kl_k2(logp, ref)).sum(), theta)[0]
    torch.testing.assert_close(est, true, atol=1e-12, rtol=0)


# --------------------------------------------------------------------------- advantages
def test_advantage_estimators_by_hand():
    r = _t([1.0, 0.0, 0.0, 0.0, 2.0, NAN, 0.0, 1.0])
    # group_mean: r - mean of the scored
    gm = compute_advantages(r, 4, "group_mean")
    torch.testing.assert_close(gm, _t([0.75, -0.25, -0.25, -0.25, 1.0, 0.0, -1.0, 0.0]))
    # rloo: r_i - mean of the other scored ones: group 0: 1 - 0, 0 - 1/3; group 1: 2 - 0.5, ...
    rl = compute_advantages(r, 4, "rloo")
    want = _t([1.0, -1 / 3, -1 / 3, -1 / 3, 1.5, 0.0, -1.5, 0.0])
    torch.testing.assert_close(rl, want)
    # batch_std: group-centred, divided by the std of the 7 scored centred values
    bs = compute_advantages(r, 4, "batch_std", eps=0.0)
    centred = _t([0.75, -0.25, -0.25, -0.25, 1.0, -1.0, 0.0])
    torch.testing.assert_close(bs[[0, 1, 2, 3, 4, 6, 7]], centred / centred.std())
    assert bs[5] == 0
    # group_mean_std: GRPO
    gs = compute_advantages(r, 4, "group_mean_std", eps=0.0)
    torch.testing.assert_close(gs[:4], _t([1.5, -0.5, -0.5, -0.5]))


def test_advantages_zero_for_unscored_and_degenerate_groups():
    r = _t([NAN, NAN, 1.0, NAN, 0.5, 0.5])
    for est in ("group_mean_std", "group_mean", "batch_std", "rloo"):
        adv = compute_advantages(r, 3, est)
        assert not adv.isnan().any() and (adv == 0).all(), est
    with pytest.raises(ValueError, match="group_size"):
        compute_advantages(_t([1.0, 0.0]), 1, "rloo")


# --------------------------------------------------------------------------- registry
def test_registry_names_and_user_losses(tmp_path, monkeypatch):
    assert {"pg", "grpo", "sft", "dpo"} <= {e.name for e in LOSSES.entries()}
    assert {"sft", "dpo"} <= {e.name for e in LOSS_TERMS.entries()}
    assert LOSSES.get("grpo") is LOSSES.get("pg") is PolicyGradientLoss
    for entry in LOSSES.entries():  # every loss documents itself
        assert entry.description

    (tmp_path / "steerl_test_user_loss.py").write_text(
        "def plain(x):\n"
        "    return -(x.logprobs * x.mask).sum() / x.total_tokens, {}\n"
        "def with_cfg(x, cfg):\n"
        "    return cfg.entropy_coef * x.logprobs.sum(), {}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    lp, old = _logprobs_with_ratios([[1.0, 1.0]])
    x = _inputs(lp, old, [1.0], [[1, 1]])
    fn = build_policy_loss(LossConfig(name="steerl_test_user_loss:plain"))
    assert fn(x)[0].item() == pytest.approx(1.0)
    fn = build_policy_loss(LossConfig(name="steerl_test_user_loss:with_cfg", entropy_coef=0.5))
    assert fn(x)[0].item() == pytest.approx(-1.0)

    @LOSSES.register("steerl_test_double_pg")
    class DoublePG(PolicyGradientLoss):
        """Twice the policy-gradient loss (test)."""

        def __call__(self, x):
            loss, m = super().__call__(x)
            return 2 * loss, m

    assert isinstance(build_policy_loss(LossConfig(name="steerl_test_double_pg")), DoublePG)
    with pytest.raises(ConfigError, match="loss.aux"):
        build_policy_loss(LossConfig(name="sft"))


def test_build_loss_terms_names_and_coefficients():
    cfg = LossConfig(aux=[{"name": "sft", "coef": 0.2}, {"name": "dpo", "coef": 0.05}])
    terms = build_loss_terms(cfg)
    assert [(t.name, t.coef, t.inputs) for t in terms] == [
        ("policy", 1.0, "rollout"),
        ("sft", 0.2, "demonstrations"),
        ("dpo", 0.05, "pairs"),
    ]
    assert cfg.needs_reference and not LossConfig().needs_reference
    with pytest.raises(ConfigError, match=r"loss\.aux\.0\.name"):
        build_aux_terms(LossConfig(aux=[{"name": "no_such_term"}]))


# --------------------------------------------------------------------------- trainer wiring
def test_trainer_gradient_does_not_depend_on_micro_batch_size(tmp_path, tiny_config):
    """_policy_update with 1-row vs whole-batch micro-batches: the same gradient."""
    from steerl.rollout import encode_prompts, generate
    from steerl.trainer import Trainer

    cfg = tiny_config(
        "warmup.steps=0",
        "loss.preset=dr_grpo",
        "loss.mask_truncated=true",
        "loss.entropy_coef=0.01",
        "loss.kl_coef=0.1",
        "rollout.max_new_tokens=3",
    )
    trainer = Trainer(cfg, tmp_path)
    with torch.no_grad():  # make the reference differ from the policy
        for p in trainer.reference.parameters():
            p.add_(0.01 * torch.randn_like(p))
    texts = [p.text for p in trainer.task.train[:3] for _ in range(4)]
    ids, mask = encode_prompts(trainer.tokenizer, texts, trainer.device)
    batch = generate(
        trainer.model,
        ids,
        mask,
        max_new_tokens=3,
        eos_token_id=trainer.tokenizer.eos_token_id,
        pad_token_id=trainer.tokenizer.pad_token_id,
        generator=torch.Generator().manual_seed(0),
    )
    assert batch.truncated.any() and not batch.truncated.all()
    adv = torch.randn(12, generator=torch.Generator().manual_seed(1))
    grads = []
    # keep the weights; read the gradient the optimizer would step with
    trainer.optimizer.step = lambda: grads.append(
        [p.grad.clone() for p in trainer.model.parameters()]
    )
    for mbs in (1, 5, 256):
        trainer.cfg.loss.micro_batch_size = mbs
        trainer._policy_update(batch, adv)
    assert len(grads) == 3
    for other in grads[1:]:
        for a, b in zip(grads[0], other):
            torch.testing.assert_close(a, b, atol=2e-6, rtol=1e-4)


def test_trainer_kl_in_reward_rloo_and_aux_terms(tmp_path, tiny_config):
    from steerl.logging import read_metrics
    from steerl.trainer import Trainer

    varied = (
        "rewards=[{name: exact_match}, "
        "{name: format, alias: low_digit, args: {pattern: '[0-4]', mode: search}}]"
    )
    cfg = tiny_config(
        varied,
        "warmup.steps=0",
        "train.steps=2",
        "loss.kl_in=reward",
        "loss.kl_coef=0.05",
        "loss.advantage=rloo",
        "loss.micro_batch_size=6",  # rounded down to whole groups (4) for the aux terms
        "loss.aux=[{name: sft, coef: 0.1}, {name: dpo, coef: 0.1, args: {beta: 0.5}}]",
    )
    trainer = Trainer(cfg, tmp_path)
    assert trainer.reference is not None
    assert [t.name for t in trainer.aux_terms] == ["sft", "dpo"]
    assert [len(i) for i in trainer._micro_batches(16)] == [4, 4, 4, 4]
    trainer.train()
    rl = [r for r in read_metrics(tmp_path) if r.get("phase") == "rl"]
    updated = [r for r in rl if r.get("train/loss") is not None]
    assert updated
    assert all("train/kl_reward" in r for r in rl)  # the reward was shaped every step
    for r in updated:
        assert {"balancer/policy", "balancer/sft", "balancer/dpo"} <= set(r)
        assert r["train/sft/nll"] > 0
        assert -1e-6 <= r["train/dpo/accuracy"] <= 1 + 1e-6
        terms = r["train/pg_loss"] + 0.1 * r["train/sft/nll"] + 0.1 * r["train/dpo/loss"]
        assert r["train/loss"] == pytest.approx(terms, rel=1e-5, abs=1e-6)


def test_trainer_rejects_missing_reference(tmp_path, tiny_config):
    from steerl.trainer import Trainer

    with pytest.raises(ConfigError, match="model.reference=none"):
        Trainer(tiny_config("loss.kl_coef=0.1", "model.reference=none"), tmp_path)


def test_reference_is_the_warmed_up_policy_and_resumes_exactly(tmp_path, tiny_config):
    """With a warm-up, KL is measured against the policy RL starts from, across restarts."""
    from safetensors.torch import load_file

    from steerl.logging import read_metrics
    from steerl.trainer import REFERENCE_FILE, Callback, Trainer

    class AfterWarmup(Callback):
        def on_step_end(self, trainer, step, metrics):
            if step == trainer.cfg.warmup.steps:
                self.weights = {k: v.clone() for k, v in trainer.model.state_dict().items()}

    varied = (
        "rewards=[{name: exact_match}, "
        "{name: format, alias: low_digit, args: {pattern: '[0-4]', mode: search}}]"
    )
    # the default recipe sets kl_coef: 0 explicitly, so the preset does not fill it
    extra = (varied, "loss.preset=grpo", "loss.kl_coef=0.04", "train.save_every=1", "optim.lr=1e-2")
    snap = AfterWarmup()
    run_a = Trainer(tiny_config(*extra), tmp_path / "a", callbacks=[snap])
    run_a.train()
    ref = run_a.reference.state_dict()
    assert all(torch.equal(ref[k], snap.weights[k]) for k in ref)
    saved = load_file(tmp_path / "a" / REFERENCE_FILE)
    assert all(torch.equal(saved[k], ref[k]) for k in saved)
    assert any(not torch.equal(v, run_a.model.state_dict()[k]) for k, v in ref.items())

    Trainer(tiny_config(*extra, "train.stop_after=5"), tmp_path / "b").train()
    Trainer(tiny_config(*extra), tmp_path / "b").train()  # the step_3 boundary is pruned by now

    def after(run):
        return [
            {k: v for k, v in r.items() if not k.startswith("time/")}
            for r in read_metrics(tmp_path / run)
            if r["step"] > 5
        ]

    assert after("b") == after("a") and any("train/kl" in r for r in after("a"))
