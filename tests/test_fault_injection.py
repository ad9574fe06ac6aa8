"""Fault injection: NaN losses, inf gradients and loss spikes at chosen RL steps.

Each fault is injected into a real (tiny) training run; the run must finish, the stability
layer must act as configured (skip, roll back, stop) and count what it did, and a skipped
update must leave the run exactly where a control run ends up when that update is dropped by
an independent mechanism (snapshot model + optimizer before the update, restore them after;
the rollouts, rewards and random streams of both runs are the same).
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from steerl.checkpoint import latest_checkpoint
from steerl.cli import app
from steerl.config import load_config
from steerl.logging import read_metrics
from steerl.stability import StabilityError
from steerl.trainer import Callback, Trainer

#: exact_match first (the eval metric); a format reward whose value varies between samples,
#: so that groups carry signal and every RL step updates the policy, even an untrained one.
VARIED_REWARDS = (
    "rewards=[{name: exact_match}, "
    "{name: format, alias: low_digit, args: {pattern: '[0-4]', mode: search}}]"
)

#: One warm-up step, then RL steps (RL step k is global step k + 2).
BASE = (VARIED_REWARDS, "warmup.steps=1", "train.steps=6")

#: Spike detectors that flag a 1000x jump of the gradient norm / loss and are quiet on the
#: normal steps of these runs. The gradient norm is often nearly constant here (its robust
#: scale is then the 1e-3 x median floor), so its threshold is high: z = 2000 is 3x the median.
SPIKE_KW = {
    "train/grad_norm": "window: 4, min_history: 2, threshold: 2000, direction: up",
    "train/loss": "window: 4, min_history: 2, threshold: 50, direction: both",
}


def spikes(action: str = "skip", metrics: tuple[str, ...] = ("train/grad_norm",)) -> str:
    items = ", ".join(f"{{metric: {m}, {SPIKE_KW[m]}, action: {action}}}" for m in metrics)
    return f"stability.spikes=[{items}]"


def gstep(rl_step: int, warmup: int = 1) -> int:
    """Global step (as logged) of 0-based RL step ``rl_step``."""
    return warmup + rl_step + 1


# --------------------------------------------------------------------------- injection
class Faults:
    """Injects faults into ``trainer`` at the given 0-based RL steps.

    ``nan``: the policy loss becomes NaN (NaN gradients everywhere); ``spike``: the policy
    loss is multiplied by ``factor`` (so are its gradients); ``inf_grad``: after backward,
    one element of ``param``'s gradient is set to +inf (the loss stays finite).
    """

    PARAM = "model.layers.1.mlp.down_proj.weight"

    def __init__(self, trainer: Trainer, nan=(), spike=(), inf_grad=(), factor: float = 1000.0):
        self.trainer, self.factor = trainer, factor
        self.nan, self.spike, self.inf_grad = set(nan), set(spike), set(inf_grad)
        self.fired: list[tuple[str, int]] = []
        self._loss = trainer.loss
        trainer.loss = self._wrapped_loss
        self._combine = trainer.balancer.combine
        trainer.balancer.combine = self._wrapped_combine

    @property
    def step(self) -> int:
        return self.trainer.state.rl_step  # advanced only after the update

    def _wrapped_loss(self, inputs):
        loss, metrics = self._loss(inputs)
        if self.step in self.nan:
            loss = loss * float("nan")
            self.fired.append(("nan", self.step))
        elif self.step in self.spike:
            loss = loss * self.factor
            self.fired.append(("spike", self.step))
        return loss, metrics

    def _wrapped_combine(self, terms, params=()):
        weights = self._combine(terms, params)
        if self.step in self.inf_grad:
            p = dict(self.trainer.model.named_parameters())[self.PARAM]
            with torch.no_grad():
                p.grad.view(-1)[0] = float("inf")
            self.fired.append(("inf_grad", self.step))
        return weights


class DropUpdates:
    """Control: the updates of the given RL steps are computed and applied, then undone.

    Model and optimizer state are snapshot before ``_policy_update`` and restored after it, so
    the run consumes the same rollouts and random numbers as one that skips those updates.
    """

    def __init__(self, trainer: Trainer, steps):
        self.trainer, self.steps = trainer, set(steps)
        self.dropped: list[int] = []
        self._update = trainer._policy_update
        trainer._policy_update = self

    def __call__(self, *args, **kwargs):
        t = self.trainer
        if t.state.rl_step not in self.steps:
            return self._update(*args, **kwargs)
        weights = {k: v.detach().clone() for k, v in t.model.state_dict().items()}
        optim = copy.deepcopy(t.optimizer.state_dict())
        out = self._update(*args, **kwargs)
        assert out["stability/action"] == "apply"
        assert not same(weights, t.model.state_dict())  # the update did change the weights
        t.model.load_state_dict(weights)
        t.optimizer.load_state_dict(optim)
        self.dropped.append(t.state.rl_step)
        return out


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def matches_file(weights: dict[str, torch.Tensor], saved: dict[str, torch.Tensor]) -> bool:
    """The saved tensors equal the model's (a file leaves out tied copies such as lm_head)."""
    return bool(saved) and all(torch.equal(weights[k], saved[k]) for k in saved)


