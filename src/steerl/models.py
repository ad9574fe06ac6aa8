"""Policy, reference model and tokenizer: Hugging Face causal LMs, or the built-in tiny model.

The tiny model is a randomly initialised ``transformers`` config of a real architecture
(Llama or GPT-2) with a character-level tokenizer built with ``tokenizers``; it is what the
embedded default recipe trains and what the tests use. Any other name goes through
``AutoModelForCausalLM.from_pretrained`` (a hub id or a local directory).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from steerl.config import ConfigError, LoraConfig, ModelConfig, TinyModelConfig

SPECIAL_TOKENS = ["<pad>", "<bos>", "<eos>", "<unk>"]
#: Characters of the tiny tokenizer: digits, arithmetic signs and a little punctuation.
TINY_ALPHABET = "0123456789+-*=() .,\n"


class ModelLoadError(RuntimeError):
    """A model or tokenizer could not be loaded; the message says what to do."""


@dataclass
class Policy:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    device: torch.device
    dtype: torch.dtype


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(
            f"key 'model.device': got {name!r}; use auto, cpu, cuda or cuda:N"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"key 'model.device': got {name!r} but CUDA is not available on this machine; "
            "use model.device=auto or cpu"
        )
    return dev


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto``: bfloat16 on CUDA, float32 on the CPU."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def build_char_tokenizer(alphabet: str = TINY_ALPHABET) -> PreTrainedTokenizerBase:
    """A character-level tokenizer (one token per character) built with ``tokenizers``."""
    from tokenizers import Tokenizer, decoders, models, processors
    from transformers import PreTrainedTokenizerFast

    chars = list(dict.fromkeys(alphabet))
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + chars)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(SPECIAL_TOKENS)
    # Every sequence starts with <bos>, as with most hub tokenizers: an attention sink.
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
    )
    fast.padding_side = "left"
    return fast


def build_tiny_model(cfg: TinyModelConfig, vocab_size: int, tokenizer=None) -> PreTrainedModel:
    """A randomly initialised small Llama or GPT-2 (``torch`` RNG decides the weights)."""
    pad = tokenizer.pad_token_id if tokenizer is not None else 0
    bos = tokenizer.bos_token_id if tokenizer is not None else 1
    eos = tokenizer.eos_token_id if tokenizer is not None else 2
    if cfg.arch == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        conf = LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=cfg.hidden_size,
            intermediate_size=cfg.intermediate_size,
            num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_heads,
            num_key_value_heads=cfg.num_heads,
            max_position_embeddings=cfg.max_position_embeddings,
            pad_token_id=pad,
            bos_token_id=bos,
            eos_token_id=eos,
            tie_word_embeddings=True,
        )
        model = LlamaForCausalLM(conf)
    else:
        from transformers import GPT2Config, GPT2LMHeadModel

        conf = GPT2Config(
            vocab_size=vocab_size,
            n_embd=cfg.hidden_size,
            n_layer=cfg.num_layers,
            n_head=cfg.num_heads,
            n_inner=cfg.intermediate_size,
            n_positions=cfg.max_position_embeddings,
            pad_token_id=pad,
            bos_token_id=bos,
            eos_token_id=eos,
        )
        model = GPT2LMHeadModel(conf)
    return model


def load_policy(cfg: ModelConfig, weights_dir: str | Path | None = None) -> Policy:
    """Load the policy and tokenizer named by ``cfg`` (or saved in ``weights_dir``)."""
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    # model.cudnn_attention: cuDNN's SDPA backward made NaN gradients (see the key's comment)
    torch.backends.cuda.enable_cudnn_sdp(cfg.cudnn_attention)
    source = str(weights_dir) if weights_dir is not None else cfg.name
    if weights_dir is None and cfg.name == "tiny":
        tokenizer = build_char_tokenizer()
        model = build_tiny_model(cfg.tiny, len(tokenizer), tokenizer)
    else:
        tokenizer, model = _from_pretrained(source, cfg, dtype)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    model.to(device=device, dtype=dtype)
    if cfg.gradient_checkpointing:
        # non-reentrant: works when the inputs need no grad, and with the chunked LM head;
        # transformers >= 5.2x calls it activation checkpointing (the old name warns)
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        model.config.use_cache = False
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    if cfg.lora.enabled:
        model = apply_lora(model, cfg.lora)
    return Policy(model=model, tokenizer=tokenizer, device=device, dtype=dtype)


def is_peft_model(model: torch.nn.Module) -> bool:
    """True for a ``peft`` wrapper (``PeftModel``); checked without importing ``peft``."""
    return type(model).__module__.startswith("peft.") and hasattr(model, "get_base_model")


def unwrap_peft(model: torch.nn.Module) -> torch.nn.Module:
    """The ``transformers`` model inside a ``peft`` wrapper (its linear layers carry the
    adapters in place), or ``model`` itself."""
    return model.get_base_model() if is_peft_model(model) else model


def apply_lora(model: PreTrainedModel, cfg: LoraConfig) -> PreTrainedModel:
    """Wrap ``model`` with ``peft`` LoRA adapters (``model.lora``): base weights frozen, the
    adapters (and ``modules_to_save``) trainable; ``lora_B`` starts at zero, so the wrapped
    model computes exactly what ``model`` did."""
    try:
        from peft import LoraConfig as PeftLoraConfig
        from peft import get_peft_model
    except ImportError:
        raise ConfigError(
            "key 'model.lora.enabled': got true but peft is not installed; "
            "pip install 'steerl[lora]' (or set model.lora.enabled=false)"
        ) from None
    peft_cfg = PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=cfg.target_modules,
        modules_to_save=list(cfg.modules_to_save) or None,
        fan_in_fan_out=getattr(model.config, "model_type", "") == "gpt2",  # Conv1D: (in, out)
        task_type="CAUSAL_LM",
    )
    try:
        with warnings.catch_warnings():  # peft reads deprecated transformers attributes
            warnings.simplefilter("ignore", FutureWarning)
            return get_peft_model(model, peft_cfg)
    except ValueError as e:
        linear = sorted(
            {
                n.rsplit(".", 1)[-1]
                for n, m in model.named_modules()
                if type(m).__name__ in ("Linear", "Conv1D")
            }
        )
        raise ConfigError(
            f"key 'model.lora.target_modules': got {cfg.target_modules!r} "
            f"(modules_to_save={cfg.modules_to_save!r}); peft: {str(e).splitlines()[0]}. "
            f"Allowed: 'all-linear' or names among this model's linear layers: {', '.join(linear)}"
        ) from None


class AdapterOffReference:
    """The frozen reference of a LoRA policy: the policy itself with its adapters disabled
    (``peft``'s ``disable_adapter()``), i.e. the base model, without a second copy in memory.

    Only valid while the base weights are what RL started from: no warm-up (a warm-up trains
    the adapters before RL, and the reference must then include them: a copy is made).
    """

    def __init__(self, model: PreTrainedModel):
        self.model = model

    def __repr__(self) -> str:
        return f"AdapterOffReference({type(self.model).__name__})"


@contextmanager
def reference_view(reference) -> Iterator[torch.nn.Module]:
    """The reference as a model to run forward (no grad): a frozen copy as it is, or the LoRA
    policy with adapters disabled and in eval mode (as a copy would be) for the duration."""
    if not isinstance(reference, AdapterOffReference):
        yield reference
        return
    model = reference.model
    was_training = model.training
    model.eval()
    try:
        with model.disable_adapter():
            yield model
    finally:
        model.train(was_training)


def _from_pretrained(source: str, cfg: ModelConfig, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    local = Path(source)
    looks_local = local.exists() or source.startswith((".", "/", "~"))
    if looks_local and not (local / "config.json").is_file():
        raise ModelLoadError(
            f"model {source!r}: no such model directory (expected a folder with config.json "
            "and weights, as written by save_pretrained). Fix model.name, or use "
            "model.name=tiny for the built-in model."
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=cfg.trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=dtype, trust_remote_code=cfg.trust_remote_code
        )
    except Exception as e:  # noqa: BLE001 - every load failure gets the same advice
        raise ModelLoadError(
            f"could not load model {source!r}: {type(e).__name__}: {str(e).splitlines()[0]}. "
            "model.name must be a Hugging Face hub id (needs network access) or a local "
            "directory with config.json, tokenizer files and weights; model.name=tiny uses "
            "the built-in model."
        ) from None
    return tokenizer, model


def make_reference(
    policy: Policy, cfg: ModelConfig, kl_coef: float, base_is_start: bool = True
) -> PreTrainedModel | AdapterOffReference | None:
    """A frozen copy of the policy for the KL term, or ``None`` when it is not needed.

    With LoRA and ``base_is_start`` (RL starts from the base model: no warm-up), the
    reference is the policy with its adapters disabled (:class:`AdapterOffReference`, run it
    through :func:`reference_view`) instead of a copy.
    """
    want = cfg.reference == "copy" or (cfg.reference == "auto" and kl_coef > 0)
    if not want:
        return None
    if is_peft_model(policy.model) and base_is_start:
        return AdapterOffReference(policy.model)
    ref = copy.deepcopy(policy.model)
    ref.eval()
    ref.requires_grad_(False)
    return ref


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
