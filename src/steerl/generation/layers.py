"""The static sampler's per-layer math as plain functions (Llama/Qwen2 decoder layers).

Used eagerly by :class:`~steerl.generation.static.StaticSampler` and, with ``rollout.compile``,
through ``torch.compile`` (:func:`compiled`): every layer has the same shapes, so one compiled
graph per function serves all of them.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def rope(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
    """``x * cos + rotate_half(x) * sin`` in three kernels.

    ``rotate_half(x) = cat(-x2, x1)``, so with ``sin_signed = cat(-sin1, sin2)`` it is the
    swapped halves ``cat(x2, x1)`` times ``sin_signed``.
    """
    d = x.shape[-1]
    swapped = x.unflatten(-1, (2, d // 2)).flip(-2).flatten(-2)
    return torch.addcmul(x * cos, swapped, sin_signed)


def eps_of(norm: torch.nn.Module) -> float:
    return float(getattr(norm, "variance_epsilon", None) or getattr(norm, "eps", 1e-6))


def rms(norm: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The RMSNorm module ``norm`` (Llama/Qwen form) as one fused ``F.rms_norm``."""
    return F.rms_norm(x, (x.shape[-1],), norm.weight, eps_of(norm))


def linear_add(res: torch.Tensor, x: torch.Tensor, lin: torch.nn.Linear) -> torch.Tensor:
    """``res + lin(x)``, the residual add fused into the matrix product when there is no bias."""
    if lin.bias is not None:
        return res + lin(x)
    out = torch.addmm(res.reshape(-1, res.shape[-1]), x.reshape(-1, x.shape[-1]), lin.weight.t())
    return out.view(res.shape)


def attn_in(h, delta, norm_w, w_qkv, b_qkv, cos, sin, kc, vc, slot, eps: float, hq, hkv):
    """Residual add, RMSNorm, fused q/k/v projection and RoPE of one decode layer; k and v
    written into the cache at ``slot``. Returns the residual ``h + delta`` and q (N, Hq, 1, D).
    """
    if delta is not None:
        h = h + delta
    n, q, _ = h.shape
    d = cos.shape[-1]
    x = F.rms_norm(h, (h.shape[-1],), norm_w, eps)
    qkv = F.linear(x, w_qkv, b_qkv).view(n, q, hq + 2 * hkv, d)
    qk = rope(qkv[:, :, : hq + hkv], cos, sin)
    kc.index_copy_(2, slot, qk[:, :, hq:].transpose(1, 2))
    vc.index_copy_(2, slot, qkv[:, :, hq + hkv :].transpose(1, 2))
    return h, qk[:, :, :hq].transpose(1, 2)


def attn_out_norm(h, o, w_o, norm_w, eps: float):
    """Output projection, residual and RMSNorm: ``(h + o W_o^T, rms_norm(...))`` (alone when
    the MLP runs outside: :func:`steerl.generation.gemm.gate_up_silu`)."""
    h = h + F.linear(o, w_o)
    return h, F.rms_norm(h, (h.shape[-1],), norm_w, eps)


def attn_out_mlp(h, o, w_o, norm_w, w_gate, w_up, w_down, eps: float):
    """:func:`attn_out_norm`, then the SiLU-gated MLP: ``(h + o W_o^T, mlp(...))``."""
    h, x = attn_out_norm(h, o, w_o, norm_w, eps)
    return h, F.linear(F.silu(F.linear(x, w_gate)) * F.linear(x, w_up), w_down)


#: ``torch.compile`` of the functions above (built on first use; shared by all samplers:
#: every layer has the same shapes, so one compiled graph serves all of them).
_COMPILED: dict[str, Any] = {}


def compiled(name: str):
    """``torch.compile`` of :func:`attn_in`, :func:`attn_out_mlp` or :func:`attn_out_norm`,
    built on first use."""
    if name not in _COMPILED:
        fn = {"attn_in": attn_in, "attn_out_mlp": attn_out_mlp, "attn_out_norm": attn_out_norm}[
            name
        ]
        _COMPILED[name] = torch.compile(fn, fullgraph=True, dynamic=False)
    return _COMPILED[name]
