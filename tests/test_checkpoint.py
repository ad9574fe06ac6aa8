from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from steerl import checkpoint as ckpt
from steerl.checkpoint import (
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_optimizer,
    save_checkpoint,
)
from steerl.models import load_policy


def _save(run_dir, step, policy, optimizer=None, gens=None, keep=2, state=None):
    return save_checkpoint(
        run_dir,
        step,
        policy.model,
        policy.tokenizer,
        optimizer,
        state if state is not None else {"note": f"at {step}"},
        gens if gens is not None else {},
        keep=keep,
    )


def _tmp_dirs(run_dir: Path) -> list[str]:
    return [p.name for p in (run_dir / ckpt.CKPT_DIR).iterdir() if p.name.startswith(".tmp-")]


def test_save_writes_a_complete_folder_atomically_and_prunes(tmp_path, tiny_policy):
    policy = tiny_policy()
    opt = torch.optim.AdamW(policy.model.parameters(), lr=1e-3)
    for step in (1, 2, 3):
        path = _save(tmp_path, step, policy, opt, keep=2)
        assert path == tmp_path / "checkpoints" / f"step_{step}"
        assert not _tmp_dirs(tmp_path)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_2", "step_3"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_2", "step_3"]
    files = {p.name for p in path.iterdir()}
    assert {"model.safetensors", "config.json", "optimizer.pt", "rng.safetensors"} <= files
    assert {"trainer_state.json", "tokenizer.json"} <= files
    state = json.loads((path / "trainer_state.json").read_text())
    assert state["step"] == 3 and state["note"] == "at 3"
    assert latest_checkpoint(tmp_path) == path


def test_keep_orders_steps_numerically(tmp_path, tiny_policy):
    policy = tiny_policy()
    for step in (9, 10, 100):
        _save(tmp_path, step, policy, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_10", "step_100"]


def test_resaving_a_step_replaces_it(tmp_path, tiny_policy):
    policy = tiny_policy()
    _save(tmp_path, 4, policy, state={"v": 1})
    _save(tmp_path, 4, policy, state={"v": 2})
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_4"]
    assert json.loads((tmp_path / "checkpoints/step_4/trainer_state.json").read_text())["v"] == 2


def test_crash_mid_write_leaves_only_a_tmp_folder(tmp_path, tiny_policy, monkeypatch):
    policy = tiny_policy()
    opt = torch.optim.SGD(policy.model.parameters(), lr=0.1)
    good = _save(tmp_path, 1, policy, opt)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        _save(tmp_path, 2, policy, opt)
    assert _tmp_dirs(tmp_path) == [".tmp-step_2"]
    assert latest_checkpoint(tmp_path) == good
    monkeypatch.undo()
    _save(tmp_path, 2, policy, opt)  # a later save clears the leftover
    assert not _tmp_dirs(tmp_path)
    assert latest_checkpoint(tmp_path).name == "step_2"


def test_latest_ignores_tmp_and_incomplete_folders(tmp_path, tiny_policy):
    policy = tiny_policy()
    _save(tmp_path, 5, policy)
    root = tmp_path / "checkpoints"
    leftover = root / ".tmp-step_9"
    leftover.mkdir()
    (leftover / "trainer_state.json").write_text("{}")
    (root / "step_12").mkdir()  # no trainer_state.json
    (root / "step_x").mkdir()
    (root / "step_x" / "trainer_state.json").write_text("{}")
    assert latest_checkpoint(tmp_path) == root / "step_5"
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_5"]
    assert latest_checkpoint(tmp_path / "elsewhere") is None


def test_load_restores_weights_generators_and_global_rngs(tmp_path, tiny_policy):
    policy = tiny_policy(scale=0.3)
    gen = torch.Generator().manual_seed(123)
    torch.rand(5, generator=gen)  # not at its initial state
    weights = {k: v.clone() for k, v in policy.model.state_dict().items()}
    torch.manual_seed(7)
    random.seed(7)
    np.random.seed(7)
    path = _save(tmp_path, 1, policy, gens={"sampler": gen}, state={"extra": [1, 2]})
    want = (
        torch.rand(4, generator=gen),
        torch.rand(4),
        random.random(),
        np.random.rand(),
    )

    with torch.no_grad():
        for p in policy.model.parameters():
            p.add_(0.5)
    torch.rand(10, generator=gen)
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)

    other_gen = torch.Generator()
    state = load_checkpoint(path, policy.model, {"sampler": other_gen})
    assert state["step"] == 1 and state["extra"] == [1, 2]
    for k, v in policy.model.state_dict().items():
        assert torch.equal(v, weights[k]), k
    got = (torch.rand(4, generator=other_gen), torch.rand(4), random.random(), np.random.rand())
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert got[2] == want[2] and got[3] == want[3]


def test_checkpoint_loads_into_a_fresh_model(tmp_path, tiny_policy, tiny_model_config):
    policy = tiny_policy(scale=0.3)
    path = _save(tmp_path, 1, policy)
    torch.manual_seed(99)
    fresh = load_policy(tiny_model_config())
    load_checkpoint(path, fresh.model, {})
    a, b = policy.model.state_dict(), fresh.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # and the folder is a loadable Hugging Face model
    hf = load_policy(tiny_model_config(), weights_dir=path)
    assert all(torch.equal(a[k], v) for k, v in hf.model.state_dict().items())


def test_load_into_a_different_model_fails(tmp_path, tiny_policy):
    path = _save(tmp_path, 1, tiny_policy("llama"))
    with pytest.raises(RuntimeError, match="does not match the model"):
        load_checkpoint(path, tiny_policy("gpt2").model, {})


def test_optimizer_state_round_trip(tmp_path, tiny_policy):
    policy = tiny_policy()
    params = list(policy.model.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3)
    policy.model(input_ids=torch.tensor([[1, 5, 6]])).logits.sum().backward()
    opt.step()
    path = _save(tmp_path, 1, policy, opt)
    opt2 = torch.optim.AdamW(params, lr=1e-3)
    assert load_optimizer(path, opt2)
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert s1.keys() == s2.keys()
    for k in s1:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(s1[k][name], s2[k][name])
    no_opt = _save(tmp_path, 2, policy, None)
    assert not load_optimizer(no_opt, opt2)
