"""LoRA via peft (``model.lora``): config, the wrapped policy, the adapters-off reference, the
chunked LM head through the wrapper, sampler fallback, checkpoints and resume, and
``objectives.aggregate_params=lora`` with a gradient-level balancer."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file

from steerl.checkpoint import latest_checkpoint
from steerl.config import ConfigError, load_config
from steerl.logging import read_metrics
from steerl.logprobs import _decoder_and_head, completion_logprobs, gather_logprobs
from steerl.models import (
    AdapterOffReference,
    is_peft_model,
    load_policy,
    make_reference,
    reference_view,
)
from steerl.rollout import Rollout, position_ids_from_mask, resolve_backend
from steerl.trainer import Trainer

pytest.importorskip("peft")

#: The tiny Llama's attention projections (its linear layers: q/k/v/o_proj, gate/up/down_proj).
ATTN = "model.lora.target_modules=[q_proj,k_proj,v_proj,o_proj]"
LORA = ["model.lora.enabled=true", ATTN, "model.lora.r=4"]
#: Two rewards that vary on an untrained model, so groups keep a signal (and there are two
#: objectives for a gradient-level balancer).
TWO_REWARDS = [
    "rewards=[{name: format, args: {pattern: '\\d+'}}, "
    "{name: length_penalty, alias: short, args: {mode: linear, target: 2, coef: 0.1}}]",
    "curriculum.drop_zero_variance=false",
]


def _policy(tiny_config, *extra):
    torch.manual_seed(0)
    return load_policy(tiny_config(*LORA, *extra).model)


def _perturb_adapters(model) -> None:
    """Non-zero B (peft starts it at zero), so the adapters change the output."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def _batch(policy, n=3, t=5) -> Rollout:
    g = torch.Generator().manual_seed(2)
    v = policy.model.config.vocab_size
    prompt = torch.randint(4, v, (n, 4), generator=g)
    mask = torch.ones_like(prompt)
    mask[0, :2] = 0  # left padding
    comp = torch.randint(4, v, (n, t), generator=g)
    zeros = torch.zeros(n, t)
    return Rollout(prompt, mask, comp, torch.ones_like(comp), zeros, torch.zeros(n).bool())


def _full_forward_logprobs(model, batch: Rollout) -> torch.Tensor:
    ids = torch.cat([batch.prompt_ids, batch.completion_ids], 1)
    mask = torch.cat([batch.prompt_mask, batch.completion_mask], 1)
    out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask))
    p, t = batch.prompt_ids.shape[1], batch.completion_ids.shape[1]
    return gather_logprobs(out.logits[:, p - 1 : p - 1 + t], batch.completion_ids)


# --------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "override, needle",
    [
        ("model.lora.target_modules=q_proj", "'all-linear'"),
        ("model.lora.target_modules=[]", "non-empty list"),
        ("model.lora.r=0", "model.lora.r"),
        ("model.lora.dropout=1.0", "model.lora.dropout"),
        ("model.lora.rank=4", "allowed in this section: enabled, r, alpha"),
    ],
)
def test_bad_lora_values_name_the_key(override, needle):
    with pytest.raises(ConfigError, match="model.lora") as e:
        load_config("tiny", [override])
    assert needle in str(e.value)


def test_aggregate_params_lora_without_lora_is_refused_before_loading():
    with pytest.raises(ConfigError, match="needs model.lora.enabled=true"):
        load_config("tiny", ["objectives.balancer=upgrad", "objectives.aggregate_params=lora"])


def test_unknown_target_module_lists_the_model_linear_layers(tiny_config):
    cfg = tiny_config("model.lora.enabled=true", "model.lora.target_modules=[c_attn]")
    with pytest.raises(ConfigError, match="model.lora.target_modules") as e:
        load_policy(cfg.model)
    assert "q_proj" in str(e.value) and "c_attn" in str(e.value)


# --------------------------------------------------------------------------- the policy
def test_only_adapters_train_and_reach_the_optimizer(tiny_config, tmp_path):
    cfg = tiny_config(*LORA, "warmup.steps=0", "train.steps=1")
    trainer = Trainer(cfg, tmp_path)
    assert is_peft_model(trainer.model)
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    targets = {n.split(".")[-4] for n in trainable}  # ...self_attn.q_proj.lora_A.default.weight
    assert targets == {"q_proj", "k_proj", "v_proj", "o_proj"}
    in_optim = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    named = dict(trainer.model.named_parameters())
    assert in_optim == {id(named[n]) for n in trainable}
    frozen_before = {n: p.detach().clone() for n, p in named.items() if not p.requires_grad}
    assert trainer.train()["completed"]
    assert all(torch.equal(named[n], w) for n, w in frozen_before.items())


