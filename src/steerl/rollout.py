"""Grouped sampling from the policy with a KV cache.

``generate`` takes left-padded prompts and samples completions token by token, reusing the
key/value cache; finished rows (EOS) stop contributing. The sampling log-probabilities are
those of the temperature-scaled distribution the tokens were drawn from (before top-p
truncation), which is what an importance ratio against the sampler needs.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
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
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
    cum = sorted_logits.softmax(-1).cumsum(-1)
    drop = cum - sorted_logits.softmax(-1) > top_p  # keep the token that crosses top_p
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(-1, order, sorted_logits)


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
) -> Rollout:
    """Sample one completion per row of ``prompt_ids`` (repeat rows for groups)."""
    was_training = model.training
    model.eval()
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
        done = done | (tok == eos_token_id)
        steps = t + 1
        # One host sync per token: cheap for short completions; lets the loop stop early.
        if bool(done.all()) or t == max_new_tokens - 1:
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

    tokens, logprobs = tokens[:, :steps], logprobs[:, :steps]
    is_eos = tokens == eos_token_id
    # mask: every token up to and including the first EOS
    after_eos = (is_eos.long().cumsum(-1) - is_eos.long()) > 0
    comp_mask = (~after_eos).long()
    truncated = ~is_eos.any(-1)
    if was_training:
        model.train()
    return Rollout(prompt_ids, prompt_mask, tokens, comp_mask, logprobs * comp_mask, truncated)


def decode_completions(tokenizer: PreTrainedTokenizerBase, rollout: Rollout) -> list[str]:
    """Completion texts without special tokens (EOS and padding)."""
    ids = (rollout.completion_ids * rollout.completion_mask).tolist()
    masks = rollout.completion_mask.tolist()
    return [
        tokenizer.decode([t for t, m in zip(row, mrow) if m], skip_special_tokens=True)
        for row, mrow in zip(ids, masks)
    ]
