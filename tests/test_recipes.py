"""Packaged recipes run end to end offline (hub ids swapped for local paths only)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from steerl.config import list_recipes, load_config
from steerl.rollout import encode_prompts
from steerl.trainer import Trainer

DATA = Path(__file__).parent / "data"

#: The chat template of the Qwen2.5 instruct models, reduced to user/assistant turns.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def byte_level_tokenizer():
    """A byte-level BPE tokenizer without merges (one token per byte), as Qwen2's is loaded.

    ``AutoTokenizer`` picks ``Qwen2Tokenizer`` for a ``qwen2`` model folder, which applies
    byte-level pre-tokenization; a vocabulary of the 256 byte symbols keeps it lossless.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    special = ["<pad>", "<bos>", "<eos>", "<unk>"]
    symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {t: i for i, t in enumerate(special + symbols)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(special)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
    )
    return fast


def make_local_qwen2(path: Path) -> Path:
    """A randomly initialised Qwen2 (the Qwen2.5 architecture, tiny dims) with a chat template."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = byte_level_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    conf = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(0)
    Qwen2ForCausalLM(conf).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_packaged_recipes_validate():
    for name in list_recipes():
        cfg = load_config(name)
        assert cfg.recipe == name


def test_gsm8k_recipe_runs_offline_with_local_model_and_dataset(tmp_path, monkeypatch):
    """The hub recipe, with only model.name and task.dataset pointed at local copies."""
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    model_dir = make_local_qwen2(tmp_path / "qwen2-tiny")
    hub = load_config("gsm8k_qwen")
    assert hub.model.name == "Qwen/Qwen2.5-0.5B-Instruct"
    assert hub.task.dataset == "openai/gsm8k"
    cfg = load_config(
        "gsm8k_qwen",
        [
            f"model.name={model_dir}",
            f"task.dataset={DATA / 'gsm8k_like'}",
            # shrink the run, not the code path
            "model.device=cpu",
            "rollout.prompts_per_step=2",
            "rollout.group_size=2",
            "rollout.max_new_tokens=8",
            "train.steps=2",
            "schedule.warmup_steps=0",
            "train.eval_every=0",
            "train.threads=1",
            "logging.progress=false",
            "logging.tensorboard=false",
            "logging.report=false",
        ],
    )
    run = tmp_path / "run"
    trainer = Trainer(cfg, run)
    ids, _ = encode_prompts(trainer.tokenizer, ["2+2?"], trainer.device, chat_template=True)
    assert trainer.tokenizer.decode(ids[0]).startswith("<|im_start|>user\n2+2?")
    summary = trainer.train()
    assert summary["completed"] and summary["rl_steps"] == 2
    assert set(summary["final"]) == {"0"}  # GSM8K has no difficulty levels
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    rl = [x for x in lines if x.get("phase") == "rl"]
    assert any("train/reward/math_answer/mean" in x for x in rl)
    assert any("train/reward/format/mean" in x for x in rl)
    sample = json.loads((run / "samples.jsonl").read_text().splitlines()[0])
    assert "How many" in sample["prompt"]


@pytest.mark.parametrize("recipe", ["default"])
def test_recipe_names_a_task_with_levels(recipe):
    cfg = load_config(recipe)
    assert cfg.task.arithmetic.levels


def test_custom_reward_recipe_imports_the_user_module(tmp_path, monkeypatch, tiny_overrides):
    """The packaged custom_reward recipe runs from the repository root (examples/ importable)."""
    monkeypatch.chdir(Path(__file__).parent.parent)
    cfg = load_config(
        "custom_reward", [*tiny_overrides, "train.eval_every=0", f"train.out_dir={tmp_path}"]
    )
    assert cfg.rewards[1].name == "examples.my_rewards:short_and_correct"
    summary = Trainer(cfg, tmp_path).train()
    assert summary["completed"]
    metrics = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    key = "train/reward/examples.my_rewards.short_and_correct/mean"
    assert any(key in m for m in metrics if m.get("phase") == "rl")


def test_dapo_recipe_switches_the_loss_preset():
    cfg = load_config("dapo")
    assert cfg.loss.preset == "dapo"
    assert cfg.loss.clip_high == 0.28 and cfg.loss.aggregation == "token-mean"
    assert cfg.loss.mask_truncated
    other = load_config("dapo", ["loss.preset=dr_grpo"])
    assert other.loss.aggregation == "seq-mean-token-sum-norm"


def test_tiny_recipe_trains_in_seconds(tmp_path):
    from steerl.trainer import Trainer

    cfg = load_config("tiny", [f"train.out_dir={tmp_path}", "logging.progress=false"])
    summary = Trainer(cfg, tmp_path).train()
    assert summary["completed"] and summary["rl_steps"] == 4 and summary["warmup_steps"] == 3