def test_chunked_head_finds_the_decoder_through_the_peft_wrapper(tiny_config):
    policy = _policy(tiny_config)
    _perturb_adapters(policy.model)
    decoder, head = _decoder_and_head(policy.model)
    inner = policy.model.get_base_model()
    assert decoder is inner.model and head is inner.lm_head
    batch = _batch(policy)
    with torch.no_grad():
        lp, _ = completion_logprobs(policy.model, batch)
        want = _full_forward_logprobs(policy.model, batch)
    torch.testing.assert_close(lp, want, rtol=1e-5, atol=1e-5)


def test_reference_is_the_base_model_with_adapters_off(tiny_config):
    cfg = tiny_config(*LORA, "loss.kl_coef=0.1", "warmup.steps=0")
    torch.manual_seed(0)
    base = load_policy(tiny_config().model).model  # the same weights, without adapters
    torch.manual_seed(0)
    trainer_policy = load_policy(cfg.model)
    ref = make_reference(trainer_policy, cfg.model, 0.1, base_is_start=True)
    assert isinstance(ref, AdapterOffReference) and ref.model is trainer_policy.model
    _perturb_adapters(trainer_policy.model)
    trainer_policy.model.train()
    batch = _batch(trainer_policy)
    with torch.no_grad():
        with reference_view(ref) as m:
            ref_lp, _ = completion_logprobs(m, batch)
        pol_lp, _ = completion_logprobs(trainer_policy.model, batch)
        base_lp, _ = completion_logprobs(base, batch)
    torch.testing.assert_close(ref_lp, base_lp, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(pol_lp, base_lp)  # the adapters are back on afterwards
    assert trainer_policy.model.training  # and the train mode is restored
    # a warm-up trains the adapters before RL: the reference is then a frozen copy
    copied = make_reference(trainer_policy, cfg.model, 0.1, base_is_start=False)
    assert is_peft_model(copied) and copied is not trainer_policy.model


def test_static_sampler_refuses_peft_and_auto_falls_back_to_eager(tiny_config):
    policy = _policy(tiny_config)
    assert resolve_backend("auto", policy.model) == "eager"
    with pytest.raises(ConfigError, match="rollout.backend.*peft"):
        resolve_backend("static", policy.model)


def test_eager_sampler_uses_the_adapters(tiny_config):
    from steerl.rollout import generate

    policy = _policy(tiny_config)
    plain = copy.deepcopy(policy.model)
    _perturb_adapters(policy.model)
    ids = torch.tensor([[1, 5, 6, 7], [1, 8, 9, 10]])
    kw = dict(max_new_tokens=6, eos_token_id=-1, pad_token_id=0, greedy=True)
    out = generate(policy.model, ids, torch.ones_like(ids), **kw)
    # the sampler's log-probs are those of the adapted model (teacher-forced check)
    with torch.no_grad():
        lp, _ = completion_logprobs(policy.model, out)
    torch.testing.assert_close(out.logprobs, lp, rtol=1e-4, atol=1e-4)
    base = generate(plain, ids, torch.ones_like(ids), **kw)
    assert not torch.allclose(out.logprobs, base.logprobs)


# --------------------------------------------------------------------------- checkpoints
def _adapter(run_dir) -> dict[str, torch.Tensor]:
    return load_file(latest_checkpoint(run_dir) / "adapter_model.safetensors")


def _numeric(rec: dict) -> dict:
    return {
        k: v
        for k, v in rec.items()
        if not k.startswith("time/") and (v is None or isinstance(v, (int, float)))
    }


def test_checkpoint_holds_the_adapter_in_peft_format(tiny_config, tmp_path):
    cfg = tiny_config(*LORA, "warmup.steps=0", "train.steps=1")
    Trainer(cfg, tmp_path).train()
    ck = latest_checkpoint(tmp_path)
    assert (ck / "adapter_model.safetensors").is_file() and not (ck / "model.safetensors").exists()
    saved = json.loads((ck / "adapter_config.json").read_text())
    assert saved["peft_type"] == "LORA" and saved["r"] == 4
    assert sorted(saved["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    assert all("lora_" in k for k in _adapter(tmp_path))


def test_lora_resume_continues_exactly(tmp_path, tiny_config):
    extra = (*LORA, *TWO_REWARDS, "loss.kl_coef=0.05", "train.save_every=1")
    run_a, run_b = tmp_path / "a", tmp_path / "b"
    Trainer(tiny_config(*extra), run_a).train()
    first = Trainer(tiny_config(*extra, "train.stop_after=5"), run_b).train()
    assert not first["completed"] and latest_checkpoint(run_b).name == "step_5"
    summary = Trainer(tiny_config(*extra), run_b).train()
    assert summary["completed"] and summary["steps"] == 7
    after_a = [_numeric(r) for r in read_metrics(run_a) if r["step"] > 5]
    after_b = [_numeric(r) for r in read_metrics(run_b) if r["step"] > 5]
    assert after_a and after_b == after_a
    wa, wb = _adapter(run_a), _adapter(run_b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert any(wa[k].abs().sum() > 0 for k in wa if "lora_B" in k)  # the adapters trained


def test_adapter_checkpoint_into_a_full_model_is_refused(tiny_config, tmp_path):
    Trainer(tiny_config(*LORA, "warmup.steps=0", "train.steps=1"), tmp_path).train()
    full = Trainer(tiny_config("warmup.steps=0", "train.steps=1"), tmp_path)
    with pytest.raises(RuntimeError, match="holds LoRA adapters but model.lora.enabled=false"):
        full.resume()


# --------------------------------------------------------------------------- aggregation
def test_upgrad_aggregates_on_the_adapters(tiny_config, tmp_path):
    cfg = tiny_config(
        *LORA,
        *TWO_REWARDS,
        "warmup.steps=0",
        "train.steps=2",
        "loss.aux=[{name: sft, coef: 0.1}]",  # two terms: the policy loss and SFT
        "objectives.balancer=upgrad",
        "objectives.aggregate_params=lora",
    )
    trainer = Trainer(cfg, tmp_path)
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    assert trainer.train()["completed"]
    described = json.loads((tmp_path / "balancer.json").read_text())
    assert described["aggregate_params"] == "lora"
    assert described["aggregated"] == trainable  # every adapter tensor, nothing else
    assert described["plain_sum"] == []
    rl = [m for m in read_metrics(tmp_path) if m.get("phase") == "rl"]
    assert any(k.startswith("balancer/") for m in rl for k in m)
    after = dict(trainer.model.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and changed <= set(trainable)  # the base stayed frozen


def test_aggregate_params_lora_on_a_model_without_adapters_is_an_empty_set_error(tiny_policy):
    from steerl.objectives.restrict import resolve_params

    with pytest.raises(ValueError, match="empty parameter set.*is model.lora enabled"):
        resolve_params(tiny_policy().model, "lora", balancer="upgrad")


def test_difficulty_profile_samples_with_a_lora_run(tiny_config, tmp_path):
    from steerl.curriculum.profile import profile_difficulty

    cfg = tiny_config(*LORA, "warmup.steps=0", "train.steps=1")
    Trainer(cfg, tmp_path / "run").train()
    res = profile_difficulty(
        cfg, tmp_path / "profile.jsonl", k=2, run_dir=tmp_path / "run", limit=4
    )
    assert res  # the adapter checkpoint loads onto the rebuilt base (no model.safetensors)


def test_spike_rollback_restores_the_adapter(tiny_config, tmp_path):
    from test_fault_injection import BASE, Faults, gstep, spikes

    from steerl.trainer import Callback

    class AtStep(Callback):
        def __init__(self, step):
            self.step, self.after, self.saved, self.metrics = step, None, None, {}

        def on_step_end(self, trainer, step, metrics):
            if step == self.step:
                self.metrics = dict(metrics)
                self.after = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
                self.saved = _adapter(trainer.run_dir)

    cfg = tiny_config(*LORA, *BASE, spikes("rollback"), "train.save_every=1")
    probe = AtStep(gstep(3))
    trainer = Trainer(cfg, tmp_path, callbacks=[probe])
    Faults(trainer, spike={3})
    assert trainer.train()["completed"]
    assert probe.metrics["stability/action"] == "rollback"
    # right after the rollback the adapters are the newest checkpoint's
    for k, v in probe.saved.items():
        live = k.replace(".lora_A.weight", ".lora_A.default.weight").replace(
            ".lora_B.weight", ".lora_B.default.weight"
        )
        assert torch.equal(probe.after[live], v), k