def same_optimizer(a: torch.optim.Optimizer, b: torch.optim.Optimizer) -> bool:
    sa, sb = a.state_dict()["state"], b.state_dict()["state"]
    return sa.keys() == sb.keys() and all(
        sa[i].keys() == sb[i].keys() and all(torch.equal(sa[i][k], sb[i][k]) for k in sa[i])
        for i in sa
    )


def weights_of(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def rl_records(run_dir) -> dict[int, dict]:
    return {r["step"]: r for r in read_metrics(run_dir) if r.get("phase") == "rl"}


def numeric(rec: dict) -> dict:
    return {
        k: v
        for k, v in rec.items()
        if not k.startswith("time/") and (v is None or isinstance(v, (int, float)))
    }


# --------------------------------------------------------------------------- skip
FAULTS = {
    # kind: (injection, config, expected skip counter, health key, health value)
    "nan_loss": ({"nan": {1, 3}}, (), "nonfinite", None, None),
    "inf_grad": ({"inf_grad": {2}}, (), "nonfinite", None, None),
    "loss_spike": (
        {"spike": {2, 4}},
        (spikes("skip", ("train/loss", "train/grad_norm")),),
        "spike",
        "spikes",
        {"train/loss": 2, "train/grad_norm": 2},
    ),
}


@pytest.mark.parametrize("kind", list(FAULTS))
def test_faulty_steps_are_skipped_as_if_their_update_never_happened(tmp_path, tiny_config, kind):
    inject, extra, counter, health_key, health_value = FAULTS[kind]
    steps = set().union(*inject.values())
    cfg = tiny_config(*BASE, *extra)

    faulty = Trainer(cfg, tmp_path / "faulty")
    faults = Faults(faulty, **inject)
    summary = faulty.train()

    control = Trainer(cfg, tmp_path / "control")
    drop = DropUpdates(control, steps)
    control_summary = control.train()

    # the run finished; exactly the injected steps were skipped, and counted
    assert summary["completed"] and summary["rl_steps"] == 6
    assert {s for _, s in faults.fired} == steps
    health = summary["stability"]
    assert health["skipped_steps"] == len(steps)
    assert health["skips"][counter] == len(steps)
    assert health["rollbacks"] == 0
    if health_key is not None:
        assert health[health_key] == health_value
    assert sorted(e["step"] for e in health["events"] if e["action"] == "skip") == sorted(
        s for s in steps for _ in range(2 if kind == "loss_spike" else 1)
    )
    assert json.loads((tmp_path / "faulty" / "summary.json").read_text())["stability"] == health

    rl = rl_records(tmp_path / "faulty")
    done = 0
    for k in range(6):
        rec = rl[gstep(k)]
        assert rec["stability/action"] == ("skip" if k in steps else "apply"), k
        done += k in steps
        assert rec["stability/skipped_steps"] == done
    if kind == "loss_spike":
        assert rl[gstep(4)]["stability/spikes"] == 4  # two detectors x two spikes
    if kind == "nan_loss":
        assert all(rl[gstep(k)]["train/loss"] is None for k in steps)  # NaN, written as null
    if kind == "inf_grad":
        assert math.isfinite(rl[gstep(2)]["train/loss"])
        (event,) = health["events"]
        assert Faults.PARAM in event["reason"]  # the diagnosis names the parameter

    # the control applied and undid the same updates, and skipped nothing itself
    assert sorted(drop.dropped) == sorted(steps)
    assert control_summary["stability"]["skipped_steps"] == 0
    assert control_summary["stability"]["spikes"] == {k: 0 for k in summary["stability"]["spikes"]}
    # same final weights, exactly (also on disk), and the same evaluation
    assert same(weights_of(faulty), weights_of(control))
    assert same_optimizer(faulty.optimizer, control.optimizer)
    on_disk = load_file(latest_checkpoint(tmp_path / "faulty") / "model.safetensors")
    assert matches_file(weights_of(faulty), on_disk)
    assert same(on_disk, load_file(latest_checkpoint(tmp_path / "control") / "model.safetensors"))
    assert summary["final"] == control_summary["final"]
    # ... and the faults did make a difference: without the drops the run ends elsewhere
    plain = Trainer(cfg, tmp_path / "plain")
    plain.train()
    assert not same(weights_of(plain), weights_of(faulty))


# --------------------------------------------------------------------------- rollback
class AtStep(Callback):
    """Records weights, the newest checkpoint's weights and the metrics at global ``step``."""

    def __init__(self, step: int):
        self.step = step
        self.before: dict[str, torch.Tensor] | None = None
        self.after: dict[str, torch.Tensor] | None = None
        self.checkpoint: dict[str, torch.Tensor] | None = None
        self.optimizer_matches = False
        self.metrics: dict = {}

    def on_step_end(self, trainer, step, metrics):
        if step == self.step - 1:
            self.before = weights_of(trainer)
        if step != self.step:
            return
        self.after = weights_of(trainer)
        self.metrics = dict(metrics)
        path = latest_checkpoint(trainer.run_dir)  # this step is not saved yet
        self.checkpoint = load_file(path / "model.safetensors")
        saved = torch.load(path / "optimizer.pt", weights_only=False)
        now = trainer.optimizer.state_dict()
        self.optimizer_matches = saved["state"].keys() == now["state"].keys() and all(
            torch.equal(saved["state"][i][k], now["state"][i][k])
            for i in saved["state"]
            for k in saved["state"][i]
        )


@pytest.mark.parametrize(
    ("save_every", "at", "checkpoint"),
    [
        (1, 3, gstep(2)),  # the newest checkpoint is the step before
        (2, 4, gstep(2)),  # ... or two steps back: RL step 3's update is undone too
    ],
)
def test_spike_rolls_back_to_the_newest_checkpoint(
    tmp_path, tiny_config, save_every, at, checkpoint
):
    cfg = tiny_config(*BASE, spikes("rollback"), f"train.save_every={save_every}")
    probe = AtStep(gstep(at))
    trainer = Trainer(cfg, tmp_path, callbacks=[probe])
    Faults(trainer, spike={at})
    summary = trainer.train()

    assert summary["completed"] and summary["rl_steps"] == 6  # it went on to the end
    assert probe.metrics["stability/action"] == "rollback"
    assert probe.metrics["stability/rolled_back_to"] == checkpoint
    assert probe.metrics["stability/rollbacks"] == 1
    # right after the rollback the weights (and the optimizer) are the checkpoint's
    assert matches_file(probe.after, probe.checkpoint)
    assert probe.optimizer_matches
    assert same(probe.before, probe.after) == (checkpoint == gstep(at) - 1)
    health = summary["stability"]
    assert health["rollbacks"] == 1 and health["skipped_steps"] == 0
    assert health["spikes"] == {"train/grad_norm": 1}
    rl = rl_records(tmp_path)
    assert rl[gstep(5)]["stability/rollbacks"] == 1
    assert [rl[gstep(k)]["stability/action"] for k in range(6)] == [
        "rollback" if k == at else "apply" for k in range(6)
    ]
    # the run moved on after the rollback
    assert not same(weights_of(trainer), probe.after)


def test_rollbacks_past_the_cap_stop_the_run(tmp_path, tiny_config):
    cfg = tiny_config(*BASE, spikes("rollback"), "train.save_every=1", "stability.max_rollbacks=1")
    trainer = Trainer(cfg, tmp_path)
    Faults(trainer, spike={2, 4})
    with pytest.raises(StabilityError, match=r"stability\.max_rollbacks=1"):
        trainer.train()
    assert trainer.stability.rollbacks == 2
    assert trainer.state.rl_step == 4  # the first rollback (RL step 2) was survived


def test_cli_reports_the_rollback_cap_as_an_error(tmp_path, monkeypatch, tiny_overrides):
    import steerl.trainer

    class SpikyTrainer(Trainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            Faults(self, spike={2})

    monkeypatch.setattr(steerl.trainer, "Trainer", SpikyTrainer)
    args = [*tiny_overrides, *BASE, spikes("rollback"), "train.save_every=1"]
    args += ["stability.max_rollbacks=0", f"train.out_dir={tmp_path}"]
    try:  # click < 8.2 mixes stderr into output unless told otherwise
        runner = CliRunner(mix_stderr=False)  # type: ignore[call-arg]
    except TypeError:
        runner = CliRunner()
    result = runner.invoke(app, ["train", *args])
    assert result.exit_code == 2, result.output
    assert "error:" in result.stderr and "stability.max_rollbacks=0" in result.stderr
    assert "Traceback" not in result.stderr


# --------------------------------------------------------------------------- early stopping
def test_early_stop_ends_the_run_with_a_final_eval(tmp_path, tiny_config):
    # min_delta=1: accuracy cannot improve by more than 1, so the second evaluation stops
    cfg = tiny_config(
        *BASE, "train.eval_every=1", "stability.early_stop={patience: 1, min_delta: 1.0}"
    )
    summary = Trainer(cfg, tmp_path).train()

    assert summary["rl_steps"] == 2 < cfg.train.steps
    assert summary["stop_reason"].startswith("early stop: eval/accuracy/mean")
    assert summary["stability"]["stop_reason"] == summary["stop_reason"]
    assert summary["stability"]["early_stop"]["stopped_at"] == gstep(1)
    assert summary["completed"] and summary["final"] is not None
    evals = [r for r in read_metrics(tmp_path) if "eval/tag" in r]
    assert [r["eval/tag"] for r in evals] == ["warmup", "rl", "rl", "final"]
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    # the final checkpoint holds the stopped run
    state = json.loads((latest_checkpoint(tmp_path) / "trainer_state.json").read_text())
    assert state["trainer"]["rl_step"] == 2 and state["trainer"]["final_eval"] == summary["final"]


def test_resuming_an_early_stopped_run_does_nothing_more(tmp_path, tiny_config):
    cfg = tiny_config(
        *BASE, "train.eval_every=1", "stability.early_stop={patience: 1, min_delta: 1.0}"
    )
    summary = Trainer(cfg, tmp_path).train()
    before = (tmp_path / "metrics.jsonl").read_text()
    again = Trainer(cfg, tmp_path).train()
    assert again == summary
    assert (tmp_path / "metrics.jsonl").read_text() == before


def test_a_monitor_stop_names_its_own_cause(tmp_path, tiny_config):
    """A plateau stop after a spike skip: the stop reason is the plateau, not the spike."""
    cfg = tiny_config(
        *BASE,
        spikes("skip"),
        "stability.plateau={window: 2, min_slope: 1.0, action: stop}",
    )
    trainer = Trainer(cfg, tmp_path)
    Faults(trainer, spike={2})
    summary = trainer.train()
    assert summary["stability"]["skips"]["spike"] == 1
    assert summary["rl_steps"] == 3 and summary["completed"]
    assert summary["stop_reason"].startswith("plateau in train/reward")
    assert summary["stability"]["stop_reason"] == summary["stop_reason"]


# --------------------------------------------------------------------------- KL guard
@pytest.mark.parametrize("action", ["skip", "lower_lr", "stop"])
def test_kl_guard_fires(tmp_path, tiny_config, action):
    cfg = tiny_config(
        *BASE,
        "train.steps=4",
        "loss.kl_coef=0.1",
        "stability.guards.kl_max=1e-6",
        f"stability.guards.action={action}",
        "stability.lower_lr={factor: 0.25, steps: 1}",
        "stability.max_consecutive_skips=10",
    )
    trainer = Trainer(cfg, tmp_path)
    assert trainer.reference is not None
    summary = trainer.train()
    health = summary["stability"]
    rl = rl_records(tmp_path)
    assert rl[gstep(0)]["train/kl"] == 0.0  # RL starts at the reference: nothing to trip
    assert rl[gstep(0)]["stability/action"] == "apply"
    tripped = [k for k in range(summary["rl_steps"]) if rl[gstep(k)]["train/kl"] > 1e-6]
    assert tripped and tripped[0] == 1
    assert health["guard_hits"]["train/kl"] == len(tripped) > 0
    events = [e for e in health["events"] if e["kind"] == "guard"]
    assert [e["step"] for e in events] == tripped
    assert all(e["metric"] == "train/kl" and e["action"] == action for e in events)
    if action == "skip":
        assert health["skips"]["guard"] == len(tripped) == 3
        assert [rl[gstep(k)]["stability/action"] for k in range(4)] == ["apply"] + ["skip"] * 3
    elif action == "lower_lr":
        assert health["lr_reductions"] == len(tripped) == 3
        assert health["skipped_steps"] == 0
        assert [rl[gstep(k)]["stability/lr_scale"] for k in range(4)] == [1.0] + [0.25] * 3
    else:
        assert summary["rl_steps"] == 2 and summary["completed"]
        assert summary["stop_reason"].startswith("guard train/kl=")
        assert rl[gstep(1)]["stability/action"] == "stop"


# --------------------------------------------------------------------------- resume
def test_resume_restores_the_stability_state(tmp_path, tiny_config):
    extra = (
        *BASE,
        "train.steps=8",
        "train.save_every=1",
        spikes("skip"),
        "stability.clip=adaptive",
        "stability.adaptive={window: 4, min_history: 2, percentile: 50}",
        "stability.plateau={window: 2, min_slope: 1.0, cooldown: 1, factor: 0.5}",
    )
    run_a, run_b = tmp_path / "a", tmp_path / "b"
    inject = {"spike": {2, 6}}

    a = Trainer(tiny_config(*extra), run_a)
    Faults(a, **inject)
    summary_a = a.train()
    health = summary_a["stability"]
    assert health["spikes"] == {"train/grad_norm": 2} and health["skipped_steps"] == 2
    assert health["plateau_events"] > 0 and health["clip"]["clipped"] > 0

    stop = gstep(3)
    b = Trainer(tiny_config(*extra, f"train.stop_after={stop}"), run_b)
    Faults(b, **inject)
    first = b.train()
    assert not first["completed"] and first["steps"] == stop
    b = Trainer(tiny_config(*extra), run_b)
    Faults(b, **inject)
    summary_b = b.train()

    recs_a, recs_b = read_metrics(run_a), read_metrics(run_b)
    assert [r["step"] for r in recs_b] == [r["step"] for r in recs_a]
    after_a = [r for r in recs_a if r["step"] > stop]
    after_b = [r for r in recs_b if r["step"] > stop]
    assert len(after_a) == 5  # RL steps 4..7 and the final evaluation
    assert [numeric(r) for r in after_b] == [numeric(r) for r in after_a]
    assert [r.get("stability/action") for r in after_b] == [
        r.get("stability/action") for r in after_a
    ]
    assert any(r.get("stability/action") == "skip" for r in after_a)
    assert summary_b["stability"] == health
    assert same(weights_of(a), weights_of(b))


# --------------------------------------------------------------------------- stress recipe
def test_stress_recipe_is_the_default_with_a_high_lr_and_stability_on():
    """benchmarks/stability_stress.py relies on this: same task, warm-up and RL otherwise."""
    stress, default = load_config("stress").model_dump(), load_config("default").model_dump()
    assert {k for k in stress if stress[k] != default[k]} == {"recipe", "optim", "stability"}
    assert stress["optim"] == {**default["optim"], "lr": 3e-3}
    st = stress["stability"]
    assert st["max_grad_norm"] == default["stability"]["max_grad_norm"]  # the SFT warm-up's
    assert st["clip"] == "adaptive" and st["spikes"] and st["plateau"]["action"] == "reduce_lr"
