"""Fast sampler backends behind ``steerl.rollout.generate`` (``rollout.backend``).

``static`` (:mod:`steerl.generation.static`): static KV cache, batched prefill and a decode
step captured as a CUDA graph; the same code runs eagerly on the CPU. Built samplers are
kept per model and batch shape by :mod:`steerl.generation.samplers` (``static_generate``).
Its per-layer math is in :mod:`steerl.generation.layers` (compiled with
``rollout.compile``); its Triton decode kernels (``rollout.kernels``) in
:mod:`~steerl.generation.kernels` (attention, early launch), :mod:`~steerl.generation.gemm`
(the products, each norm folded into the next), :mod:`~steerl.generation.qkv` (norm, q/k/v,
RoPE, cache writes): five per fused layer (:mod:`~steerl.generation.fused`), and
:mod:`~steerl.generation.race` (sampling).
Backends that need packages steerl does not depend on (vLLM, SGLang) would live here too,
each behind an extra and the same ``(tokens, logprobs)`` contract; none is wired yet.
"""
