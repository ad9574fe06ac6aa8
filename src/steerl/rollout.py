"""Grouped sampling from the policy with a KV cache.

``generate`` takes left-padded prompts and samples completions token by token, reusing the
key/value cache; finished rows (EOS) stop contributing. Two backends (``rollout.backend``):
``eager`` runs the model's HF forward with its dynamic cache (any model); ``static``
(:mod:`steerl.generation.static`) owns a static cache and replays one CUDA graph per token.
The sampling log-probabilities are those of the temperature-scaled distribution the tokens
were drawn from (before top-p truncation), which is what an importance ratio against the
sampler needs.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from steerl import distributed as ddp

if TYPE_CHECKING:  # transformers takes ~1.5 s to import; curriculum's CLI needs none of it
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass
class Rollout:
    """A batch of prompts and their completions.

    Shapes: ``prompt_ids``/``prompt_mask``: (N, P) left-padded; ``completion_ids``,
    ``completion_mask`` and ``logprobs``: (N, T), right-padded (mask includes the EOS token);
    ``truncated``: (N,) true where the completion hit ``max_new_tokens`` without EOS.
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    logprobs: torch.Tensor
    truncated: torch.Tensor

    @property
    def num_tokens(self) -> int:
        return int(self.completion_mask.sum())

    def index(self, idx: torch.Tensor) -> Rollout:
        return Rollout(
            *(t[idx] for t in (self.prompt_ids, self.prompt_mask, self.completion_ids)),
            self.completion_mask[idx],
            self.logprobs[idx],
            self.truncated[idx],
        )


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    device: torch.device,
    chat_template: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenize prompts, left-padded: (ids, mask), each (N, P)."""
    if chat_template:
        texts = [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True
            )
            for t in texts
        ]
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=not chat_template)
    return enc.input_ids.to(device), enc.attention_mask.to(device)


def position_ids_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding: ``cumsum(mask) - 1``, clamped at 0."""
    return (mask.long().cumsum(-1) - 1).clamp_min(0)


def _cache_argument(model: PreTrainedModel) -> str:
    """``cache`` in recent transformers, ``past_key_values`` before."""
    from steerl.models import unwrap_peft

    params = inspect.signature(unwrap_peft(model).forward).parameters  # peft: (*args, **kw)
    return "cache" if "cache" in params else "past_key_values"


def _top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
    cum = sorted_logits.softmax(-1).cumsum(-1)
    drop = cum - sorted_logits.softmax(-1) > top_p  # keep the token that crosses top_p
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(-1, order, sorted_logits)


#: Sampler backends: ``eager`` (HF forward with a dynamic cache, any model) and ``static``
#: (steerl.generation.static: static cache, one CUDA graph per token on CUDA).
BACKENDS = ("eager", "static")


def resolve_backend(name: str, model: PreTrainedModel) -> str:
    """``auto`` -> ``static`` on CUDA for supported models, else ``eager``; checks ``static``.

    Raises :class:`~steerl.config.ConfigError` naming ``rollout.backend`` when ``static`` is
    asked for a model it does not support.
    """
    from steerl.config import ConfigError
    from steerl.generation.static import unsupported_reason

    reason = unsupported_reason(model)
    if name == "auto":
        on_cuda = next(model.parameters()).device.type == "cuda"
        if on_cuda and reason is not None:
            logging.getLogger("steerl.rollout").info(
                "rollout.backend=auto uses the eager sampler: the static one cannot run %s", reason
            )
        return "static" if on_cuda and reason is None else "eager"
    if name == "static" and reason is not None:
        raise ConfigError(
            f"key 'rollout.backend': got 'static' but the static sampler cannot run {reason}; "
            "allowed for this model: auto, eager"
        )
    if name not in BACKENDS:
        raise ConfigError(
            f"key 'rollout.backend': got {name!r}; allowed values are auto, eager, static"
        )
    return name


