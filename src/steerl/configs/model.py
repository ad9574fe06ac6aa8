"""Config sections ``model`` and ``model.tiny`` / ``model.lora``: the policy model."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from steerl.config_base import Section


class TinyModelConfig(Section):
    """The built-in tiny model: a randomly initialised `transformers` config."""

    arch: Literal["llama", "gpt2"] = "llama"  # architecture family of the config
    hidden_size: int = Field(64, ge=8)  # width of the residual stream
    num_layers: int = Field(4, ge=1)  # transformer blocks
    num_heads: int = Field(4, ge=1)  # attention heads (hidden_size must divide by it)
    intermediate_size: int = Field(256, ge=8)  # MLP width
    max_position_embeddings: int = Field(128, ge=16)  # longest prompt + completion

    @model_validator(mode="after")
    def _heads_divide(self) -> TinyModelConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} must be divisible by num_heads={self.num_heads}"
            )
        return self


class LoraConfig(Section):
    """LoRA adapters via ``peft`` (extra ``steerl[lora]``): only the adapters train.

    Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models" (arXiv:2106.09685):
    each targeted linear layer ``W`` becomes ``W + (alpha / r) B A``, ``A``: (r, in),
    ``B``: (out, r), ``B`` starting at zero.
    """

    enabled: bool = False  # wrap the policy with LoRA adapters (base weights frozen)
    r: int = Field(8, ge=1)  # rank of each adapter
    alpha: float = Field(16.0, gt=0)  # scaling numerator: the update is (alpha / r) B A
    dropout: float = Field(0.0, ge=0, lt=1)  # dropout on the adapters' input while training
    target_modules: list[str] | str = "all-linear"  # module names, or "all-linear" (no head)
    modules_to_save: list[str] = []  # further modules trained in full (e.g. ["lm_head"])

    @field_validator("target_modules")
    @classmethod
    def _targets(cls, v: list[str] | str) -> list[str] | str:
        if isinstance(v, str) and v != "all-linear":
            raise ValueError(
                f"model.lora.target_modules={v!r}: allowed are a list of module names "
                "(e.g. [q_proj, v_proj]) or the string 'all-linear'"
            )
        if isinstance(v, list) and (not v or not all(s.strip() for s in v)):
            raise ValueError(
                f"model.lora.target_modules={v!r}: allowed are a non-empty list of module "
                "names (e.g. [q_proj, v_proj]) or the string 'all-linear'"
            )
        return v


class ModelConfig(Section):
    name: str = "tiny"  # "tiny" (built-in), a Hugging Face hub id, or a local directory
    tiny: TinyModelConfig = TinyModelConfig()  # shape of the built-in model
    device: str = "auto"  # "auto" (CUDA if present, else CPU), "cpu", "cuda", "cuda:1", ...
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: bf16 on CUDA
    reference: Literal["auto", "copy", "none"] = "auto"  # frozen copy for KL; auto: if kl>0
    trust_remote_code: bool = False  # passed to from_pretrained
    chat_template: bool = False  # wrap prompts with the tokenizer's chat template
    gradient_checkpointing: bool = False  # recompute activations in backward
    # cuDNN's SDPA kernel, PyTorch's first pick on H100/H200: its backward returned NaN
    # gradients with a mask at lengths of 64 mod 128 (torch 2.11, pytorch/pytorch#196678)
    cudnn_attention: bool = False  # allow cuDNN attention (process-wide; off: flash/efficient)
    lora: LoraConfig = LoraConfig()  # train LoRA adapters instead of the full weights
