from __future__ import annotations

import json
import math
import textwrap

import pytest
import torch
import yaml
from safetensors.torch import load_file

from steerl.checkpoint import latest_checkpoint, list_checkpoints
from steerl.config import build_config
from steerl.logging import read_metrics
from steerl.stability import NonFiniteError
from steerl.trainer import Callback, Trainer

#: exact_match first (the eval metric); a format reward whose value varies between samples,
#: so that groups carry signal and the policy is updated even by an untrained model.
VARIED_REWARDS = (
    "rewards=[{name: exact_match}, "
    "{name: format, alias: low_digit, args: {pattern: '[0-4]', mode: search}}]"
)


def _numeric(rec: dict) -> dict:
    return {
        k: v
        for k, v in rec.items()
        if not k.startswith("time/") and (v is None or isinstance(v, (int, float)))
    }


def _final_weights(run_dir) -> dict[str, torch.Tensor]:
    return load_file(latest_checkpoint(run_dir) / "model.safetensors")


class WeightSnapshots(Callback):
    """Copies of the weights after every step (global step -> state dict)."""

    def __init__(self):
        self.after: dict[int, dict[str, torch.Tensor]] = {}

    def on_step_end(self, trainer, step, metrics):
        self.after[step] = {k: v.clone() for k, v in trainer.model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- end to end
def test_short_run_writes_everything(tmp_path, tiny_config):
    cfg = tiny_config(VARIED_REWARDS, "train.eval_every=2", "logging.samples_every=1")
    summary = Trainer(cfg, tmp_path).train()

    assert summary["completed"] and summary["steps"] == 7
    assert summary["warmup_steps"] == 3 and summary["rl_steps"] == 4
    assert set(summary["final"]) == {"1", "2", "3"} and set(summary["warmup"]) == {"1", "2", "3"}
    assert json.loads((tmp_path / "summary.json").read_text()) == summary

    # config.yaml is the full, valid configuration of the run
    assert build_config(yaml.safe_load((tmp_path / "config.yaml").read_text())) == cfg

    recs = read_metrics(tmp_path)
    assert [r["step"] for r in recs if r.get("phase") == "warmup"] == [1, 2, 3]
    assert [r["step"] for r in recs if r.get("phase") == "rl"] == [4, 5, 6, 7]
    rl = [r for r in recs if r.get("phase") == "rl"]
    for key in ("train/reward", "train/loss", "train/lr", "train/kept_groups"):
        assert any(key in r for r in rl), key
    assert any(r.get("train/loss") is not None for r in rl)
    assert all("warmup/loss" in r for r in recs if r.get("phase") == "warmup")
    evals = [r for r in recs if "eval/tag" in r]
    assert [r["eval/tag"] for r in evals] == ["warmup", "rl", "final"]
    assert rl[1]["eval/accuracy/level_1"] == evals[1]["eval/accuracy/level_1"]
    assert [r["step"] for r in evals] == [3, 5, 7]
    assert all(0 <= r["eval/accuracy/level_1"] <= 1 for r in evals)

    # saved at the warm-up/RL boundary and at the end (save_every=0)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_3", "step_7"]
    state = json.loads((tmp_path / "checkpoints/step_7/trainer_state.json").read_text())
    assert state["trainer"]["rl_step"] == 4 and state["trainer"]["final_eval"] == summary["final"]
    assert (tmp_path / "samples.jsonl").read_text().strip()


def test_rl_only_run(tmp_path, tiny_config):
    cfg = tiny_config(VARIED_REWARDS, "warmup.steps=0", "train.steps=2")
    summary = Trainer(cfg, tmp_path).train()
    assert summary["completed"] and summary["warmup"] is None and summary["steps"] == 2
    assert [r.get("phase") for r in read_metrics(tmp_path)] == ["rl", "rl", None]


# --------------------------------------------------------------------------- resume
def test_resume_continues_exactly(tmp_path, tiny_config):
    extra = (VARIED_REWARDS, "train.save_every=1", "train.eval_every=2")
    run_a, run_b = tmp_path / "a", tmp_path / "b"
    Trainer(tiny_config(*extra), run_a).train()

    first = Trainer(tiny_config(*extra, "train.stop_after=5"), run_b).train()
    assert not first["completed"] and first["steps"] == 5
    assert latest_checkpoint(run_b).name == "step_5"
    assert not (run_b / "summary.json").exists()
    assert max(r["step"] for r in read_metrics(run_b)) == 5

    resumed = Trainer(tiny_config(*extra), run_b)
    summary = resumed.train()
    assert summary["completed"] and summary["steps"] == 7

    recs_a, recs_b = read_metrics(run_a), read_metrics(run_b)
    # no step is logged twice, and the metrics of the resumed steps are identical
    assert [r["step"] for r in recs_b] == [r["step"] for r in recs_a]
    after_a = [_numeric(r) for r in recs_a if r["step"] > 5]
    after_b = [_numeric(r) for r in recs_b if r["step"] > 5]
    assert len(after_a) == 3  # RL steps 6, 7 and the final evaluation
    assert after_b == after_a
    assert any(r.get("train/loss") is not None for r in after_a)  # the policy was updated
    wa, wb = _final_weights(run_a), _final_weights(run_b)
    assert wa.keys() == wb.keys() and _same(wa, wb)
    assert json.loads((run_b / "summary.json").read_text())["final"] == summary["final"]


@pytest.mark.parametrize(
    ("name", "cls"), [("sgd", torch.optim.SGD), ("adafactor", torch.optim.Adafactor)]
)
def test_rl_phase_has_its_own_optimizer_and_resumes_across_the_boundary(
    tmp_path, tiny_config, name, cls
):
    extra = (VARIED_REWARDS, f"optim.name={name}", "optim.lr=0.05", "train.steps=2")
    run_a, run_b = tmp_path / "a", tmp_path / "b"
    trainer_a = Trainer(tiny_config(*extra), run_a)
    assert isinstance(trainer_a.optimizer, torch.optim.AdamW)  # the warm-up (SFT) optimizer
    trainer_a.train()
    assert isinstance(trainer_a.optimizer, cls)  # optim.* applies to RL
    if name == "adafactor":  # factored second moment: a row and a column per matrix
        state = trainer_a.optimizer.state
        mat = next(p for p in trainer_a.model.parameters() if p.dim() == 2 and p in state)
        assert state[mat]["row_var"].numel() + state[mat]["col_var"].numel() < mat.numel()

    Trainer(tiny_config(*extra, "train.stop_after=3"), run_b).train()
    assert latest_checkpoint(run_b).name == "step_3"
    trainer_b = Trainer(tiny_config(*extra), run_b)
    trainer_b.train()
    assert isinstance(trainer_b.optimizer, cls)
    after_a = [_numeric(r) for r in read_metrics(run_a) if r["step"] > 3]
    after_b = [_numeric(r) for r in read_metrics(run_b) if r["step"] > 3]
    assert after_b == after_a and len(after_a) == 3
    assert _same(_final_weights(run_a), _final_weights(run_b))


def test_no_gradients_are_held_between_steps(tmp_path, tiny_config):
    # kept after the update, they would sit in memory through the next generation
    trainer = Trainer(tiny_config(VARIED_REWARDS, "warmup.steps=1", "train.steps=1"), tmp_path)
    for step in (trainer.warmup_step, trainer.rl_step):
        m = step()
        assert m.get("stability/action", "apply") == "apply"
        assert all(p.grad is None for p in trainer.model.parameters())


def test_head_gradient_in_place_gives_the_update_of_plain_accumulation(
    tmp_path, tiny_config, monkeypatch
):
    import contextlib

    import steerl.update as update_mod  # where _accumulate looks the context manager up

    extra = (VARIED_REWARDS, "warmup.steps=1", "train.steps=1", "loss.micro_batch_size=4")

    def params_after_one_rl_step(in_place: bool) -> list[torch.Tensor]:
        if not in_place:
            monkeypatch.setattr(
                update_mod, "head_grad_into_param", lambda on=True: contextlib.nullcontext()
            )
        trainer = Trainer(tiny_config(*extra), tmp_path / str(in_place))
        trainer.warmup_step()
        start = [p.detach().clone() for p in trainer.model.parameters()]
        assert trainer.rl_step()["stability/action"] == "apply"
        monkeypatch.undo()
        end = [p.detach().clone() for p in trainer.model.parameters()]
        assert any(not torch.equal(a, b) for a, b in zip(start, end))
        return end

    for a, b in zip(params_after_one_rl_step(True), params_after_one_rl_step(False)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_resume_of_a_finished_run_does_nothing_more(tmp_path, tiny_config):
    cfg = tiny_config(VARIED_REWARDS, "warmup.steps=1", "train.steps=1")
    Trainer(cfg, tmp_path).train()
    before = (tmp_path / "metrics.jsonl").read_text()
    summary = Trainer(cfg, tmp_path).train()
    assert summary["completed"] and summary["steps"] == 2
    assert (tmp_path / "metrics.jsonl").read_text() == before


# --------------------------------------------------------------------------- rewards
def test_failing_reward_leaves_samples_unscored(tmp_path, tiny_config, monkeypatch):
    mod = tmp_path / "steerl_test_flaky_reward.py"
    mod.write_text(
        textwrap.dedent(
            """
            def flaky(prompts, completions, step, **fields):
                if step == 1:
                    raise RuntimeError("scorer is down")
                return [None if i % 3 == 0 else float(len(c)) for i, c in enumerate(completions)]
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    rewards = "rewards=[{name: exact_match}, {name: 'steerl_test_flaky_reward:flaky'}]"
    cfg = tiny_config(rewards, "warmup.steps=0", "train.steps=3")
    summary = Trainer(cfg, tmp_path / "run").train()

    assert summary["completed"]
    rl = [r for r in read_metrics(tmp_path / "run") if r.get("phase") == "rl"]
    assert len(rl) == 3
    assert all(r["train/unscored"] > 0 for r in rl)
    assert rl[1]["train/unscored"] == 1.0  # the step where the reward raised
    assert rl[1]["train/reward"] is None  # NaN, written as null
    assert rl[0]["train/unscored"] == pytest.approx(6 / 16)  # indices 0, 3, ..., 15
    assert rl[0]["train/reward/steerl_test_flaky_reward.flaky/unscored"] == pytest.approx(6 / 16)


# --------------------------------------------------------------------------- stability
class NanOnSteps:
    """Wraps the policy loss; returns NaN (with NaN gradients) on the given RL steps."""

    def __init__(self, trainer: Trainer, steps: set[int]):
        self.trainer, self.inner, self.steps = trainer, trainer.loss, steps

    def __call__(self, inputs):
        loss, metrics = self.inner(inputs)
        if self.trainer.state.rl_step in self.steps:
            loss = loss * float("nan")
        return loss, metrics


def test_nonfinite_step_is_skipped(tmp_path, tiny_config):
    snaps = WeightSnapshots()
    cfg = tiny_config(VARIED_REWARDS, "warmup.steps=1", "train.steps=3")
    trainer = Trainer(cfg, tmp_path, callbacks=[snaps])
    trainer.loss = NanOnSteps(trainer, {1})
    summary = trainer.train()
    assert summary["completed"]

    rl = {r["step"]: r for r in read_metrics(tmp_path) if r.get("phase") == "rl"}
    assert rl[2]["train/loss"] is not None and math.isfinite(rl[2]["train/loss"])
    assert rl[3]["train/loss"] is None  # NaN
    assert rl[3]["stability/skipped_steps"] == 1
    assert rl[4]["stability/skipped_steps"] == 1
    # step 3 (RL step 1) left the weights as they were; the steps around it did not
    assert not _same(snaps.after[1], snaps.after[2])
    assert _same(snaps.after[2], snaps.after[3])
    assert not _same(snaps.after[3], snaps.after[4])
    assert all(torch.isfinite(v).all() for v in snaps.after[4].values())
    assert trainer.stability.nonfinite.skipped == 1 and trainer.stability.consecutive_skips == 0


def test_consecutive_nonfinite_steps_stop_the_run(tmp_path, tiny_config):
    cfg = tiny_config(
        VARIED_REWARDS, "warmup.steps=0", "train.steps=4", "stability.max_consecutive_skips=2"
    )
    trainer = Trainer(cfg, tmp_path)
    trainer.loss = NanOnSteps(trainer, {0, 1, 2, 3})
    with pytest.raises(NonFiniteError, match="2 consecutive steps"):
        trainer.train()


def test_callback_can_stop_the_run(tmp_path, tiny_config):
    class StopAfterTwo(Callback):
        def on_step_end(self, trainer, step, metrics):
            if step == 2:
                trainer.should_stop = True

    summary = Trainer(tiny_config(), tmp_path, callbacks=[StopAfterTwo()]).train()
    assert summary["steps"] == 2 and not summary["completed"]


def test_adamw_is_fused_under_sharding_and_a_multi_tensor_checkpoint_stays_fused(
    tmp_path, tiny_config, monkeypatch
):
    """Under ``train.distributed=fsdp`` AdamW is fused (on the CPU too, as on CUDA: no
    parameter-sized temporaries), and resuming an optimizer state written by multi-tensor
    AdamW keeps this run's fused implementation (``load_state_dict`` alone would take the
    writer's flags)."""
    from steerl import trainer as trainer_mod
    from steerl.checkpoint import load_optimizer

    t = Trainer(tiny_config(), tmp_path / "run")
    assert not t.optimizer.defaults.get("fused")  # one CPU process: torch's default
    monkeypatch.setattr(trainer_mod.ddp, "sharded", lambda: True)
    for phase in ("warmup", "rl"):
        assert t._make_optimizer(phase).defaults["fused"] is True, phase
    params = [p for p in t.model.parameters() if p.requires_grad][:3]
    old = torch.optim.AdamW(params, lr=1e-3, foreach=True)
    for p in params:
        p.grad = torch.ones_like(p)
    old.step()
    (tmp_path / "ckpt").mkdir()
    torch.save(old.state_dict(), tmp_path / "ckpt" / "optimizer.pt")
    new = torch.optim.AdamW(params, lr=1e-3, fused=True)
    assert load_optimizer(tmp_path / "ckpt", new)
    assert new.param_groups[0]["fused"] is True and not new.param_groups[0]["foreach"]
    assert torch.equal(new.state[params[0]]["exp_avg"], old.state[params[0]]["exp_avg"])
    new.step()  # the fused kernel accepts the loaded state
