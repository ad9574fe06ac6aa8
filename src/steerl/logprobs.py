"""Per-token log-probabilities of completions under a model (teacher-forced forward).

The lean path never materialises the (N, T, V) logits: the model's decoder runs to its last
hidden states, and :class:`_ChunkedHeadLogprobs` applies the LM head, the float32
log-softmax, the gather and the entropy over chunks of positions, keeping only the
per-position log-sum-exp for the backward pass, where each chunk's logits are recomputed.
Peak extra memory is one chunk of float32 logits (``CHUNK_ELEMENTS`` values) instead of the
whole batch's, which for a 152k vocabulary is the largest tensor of the step.

Math, for logits ``z`` (one position), target ``y``, ``p = softmax(z)``, ``H = -sum p log p``:

    d log p_y / dz = onehot(y) - p
    dH / dz_j      = -p_j (log p_j + H)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from steerl.rollout import Rollout, position_ids_from_mask

#: float32 logits per chunk of the LM head (2**24: 64 MiB, ~110 positions of a 152k vocab).
CHUNK_ELEMENTS = 1 << 24

#: Set by :func:`head_grad_into_param` for the forwards made inside it.
_INTO_GRAD = False


@contextlib.contextmanager
def head_grad_into_param(enabled: bool = True) -> Iterator[None]:
    """Heads run inside add their weight gradient straight into ``weight.grad``.

    For micro-batched gradient accumulation through one plain ``backward()`` per micro-batch:
    once ``weight.grad`` exists, autograd would otherwise hold a second weight-sized gradient
    (the head's, 0.25 GiB for a 152k x 896 head) until it adds it in. Never use it around a
    graph that ``torch.autograd.grad`` differentiates (it would write into ``.grad``).
    """
    global _INTO_GRAD
    before, _INTO_GRAD = _INTO_GRAD, enabled
    try:
        yield
    finally:
        _INTO_GRAD = before


def gather_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``log softmax(logits)[targets]`` without keeping a full (N, T, V) log-softmax.

    logits: (N, T, V) any float dtype; targets: (N, T) -> (N, T) float32.
    Rows are processed in chunks, so the float32 upcast never holds more than ~16M values.
    """
    n, t, v = logits.shape
    rows = max(1, (1 << 24) // max(1, t * v))  # rows per chunk: at most ~16M float32 values
    out = torch.empty(targets.shape, dtype=torch.float32, device=logits.device)
    for i in range(0, n, rows):
        chunk = logits[i : i + rows].float()
        picked = chunk.gather(-1, targets[i : i + rows, :, None]).squeeze(-1)
        out[i : i + rows] = picked - chunk.logsumexp(-1)
    return out


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of each position's distribution: (N, T, V) -> (N, T)."""
    logp = logits.float().log_softmax(-1)
    return -(logp.exp() * logp).sum(-1)


class _ChunkedHeadLogprobs(torch.autograd.Function):
    """``(log p(targets), entropy)`` of ``softmax(hidden @ weight.T + bias)``, chunked.

    hidden: (M, H); weight: (V, H); bias: (V,) or None; targets: (M,) -> two (M,) float32.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk):
        m = hidden.shape[0]
        lp = torch.empty(m, dtype=torch.float32, device=hidden.device)
        ent = torch.empty_like(lp)
        lse = torch.empty_like(lp)
        for i in range(0, m, chunk):
            z = F.linear(hidden[i : i + chunk], weight, bias).float()
            lse_c = z.logsumexp(-1)
            logp = z - lse_c[:, None]
            lp[i : i + chunk] = logp.gather(-1, targets[i : i + chunk, None]).squeeze(-1)
            ent[i : i + chunk] = -(logp.exp() * logp).sum(-1)
            lse[i : i + chunk] = lse_c
        ctx.save_for_backward(hidden, weight, bias, targets, lse, ent)
        ctx.chunk = chunk
        ctx.into_grad = _INTO_GRAD
        ctx.set_materialize_grads(False)  # an unused output's gradient arrives as None
        return lp, ent

    @staticmethod
    def backward(ctx, grad_lp, grad_ent):
        hidden, weight, bias, targets, lse, ent = ctx.saved_tensors
        chunk = ctx.chunk
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        if grad_lp is None and grad_ent is None:
            return None, None, None, None, None
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = acc_w = None
        if need_w:
            g = weight.grad
            in_place = (  # the accumulated gradient, and no create_graph backward
                ctx.into_grad
                and g is not None
                and (g.shape, g.dtype) == (weight.shape, weight.dtype)
                and not torch.is_grad_enabled()
            )
            if in_place:
                acc_w = g  # added in place; autograd gets None for the weight
            else:
                grad_w = acc_w = torch.zeros_like(weight)
        grad_b = torch.zeros_like(bias) if need_b and bias is not None else None
        for i in range(0, hidden.shape[0], chunk):
            h = hidden[i : i + chunk]
            # dz = -p * (g_lp + g_ent * (logp + H)) + g_lp * onehot(y), written in place: two
            # float32 chunk buffers (logp, then p -> dz) and the dz cast, no temporaries
            logp = F.linear(h, weight, bias).float().sub_(lse[i : i + chunk, None])
            dz = logp.exp()
            g_lp = None if grad_lp is None else grad_lp[i : i + chunk, None]
            if grad_ent is not None:
                coef = logp.add_(ent[i : i + chunk, None]).mul_(grad_ent[i : i + chunk, None])
                if g_lp is not None:
                    coef.add_(g_lp)
                dz.mul_(coef).neg_()
            else:
                dz.mul_(g_lp).neg_()
            del logp
            if g_lp is not None:
                dz.scatter_add_(-1, targets[i : i + chunk, None], g_lp)
            dz = dz.to(weight.dtype)
            if grad_h is not None:
                grad_h[i : i + chunk] = dz @ weight
            if acc_w is not None:
                acc_w.addmm_(dz.t(), h.to(weight.dtype))
            if grad_b is not None:
                grad_b += dz.sum(0)
        return grad_h, grad_w, grad_b, None, None


def head_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    chunk_elements: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities and entropies (N, T) of ``targets`` (N, T) from hidden (N, T, H).

    ``chunk_elements``: float32 logits held at once (default :data:`CHUNK_ELEMENTS`).
    """
    n, t, h = hidden.shape
    chunk = max(1, (chunk_elements or CHUNK_ELEMENTS) // weight.shape[0])
    lp, ent = _ChunkedHeadLogprobs.apply(
        hidden.reshape(n * t, h), weight, bias, targets.reshape(n * t), chunk
    )
    return lp.view(n, t), ent.view(n, t)


def _decoder_and_head(model: PreTrainedModel):
    """``(decoder, lm_head)`` when logits are exactly ``lm_head(decoder(...)[0])``, else None.

    A ``peft`` wrapper is looked through (its decoder layers carry the adapters in place);
    a head wrapped by peft (``modules_to_save`` or a LoRA target) is not a plain Linear, and
    such a model takes the full forward.
    """
    from steerl.models import unwrap_peft

    model = unwrap_peft(model)
    conf = model.config
    if any(getattr(conf, k, None) for k in ("final_logit_softcapping", "logit_scale")):
        return None  # the head's output is transformed further
    decoder = getattr(model, getattr(model, "base_model_prefix", ""), None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if decoder is None or not isinstance(head, torch.nn.Linear) or decoder is model:
        return None
    return decoder, head


def completion_logprobs(
    model: PreTrainedModel, batch: Rollout, with_entropy: bool = False, entropy_grad: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probabilities (N, T) of ``batch.completion_ids`` given the prompts.

    Returns ``(logprobs, entropy)``; entropy is ``None`` unless asked for, and detached unless
    ``entropy_grad`` (an entropy bonus in the loss needs its gradient). Models whose logits are
    ``lm_head(hidden)`` (Llama, Qwen, GPT-2, ...) take the chunked head; others a full forward.
    """
    ids = torch.cat([batch.prompt_ids, batch.completion_ids], dim=1)
    mask = torch.cat([batch.prompt_mask, batch.completion_mask], dim=1)
    pos = position_ids_from_mask(mask)
    p, t = batch.prompt_ids.shape[1], batch.completion_ids.shape[1]
    parts = _decoder_and_head(model)
    if parts is not None:
        decoder, head = parts
        out = decoder(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False)
        hidden = out[0][:, p - 1 : p - 1 + t, :]
        lp, ent = head_logprobs(hidden, head.weight, head.bias, batch.completion_ids)
        if not with_entropy:
            return lp, None
        return lp, ent if entropy_grad else ent.detach()
    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits
    logits = logits[:, p - 1 : p - 1 + t, :]
    lp = gather_logprobs(logits, batch.completion_ids)
    ent = None
    if with_entropy:
        ent = entropy_from_logits(logits if entropy_grad else logits.detach())
    return lp, ent
