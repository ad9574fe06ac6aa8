"""Greedy decoding of held-out prompts, shared by evaluation and the Pareto tools.

:func:`greedy_chunks` decodes prompts in chunks with the rollout's sampler backend: the static
(CUDA-graph) sampler decodes chunks of one shape (the last is padded with repeats of its last
prompt, dropped afterwards) and is freed after each chunk, so evaluation leaves no KV cache
behind. :func:`accuracy_by_level` is the trainer's ``eval/accuracy/level_<k>``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from steerl import distributed as ddp
from steerl.rollout import Rollout, decode_completions, encode_prompts, generate
from steerl.tasks import Prompt


def prompt_fields(prompts: list[Prompt]) -> dict[str, list[Any]]:
    """The per-prompt fields a reward function receives (answer, difficulty, meta, ...)."""
    fields: dict[str, list[Any]] = {
        "answer": [p.answer for p in prompts],
        "difficulty": [p.difficulty for p in prompts],
        "category": [p.category for p in prompts],
        "prompt_id": [p.id for p in prompts],
    }
    for k in {k for p in prompts for k in p.meta}:
        fields.setdefault(k, [p.meta.get(k) for p in prompts])
    return fields


@torch.no_grad()
def greedy_chunks(
    model,
    tokenizer,
    prompts: list[Prompt],
    *,
    max_new_tokens: int,
    backend: str = "eager",
    kernels: str = "torch",
    pdl: bool = True,
    chat_template: bool = False,
    chunk: int = 512,
) -> Iterator[tuple[list[Prompt], list[str], Rollout]]:
    """``(prompts, completions, rollout)`` per chunk of greedy completions, in order.

    With ``backend="static"`` every chunk is decoded with the same number of rows (the first
    chunk's); the padding rows are dropped before anything is returned.
    """
    device = next(model.parameters()).device
    size = max(1, min(chunk, len(prompts)))
    for i in range(0, len(prompts), size):
        part = prompts[i : i + size]
        texts = [p.text for p in part]
        if backend == "static":
            texts += texts[-1:] * (size - len(part))  # one shape for every chunk
        ids, mask = encode_prompts(tokenizer, texts, device, chat_template)
        out = generate(
            model,
            ids,
            mask,
            max_new_tokens=max_new_tokens,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            greedy=True,
            backend=backend,
            kernels=kernels,
            pdl=pdl,
            keep_sampler=False,
        )
        if len(texts) > len(part):
            out = out.index(torch.arange(len(part), device=out.completion_ids.device))
        yield part, decode_completions(tokenizer, out), out


def accuracy_by_level(
    model, tokenizer, prompts: list[Prompt], rewards, *, max_new_tokens: int, **kw: Any
) -> dict[str, float]:
    """Mean first-reward score (unscored: 0) of greedy completions, per difficulty level.

    Under torchrun each rank passes its share of the prompts; the result is over all ranks.
    ``kw``: :func:`greedy_chunks` options (backend, kernels, pdl, chat_template, chunk).
    """
    scores: list[float] = []
    for part, comps, _ in greedy_chunks(
        model, tokenizer, prompts, max_new_tokens=max_new_tokens, **kw
    ):
        res = rewards.score([p.text for p in part], comps, prompt_fields(part), -1)
        scores.extend(res.scores[:, 0].nan_to_num(0.0).tolist())
    levels = [p.level for p in prompts]
    pairs = [x for part in ddp.all_gather_objects(list(zip(levels, scores))) for x in part]
    by_level: dict[str, list[float]] = {}
    for level, s in pairs:
        by_level.setdefault(str(level), []).append(s)
    return {k: sum(v) / len(v) for k, v in sorted(by_level.items(), key=lambda kv: int(kv[0]))}
