"""Balancers and reward combiners wired into the trainer: short runs on the tiny model."""

from __future__ import annotations

import json
import math

import pytest

from steerl.logging import read_metrics
from steerl.trainer import Trainer

#: Two rewards that vary on an untrained model, so groups keep a signal.
TWO_REWARDS = [
    "rewards=[{name: format, args: {pattern: '\\d+'}}, "
    "{name: length_penalty, alias: short, args: {mode: linear, target: 2, coef: 0.1}}]",
    "curriculum.drop_zero_variance=false",
]
#: Two loss terms: the policy loss and an SFT term on the reference answers.
TWO_TERMS = ["loss.aux=[{name: sft, coef: 0.1}]"]


@pytest.mark.parametrize(
    "balancer",
    [
        "static",
        "uncertainty",
        "dwa",
        "famo",
        "gradnorm",
        "pcgrad",
        "mgda",
        "upgrad",
        "cagrad",
        "nash_mtl",
        "imtl_g",
        "mgda_ub",
    ],
)
def test_balancer_trains_and_logs_weights(balancer, tiny_config, tmp_path):
    cfg = tiny_config(*TWO_REWARDS, *TWO_TERMS, f"objectives.balancer={balancer}")
    summary = Trainer(cfg, tmp_path).train()
    assert summary["completed"]
    rl = [m for m in read_metrics(tmp_path) if m.get("phase") == "rl"]
    assert rl and all(math.isfinite(m["train/loss"]) for m in rl)
    weights = {k for m in rl for k in m if k.startswith("balancer/")}
    assert weights, f"{balancer}: no balancer/* metric logged"
    described = json.loads((tmp_path / "balancer.json").read_text())
    assert described  # the run directory says what the balancer did and on which parameters


@pytest.mark.parametrize("combine", ["weighted_sum", "gdpo", "tchebycheff", "smooth_tchebycheff"])
def test_reward_combiners_train(combine, tiny_config, tmp_path):
    extra = [f"objectives.combine={combine}", "objectives.preference=[0.7, 0.3]"]
    cfg = tiny_config(*TWO_REWARDS, *extra)
    summary = Trainer(cfg, tmp_path).train()
    assert summary["completed"]
    rl = [m for m in read_metrics(tmp_path) if m.get("phase") == "rl"]
    assert any("train/reward/short/mean" in m for m in rl)


def test_aggregated_and_plain_parameters_are_logged(tiny_config, tmp_path):
    cfg = tiny_config(
        *TWO_REWARDS,
        *TWO_TERMS,
        "objectives.balancer=mgda",
        "objectives.aggregate_params=last_blocks:1",
    )
    Trainer(cfg, tmp_path).train()
    text = (tmp_path / "balancer.json").read_text()
    assert "layers.1" in text  # the last block of the 2-layer tiny model is aggregated


def test_per_term_gradients_through_the_head_in_one_pass(
    tiny_config, tmp_path, caplog, monkeypatch
):
    """With terms computed from the log-probs only (policy + DPO), an aggregator takes the
    factorised path in the trainer; an SFT term (its own forward) falls back, with a warning."""
    from steerl.objectives.factored import TermJacobian

    paths = []
    original = TermJacobian.head_grads

    def spy(self, *a, **kw):
        out = original(self, *a, **kw)
        paths.append(self.last_path)
        return out

    monkeypatch.setattr(TermJacobian, "head_grads", spy)
    dpo = "loss.aux=[{name: dpo, coef: 0.1}]"
    cfg = tiny_config(*TWO_REWARDS, dpo, "objectives.balancer=upgrad")
    assert Trainer(cfg, tmp_path / "dpo").train()["completed"]
    assert paths and set(paths) == {"factored"}
    paths.clear()
    cfg = tiny_config(*TWO_REWARDS, *TWO_TERMS, "objectives.balancer=upgrad")
    with caplog.at_level("WARNING", logger="steerl.objectives"):
        assert Trainer(cfg, tmp_path / "sft").train()["completed"]
    assert paths and all(p.startswith("autograd: a term depends") for p in paths)
    assert "one backward per term" in caplog.text
