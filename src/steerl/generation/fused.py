"""The static sampler's fused decode layer (``rollout.kernels=triton`` without compile).

A Llama/Qwen2 decoder layer's decode step as five Triton kernels, one per weight matrix plus
the attention; each RMSNorm is folded into the product after it, the kernel before handing it
the norm-weighted rows and their partial sums of squares (:mod:`steerl.generation.gemm`):

1. :func:`~steerl.generation.qkv.qkv_rope`: input norm, q/k/v, RoPE, the k/v cache writes;
2. :func:`~steerl.generation.kernels.decode_attention`;
3. ``rows_linear(o, W_o, res=h, norm_out=w_post)``: output projection and residual;
4. ``gate_up_silu(hw, W_gate, W_up, ss=...)``: the gated half of the MLP;
5. ``rows_linear(a, W_down, res=h, norm_out=w_next)``: down projection and residual.

The residual stream travels as ``(h, hw, ss)``: ``h`` (N, H), ``hw = h * w`` for the next
norm's weight ``w`` and ``ss`` (N, T) the partial sums of squares of ``h``'s rows. With
``pdl`` (``rollout.pdl``) each kernel is launched while the one before still runs and waits
for it inside (:func:`steerl.generation.kernels.pdl_launch`): the launch gaps between the
layer's kernels are hidden. Tiles are picked by width (``gemm.GATE_UP_TILES``,
``gemm.ROWS_TILES``, ``kernels.ATTN_UNSPLIT_FROM``); models from :data:`FUSED_MAX_WIDTH`
wide keep the tensor-op layers.
"""

from __future__ import annotations

import torch

from steerl.generation.layers import eps_of

#: Hidden sizes from which the static sampler keeps the tensor-op layers (cuBLAS products,
#: with the Triton attention, gated MLP and sampling) instead of the fused ones. On an H200
#: (``benchmarks/decode_profile.py --shape=... --rows=...``, 2026-11-28) the fused layers
#: were the faster at 896 wide (the anchor, 64 rows: 1.141 ms per token against 1.262
#: compiled) and at 3,584 (7B, 64 rows: 5.371 against 5.545 for the tensor-op layers; 5.164
#: compiled), the slower at 5,120 (14B, 32 rows: 12.704, or 11.623 with the narrow tiles,
#: against 10.679). Between the two (e.g. 4,096: Llama-3-8B) not measured; the cut keeps the
#: tensor-op layers there.
FUSED_MAX_WIDTH = 4096


def layer_reason(model) -> str | None:
    """Why ``model``'s decoder layer is not the plain Llama/Qwen2 one (no q/k norms, no biases
    outside q/k/v, a SiLU-gated MLP) that the fused and the compiled layers reproduce, or
    None."""
    conf = model.config
    attn = model.model.layers[0].self_attn
    if hasattr(attn, "q_norm"):
        return "per-head q/k norms (Qwen3)"
    if attn.o_proj.bias is not None or getattr(conf, "mlp_bias", False):
        return "biases outside q/k/v"
    if getattr(conf, "hidden_act", "") != "silu":
        return f"activation {getattr(conf, 'hidden_act', '?')!r} (the kernel gates with SiLU)"
    return None


def unsupported_reason(model, rows: int, head_dim: int) -> str | None:
    """Why the fused layer cannot serve ``model``'s decode step of ``rows`` rows, or None."""
    from steerl.generation.gemm import GATE_UP_MAX_ROWS

    why = layer_reason(model)
    if why is not None:
        return why
    if rows > GATE_UP_MAX_ROWS:
        return f"{rows} rows (one row tile: at most {GATE_UP_MAX_ROWS})"
    if model.config.hidden_size >= FUSED_MAX_WIDTH:
        return (
            f"hidden size {model.config.hidden_size} >= FUSED_MAX_WIDTH ({FUSED_MAX_WIDTH}): "
            "the tensor-op layers measured faster there"
        )
    if head_dim < 32 or head_dim & (head_dim - 1):
        return f"head size {head_dim} (a power of 2 >= 32)"
    layer = model.model.layers[0]
    dtypes = {layer.input_layernorm.weight.dtype, layer.self_attn.q_proj.weight.dtype}
    if len(dtypes) > 1:
        return f"norm and projection weights of different dtypes ({sorted(map(str, dtypes))})"
    return None


def prepare(h: torch.Tensor, norm_w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(h * norm_w, row sums of squares (N, 1))``: the first layer's input."""
    return (h * norm_w).to(h.dtype), h.float().pow(2).sum(-1, keepdim=True)


def decode_layer(layer, next_norm_w, w_qkv, b_qkv, k_cache, v_cache, valid, scaling,
                 n_heads: int, n_kv: int, h, hw, ss, cos, sin, slot, pdl=False):  # fmt: skip
    """One layer: ``(h, hw, ss) -> (h', hw', ss')`` (see the module docstring). ``w_qkv`` /
    ``b_qkv`` the stacked q/k/v projection, ``cos`` / ``sin`` (N, D) the step's RoPE rows,
    ``slot`` the cache position (a device tensor), ``valid`` (N, S) the attendable keys.
    With ``next_norm_w`` None (the last layer) returns ``(h', None, None)``. ``pdl``: each
    kernel launched while the one before it finishes, where supported
    (:func:`steerl.generation.kernels.pdl_launch`)."""
    from steerl.generation.gemm import gate_up_silu, rows_linear
    from steerl.generation.kernels import decode_attention
    from steerl.generation.qkv import qkv_rope

    ln1, ln2, mlp = layer.input_layernorm, layer.post_attention_layernorm, layer.mlp
    q = qkv_rope(hw, None, eps_of(ln1), w_qkv, b_qkv, cos, sin, slot, k_cache, v_cache,
                 n_heads, n_kv, ss=ss, pdl=pdl)  # fmt: skip
    o = decode_attention(q, k_cache, v_cache, valid, scaling, pdl=pdl)
    w_o = layer.self_attn.o_proj.weight
    h, hw, ss = rows_linear(o.view(h.shape[0], -1), w_o, res=h, norm_out=ln2.weight, pdl=pdl)
    a = gate_up_silu(hw, mlp.gate_proj.weight, mlp.up_proj.weight, ss=ss, eps=eps_of(ln2), pdl=pdl)
    if next_norm_w is None:
        return rows_linear(a, mlp.down_proj.weight, res=h, pdl=pdl), None, None
    return rows_linear(a, mlp.down_proj.weight, res=h, norm_out=next_norm_w, pdl=pdl)
