"""``reward_model``: score prompt + completion with a sequence-classification model.

Any ``AutoModelForSequenceClassification`` checkpoint (hub id or local directory) works; the
score is the logit of ``label`` (default 0: the single output of a scalar reward model). The
model and tokenizer are loaded on first use and cached per process (one copy per
``(model, device, dtype)``), so a recipe can name the same reward model twice at no cost.
"""

from __future__ import annotations

import threading
from typing import Any

from steerl.rewards.base import reward

_CACHE: dict[tuple[str, str, str], tuple[Any, Any]] = {}
_LOCK = threading.Lock()
_DTYPES = ("auto", "float32", "bfloat16", "float16")


def _device(device: str | None) -> str:
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


def load_reward_model(
    model: str, device: str | None = None, dtype: str = "auto", trust_remote_code: bool = False
) -> tuple[Any, Any]:
    """(model, tokenizer), loaded once per process and kept in eval mode without gradients."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    dev = _device(device)
    if dtype == "auto":
        dtype = "bfloat16" if dev.startswith("cuda") else "float32"
    key = (str(model), dev, dtype)
    with _LOCK:
        if key not in _CACHE:
            tok = AutoTokenizer.from_pretrained(model, trust_remote_code=trust_remote_code)
            if tok.pad_token is None:
                tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
            tok.padding_side = "right"  # this instance is ours alone
            net = AutoModelForSequenceClassification.from_pretrained(
                model, dtype=getattr(torch, dtype), trust_remote_code=trust_remote_code
            )
            if net.config.pad_token_id is None:
                net.config.pad_token_id = tok.pad_token_id
            net.to(dev).eval().requires_grad_(False)
            _CACHE[key] = (net, tok)
        return _CACHE[key]


def clear_cache() -> None:
    """Drop the cached reward models (frees their memory)."""
    with _LOCK:
        _CACHE.clear()


def _validate(args: dict[str, Any]) -> dict[str, Any]:
    model = args.get("model")
    if not isinstance(model, str) or not model:
        raise ValueError(
            f"reward 'reward_model' needs args.model (a hub id or a local directory), got {model!r}"
        )
    for key, lo in (("batch_size", 1), ("label", 0), ("max_length", 1)):
        v = args.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < lo):
            raise ValueError(f"reward 'reward_model': arg {key}={v!r} must be an integer >= {lo}")
    if args.get("dtype", "auto") not in _DTYPES:
        raise ValueError(
            f"reward 'reward_model': arg dtype={args['dtype']!r} must be one of "
            f"{', '.join(_DTYPES)}"
        )
    return args


@reward(
    "reward_model",
    "logit of a sequence-classification model (hub id or directory) on prompt + completion",
    validate_args=_validate,
)
def reward_model(
    prompts: list[str],
    completions: list[str],
    *,
    model: str,
    label: int = 0,
    batch_size: int = 16,
    device: str | None = None,
    dtype: str = "auto",
    max_length: int | None = None,
    separator: str = "",
    trust_remote_code: bool = False,
) -> list[float | None]:
    """The ``label`` logit of ``AutoModelForSequenceClassification`` on prompt + completion.

    Texts are ``prompt + separator + completion``, scored in batches of ``batch_size``
    (right-padded, truncated to ``max_length`` tokens when set) on ``device`` (default:
    CUDA if present, else CPU) in ``dtype`` (auto: bf16 on CUDA, fp32 on CPU).
    """
    import torch

    net, tok = load_reward_model(model, device, dtype, trust_remote_code)
    n_labels = int(getattr(net.config, "num_labels", 1))
    if label >= n_labels:
        raise ValueError(f"label={label} but the model {model!r} has {n_labels} output(s)")
    texts = [f"{p}{separator}{c}" for p, c in zip(prompts, completions, strict=True)]
    dev = next(net.parameters()).device
    scores: list[float | None] = []
    for i in range(0, len(texts), batch_size):
        enc = tok(
            texts[i : i + batch_size],
            return_tensors="pt",
            padding=True,
            truncation=max_length is not None,
            max_length=max_length,
        ).to(dev)
        with torch.inference_mode():
            logits = net(**enc).logits
        scores.extend(float(x) for x in logits[:, label].float().cpu())
    return scores
