from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from steerl.config import ModelConfig
from steerl.models import (
    SPECIAL_TOKENS,
    TINY_ALPHABET,
    ModelLoadError,
    build_char_tokenizer,
    load_policy,
    make_reference,
)


def _logits(model: torch.nn.Module, tokenizer, texts: list[str]) -> torch.Tensor:
    enc = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(input_ids=enc.input_ids, attention_mask=enc.attention_mask).logits


# --------------------------------------------------------------------------- tokenizer
def test_char_tokenizer_round_trips_text():
    tok = build_char_tokenizer()
    for text in ["12+34=", "0987654321", TINY_ALPHABET, "(1 * 2) - 3, 4.\n5"]:
        ids = tok(text).input_ids
        assert len(ids) == len(text) + 1  # one token per character, plus <bos>
        assert tok.decode(ids, skip_special_tokens=True) == text


def test_char_tokenizer_special_tokens_and_bos():
    tok = build_char_tokenizer()
    assert tok.convert_ids_to_tokens(list(range(4))) == SPECIAL_TOKENS
    assert len(tok) == len(SPECIAL_TOKENS) + len(TINY_ALPHABET)
    ids = tok("47+85=").input_ids
    assert ids[0] == tok.bos_token_id
    assert tok.convert_ids_to_tokens(ids) == ["<bos>", "4", "7", "+", "8", "5", "="]
    assert tok("47", add_special_tokens=False).input_ids == tok("47").input_ids[1:]
    assert tok.padding_side == "left"
    batch = tok(["1=", "123="], padding=True).input_ids
    assert batch[0][:2] == [tok.pad_token_id] * 2 and batch[0][2] == tok.bos_token_id


def test_char_tokenizer_unknown_characters():
    tok = build_char_tokenizer()
    ids = tok("1a2?", add_special_tokens=False).input_ids
    assert ids == [
        tok.convert_tokens_to_ids("1"),
        tok.unk_token_id,
        tok.convert_tokens_to_ids("2"),
        tok.unk_token_id,
    ]


# --------------------------------------------------------------------------- tiny models
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_tiny_model_builds(arch, tiny_model_config):
    policy = load_policy(tiny_model_config(arch))
    tok = policy.tokenizer
    expected = {"llama": "LlamaForCausalLM", "gpt2": "GPT2LMHeadModel"}[arch]
    assert type(policy.model).__name__ == expected
    assert policy.device == torch.device("cpu") and policy.dtype == torch.float32
    assert policy.model.config.hidden_size == 32
    assert policy.model.generation_config.pad_token_id == tok.pad_token_id
    logits = _logits(policy.model, tok, ["1+2=", "12+34="])
    assert logits.shape == (2, 7, len(tok))
    assert torch.isfinite(logits).all()


def test_tiny_model_weights_follow_torch_seed(tiny_model_config):
    cfg = tiny_model_config()
    torch.manual_seed(3)
    a = load_policy(cfg).model.state_dict()
    torch.manual_seed(3)
    b = load_policy(cfg).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- from_pretrained
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_saved_model_loads_from_local_dir_with_identical_logits(tmp_path, arch, tiny_policy):
    policy = tiny_policy(arch, scale=0.3)
    policy.model.save_pretrained(tmp_path)
    policy.tokenizer.save_pretrained(tmp_path)

    loaded = load_policy(ModelConfig(name=str(tmp_path), device="cpu", dtype="float32"))
    loaded.model.eval()
    assert type(loaded.model) is type(policy.model)
    texts = ["47+85=", "1=", "123+456="]
    assert loaded.tokenizer(texts).input_ids == policy.tokenizer(texts).input_ids
    assert loaded.tokenizer.padding_side == "left"
    assert torch.equal(
        _logits(loaded.model, loaded.tokenizer, texts),
        _logits(policy.model, policy.tokenizer, texts),
    )