def resolve_kernels(name: str, model: PreTrainedModel, backend: str) -> str:
    """``rollout.kernels`` -> ``triton`` or ``torch`` for the static sampler's decode step
    (``triton``: fused decode layers, or with ``rollout.compile`` the Triton attention, MLP
    and sampling around the compiled layers; see :mod:`steerl.generation`).

    ``auto`` is ``triton`` when the static sampler runs on CUDA, Triton is installed and the
    model's head size suits the attention kernel; ``triton`` asked for where it cannot run
    raises :class:`~steerl.config.ConfigError` naming the key (on the CPU it runs under
    Triton's interpreter when ``TRITON_INTERPRET=1``: tests).
    """
    from steerl.config import ConfigError
    from steerl.generation import kernels

    if name not in ("auto", "triton", "torch"):
        raise ConfigError(
            f"key 'rollout.kernels': got {name!r}; allowed values are auto, triton, torch"
        )
    if name == "torch" or (name == "auto" and backend != "static"):
        return "torch"
    if backend != "static":
        raise ConfigError(
            f"key 'rollout.kernels': got 'triton' but the sampler is {backend!r} (the kernels "
            "serve rollout.backend=static); allowed here: auto, torch"
        )
    reason = kernels.unsupported_reason(model, interpreter_ok=name == "triton")
    if reason is None:
        return "triton"
    if name == "triton":
        raise ConfigError(
            f"key 'rollout.kernels': got 'triton' but {reason}; allowed here: auto, torch"
        )
    return "torch"


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    eos_token_id: int,
    pad_token_id: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    greedy: bool = False,
    generator: torch.Generator | None = None,
    backend: str = "eager",
    compile: bool = False,
    kernels: str = "torch",
    pdl: bool = True,
    ignore_eos: bool = False,
    keep_sampler: bool = True,
) -> Rollout:
    """Sample one completion per row of ``prompt_ids`` (repeat rows for groups).

    ``backend``: ``eager`` or ``static`` (see :data:`BACKENDS`; resolve ``auto`` first with
    :func:`resolve_backend`); ``compile`` applies to ``static`` on CUDA (``torch.compile`` of
    each decode layer); ``kernels`` (``torch`` or ``triton``, see :func:`resolve_kernels`)
    picks the static sampler's decode attention and sampling, ``pdl`` whether its fused
    layers' kernels launch early where supported
    (:func:`steerl.generation.kernels.pdl_launch`). ``ignore_eos`` samples past
    EOS: every completion is ``max_new_tokens`` long and counts as truncated (for benchmarks).
    ``keep_sampler=False`` frees the static sampler built for this call (evaluation batches).
    """
    was_training = model.training
    model.eval()
    eos = None if ignore_eos else eos_token_id
    kw = dict(
        max_new_tokens=max_new_tokens,
        eos_token_id=eos,
        pad_token_id=pad_token_id,
        temperature=temperature,
        top_p=top_p,
        greedy=greedy,
        generator=generator,
    )
    try:
        if backend == "static":
            from steerl.generation.samplers import static_generate

            tokens, logprobs, _ = static_generate(
                model,
                prompt_ids,
                prompt_mask,
                compile=compile,
                kernels=kernels,
                pdl=pdl,
                keep=keep_sampler,
                **kw,
            )
        else:
            tokens, logprobs = _eager_generate(model, prompt_ids, prompt_mask, **kw)
    finally:
        if was_training:
            model.train()
    if eos is None:
        comp_mask = torch.ones_like(tokens)
        truncated = torch.ones(tokens.shape[0], dtype=torch.bool, device=tokens.device)
    else:
        is_eos = tokens == eos
        # mask: every token up to and including the first EOS
        after_eos = (is_eos.long().cumsum(-1) - is_eos.long()) > 0
        comp_mask = (~after_eos).long()
        truncated = ~is_eos.any(-1)
    return Rollout(prompt_ids, prompt_mask, tokens, comp_mask, logprobs * comp_mask, truncated)


def _eager_generate(
    model: PreTrainedModel,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    eos_token_id: int | None,
    pad_token_id: int,
    temperature: float,
    top_p: float,
    greedy: bool,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """HF forward with its dynamic cache, one token at a time: (tokens, logprobs), (N, T)."""
    n = prompt_ids.shape[0]
    device = prompt_ids.device
    mask = prompt_mask.clone()
    pos = position_ids_from_mask(mask)
    cache_arg = _cache_argument(model)
    out = model(input_ids=prompt_ids, attention_mask=mask, position_ids=pos, use_cache=True)
    past = getattr(out, cache_arg)
    next_logits = out.logits[:, -1, :].float()
    last_pos = pos[:, -1:]

    tokens = torch.full((n, max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    logprobs = torch.zeros((n, max_new_tokens), dtype=torch.float32, device=device)
    done = torch.zeros(n, dtype=torch.bool, device=device)
    steps = 0
    for t in range(max_new_tokens):
        if greedy:
            logp = next_logits.log_softmax(-1)
            tok = logp.argmax(-1)
        else:
            scaled = next_logits / temperature
            logp = scaled.log_softmax(-1)
            filt = _top_p_filter(scaled, top_p) if top_p < 1.0 else scaled
            probs = filt.softmax(-1)
            tok = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        tok_lp = logp.gather(-1, tok[:, None]).squeeze(-1)
        tokens[:, t] = torch.where(done, pad_token_id, tok)
        logprobs[:, t] = torch.where(done, 0.0, tok_lp)
        if eos_token_id is not None:
            done = done | (tok == eos_token_id)
        steps = t + 1
        # One host sync per token: cheap for short completions; lets the loop stop early.
        ended = eos_token_id is not None and bool(done.all())
        if ddp.sharded():  # sharded layers gather on every rank: all stop at the same token
            ended = not ddp.any_rank(not ended)
        if t == max_new_tokens - 1 or ended:
            break
        mask = torch.cat([mask, torch.ones((n, 1), dtype=mask.dtype, device=device)], dim=1)
        last_pos = last_pos + 1
        out = model(
            input_ids=tokens[:, t : t + 1],
            attention_mask=mask,
            position_ids=last_pos,
            use_cache=True,
            **{cache_arg: past},
        )
        past = getattr(out, cache_arg)
        next_logits = out.logits[:, -1, :].float()
    return tokens[:, :steps], logprobs[:, :steps]


def decode_completions(tokenizer: PreTrainedTokenizerBase, rollout: Rollout) -> list[str]:
    """Completion texts without special tokens (EOS and padding)."""
    ids = (rollout.completion_ids * rollout.completion_mask).tolist()
    masks = rollout.completion_mask.tolist()
    return [
        tokenizer.decode([t for t, m in zip(row, mrow) if m], skip_special_tokens=True)
        for row, mrow in zip(ids, masks)
    ]
