"""Static samplers kept per model and batch shape (``rollout.backend=static``).

Building a :class:`~steerl.generation.static.StaticSampler` allocates its KV cache and
captures its CUDA graph, so :func:`static_generate` keeps the last :data:`_KEEP` of them,
keyed by the model, the bucketed batch shape and the sampling options, and reuses one while
the model's parameters are the tensors it captured.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from transformers import PreTrainedModel

from steerl.generation.static import PROMPT_BUCKET, StaticSampler

#: Samplers kept per model (captured graphs and caches), newest last; at most _KEEP of them.
_SAMPLERS: OrderedDict[tuple[Any, ...], StaticSampler] = OrderedDict()
_KEEP = 2


def static_generate(
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
    compile: bool = False,
    kernels: str = "torch",
    pdl: bool = True,
    keep: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Sample with a cached :class:`StaticSampler` for this shape (built on first use).

    ``keep=False`` (occasional batches such as evaluation): a cached sampler for this shape
    is used if there is one; otherwise one is built for this call alone and freed (its KV
    cache and graph) afterwards, without evicting the cached ones.
    """
    n, p = prompt_ids.shape
    width = -(-p // PROMPT_BUCKET) * PROMPT_BUCKET
    use_graph = prompt_ids.device.type == "cuda"
    key = (
        id(model),
        n,
        width,
        max_new_tokens,
        eos_token_id,
        pad_token_id,
        temperature,
        top_p,
        greedy,
        id(generator),
        use_graph,
        compile and use_graph,
        kernels,
        pdl,
    )
    sampler = _SAMPLERS.get(key)
    if sampler is not None and sampler.is_valid_for(model):
        _SAMPLERS.move_to_end(key)  # a cached one serves kept and one-off calls alike
        return sampler.run(prompt_ids, prompt_mask)
    _SAMPLERS.pop(key, None)  # stale: the model's parameters were replaced
    sampler = StaticSampler(
        model,
        n,
        width,
        max_new_tokens,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        temperature=temperature,
        top_p=top_p,
        greedy=greedy,
        generator=generator,
        use_graph=use_graph,
        compile_step=compile and use_graph,
        attention="triton" if kernels == "triton" else "sdpa",
        pick=kernels,
        mlp=kernels,
        layer=kernels,  # whole fused layers, unless the layers are compiled
        pdl=pdl,
    )
    if keep:  # a one-off sampler neither enters the cache nor evicts from it
        while len(_SAMPLERS) >= _KEEP:
            _SAMPLERS.popitem(last=False)
        _SAMPLERS[key] = sampler
    return sampler.run(prompt_ids, prompt_mask)


def clear_cache() -> None:
    """Drop every cached sampler (frees their KV caches and captured graphs)."""
    _SAMPLERS.clear()