def test_random_qwen2_from_local_dir(tmp_path):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = build_char_tokenizer()
    conf = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(conf).eval()
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)

    policy = load_policy(ModelConfig(name=str(tmp_path), device="cpu", dtype="float32"))
    policy.model.eval()
    assert type(policy.model).__name__ == "Qwen2ForCausalLM"
    assert policy.tokenizer("12+3=").input_ids[0] == policy.tokenizer.bos_token_id
    assert policy.tokenizer.pad_token_id == tok.pad_token_id
    texts = ["12+3=", "9="]
    assert torch.equal(_logits(policy.model, policy.tokenizer, texts), _logits(model, tok, texts))


def test_missing_local_model_dir_says_what_to_do(tmp_path):
    with pytest.raises(ModelLoadError) as e:
        load_policy(ModelConfig(name=str(tmp_path / "no-such-model"), device="cpu"))
    msg = str(e.value)
    assert "no-such-model" in msg
    assert "config.json" in msg and "model.name" in msg and "model.name=tiny" in msg


def test_local_dir_without_config_json(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="no such model directory"):
        load_policy(ModelConfig(name=str(tmp_path), device="cpu"))


def test_broken_model_dir_raises_model_load_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))
    with pytest.raises(ModelLoadError) as e:
        load_policy(ModelConfig(name=str(tmp_path), device="cpu"))
    assert "could not load model" in str(e.value) and "model.name=tiny" in str(e.value)


def test_weights_dir_argument_overrides_name(tmp_path: Path, tiny_policy, tiny_model_config):
    policy = tiny_policy(scale=0.3)
    policy.model.save_pretrained(tmp_path)
    policy.tokenizer.save_pretrained(tmp_path)
    loaded = load_policy(tiny_model_config(), weights_dir=tmp_path)  # name is still "tiny"
    loaded.model.eval()
    texts = ["5+5="]
    assert torch.equal(
        _logits(loaded.model, loaded.tokenizer, texts),
        _logits(policy.model, policy.tokenizer, texts),
    )


# --------------------------------------------------------------------------- reference
def test_no_reference_without_kl(tiny_policy, tiny_model_config):
    policy = tiny_policy()
    assert make_reference(policy, tiny_model_config(), kl_coef=0.0) is None
    assert make_reference(policy, tiny_model_config(reference="none"), kl_coef=0.1) is None


@pytest.mark.parametrize(("reference", "kl"), [("auto", 0.05), ("copy", 0.0)])
def test_reference_is_a_frozen_copy(tiny_policy, tiny_model_config, reference, kl):
    policy = tiny_policy()
    policy.model.train()
    ref = make_reference(policy, tiny_model_config(reference=reference), kl_coef=kl)
    assert ref is not None and ref is not policy.model
    assert not ref.training
    assert all(not p.requires_grad for p in ref.parameters())
    assert all(p.requires_grad for p in policy.model.parameters())
    before = {k: v.clone() for k, v in ref.state_dict().items()}
    assert all(torch.equal(before[k], v) for k, v in policy.model.state_dict().items())
    with torch.no_grad():
        for p in policy.model.parameters():
            p.add_(1.0)
    assert all(torch.equal(before[k], v) for k, v in ref.state_dict().items())


def test_cudnn_attention_key_switches_sdpa_cudnn_backend(tiny_model_config):
    """model.cudnn_attention (default false) sets PyTorch's process-wide cuDNN SDPA switch:
    cuDNN's attention backward made NaN gradients on H200s (pytorch/pytorch#196678)."""
    before = torch.backends.cuda.cudnn_sdp_enabled()
    try:
        load_policy(tiny_model_config())
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        load_policy(tiny_model_config(cudnn_attention=True))
        assert torch.backends.cuda.cudnn_sdp_enabled()
    finally:
        torch.backends.cuda.enable_cudnn_sdp(before)
    with pytest.raises(ValueError, match="cudnn_attention"):
        ModelConfig(cudnn_attention="sometimes")
