"""Rewarded soups: interpolation of checkpoints from one base model."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from steerl.pareto import SoupError, check_same_base, interpolate, load_checkpoint, soup


@pytest.fixture
def checkpoints(tmp_path, tiny_policy):
    paths = []
    for seed in (0, 1):
        policy = tiny_policy(seed=seed)
        out = tmp_path / f"run{seed}"
        policy.model.save_pretrained(out, safe_serialization=True)
        paths.append(out)
    return paths


def test_soup_endpoints_and_midpoint(checkpoints, tmp_path):
    (a, _), (b, _) = load_checkpoint(checkpoints[0]), load_checkpoint(checkpoints[1])
    assert not all(torch.equal(a[k], b[k]) for k in a)
    for w, want in (((1.0, 0.0), a), ((0.0, 1.0), b)):
        got = soup(checkpoints, w)
        assert all(torch.equal(got[k], want[k]) for k in want)
    mid = soup(checkpoints, (0.5, 0.5), out_dir=tmp_path / "soup")
    for k in a:
        torch.testing.assert_close(mid[k], (a[k] + b[k]) / 2)
    # the written folder is a loadable model with the soup's weights
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "soup")
    sd = model.state_dict()
    for k in mid:
        torch.testing.assert_close(sd[k], mid[k])
    meta = json.loads((tmp_path / "soup" / "config.json").read_text())
    assert meta["model_type"] == "llama"


def test_mismatched_models_are_refused(checkpoints, tmp_path, tiny_policy):
    other = tmp_path / "gpt2"
    tiny_policy("gpt2").model.save_pretrained(other, safe_serialization=True)
    with pytest.raises(SoupError, match="does not come from the same base model"):
        soup([checkpoints[0], other], (0.5, 0.5))
    # same shapes, different architecture config: the config check catches it
    cfg = json.loads((checkpoints[1] / "config.json").read_text())
    cfg["rope_theta"] = 1234.0
    (checkpoints[1] / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SoupError, match="config.json differs in rope_theta"):
        soup(checkpoints, (0.5, 0.5))


def test_interpolate_checks():
    a = {"w": torch.zeros(2), "step": torch.tensor([3])}
    b = {"w": torch.ones(2), "step": torch.tensor([3])}
    torch.testing.assert_close(interpolate([a, b], [0.25, 0.75])["w"], torch.full((2,), 0.75))
    with pytest.raises(SoupError, match="sum to 1"):
        interpolate([a, b], [0.5, 0.6])
    with pytest.raises(SoupError, match="2 weights for 1"):
        interpolate([a], [0.5, 0.5])
    with pytest.raises(SoupError, match="tensor 'w'"):
        check_same_base([a, {"w": torch.ones(3), "step": torch.tensor([3])}])
    with pytest.raises(SoupError, match="keys only in"):
        check_same_base([a, {"w": torch.ones(2)}])
    with pytest.raises(SoupError, match="non-float tensor 'step' differs"):
        interpolate([a, {"w": torch.ones(2), "step": torch.tensor([4])}], [0.5, 0.5])


def test_load_checkpoint_forms(tmp_path):
    save_file({"w": torch.ones(2)}, str(tmp_path / "x.safetensors"))
    sd, cfg = load_checkpoint(tmp_path / "x.safetensors")
    assert cfg is None and torch.equal(sd["w"], torch.ones(2))
    with pytest.raises(SoupError, match="does not exist"):
        load_checkpoint(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SoupError, match="no model.safetensors"):
        load_checkpoint(tmp_path / "empty")


def _adapters(tmp_path, tiny_policy, ranks=(4, 4)) -> list:
    """LoRA adapters of one base (seed 0) with different B, saved in peft's format."""
    from steerl.config import LoraConfig
    from steerl.models import apply_lora

    paths = []
    for i, r in enumerate(ranks):
        model = apply_lora(tiny_policy(seed=0).model, LoraConfig(r=r, target_modules=["q_proj"]))
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.fill_(float(i + 1))
        out = tmp_path / f"adapter{i}"
        model.save_pretrained(out)
        paths.append(out)
    return paths


def test_lora_adapters_soup_a_and_b_separately(tmp_path, tiny_policy):
    pytest.importorskip("peft")
    paths = _adapters(tmp_path, tiny_policy)
    sd, cfg = load_checkpoint(paths[0])
    assert cfg["peft_adapter"] and cfg["r"] == 4 and all("lora_" in k for k in sd)
    out = tmp_path / "mix"
    mixed = soup(paths, [0.25, 0.75], out)
    b = [k for k in mixed if "lora_B" in k]
    assert b and all(torch.allclose(mixed[k], torch.full_like(mixed[k], 1.75)) for k in b)
    assert (out / "adapter_model.safetensors").is_file() and (out / "adapter_config.json").is_file()
    assert not (out / "model.safetensors").exists()


def test_lora_adapters_of_another_rank_are_refused(tmp_path, tiny_policy):
    pytest.importorskip("peft")
    paths = _adapters(tmp_path, tiny_policy, ranks=(4, 8))
    with pytest.raises(SoupError, match="does not come from the same base model"):
        soup(paths, [0.5, 0.5])


def test_adapters_and_full_weights_are_not_mixed(tmp_path, tiny_policy, checkpoints):
    pytest.importorskip("peft")
    adapter = _adapters(tmp_path, tiny_policy)[0]
    with pytest.raises(SoupError, match="cannot soup LoRA adapters"):
        soup([adapter, checkpoints[0]], [0.5, 0.5])
