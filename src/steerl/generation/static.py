"""A static-KV-cache sampler for Llama-family decoders, replayed as one CUDA graph per token.

The sampler runs the Hugging Face model's own weights (embedding, norms, projections, MLPs,
LM head) with fewer kernels per layer than its forward: one q/k/v matrix product (the three
weights copied into one buffer at each call), ``F.rms_norm``, RoPE in three kernels and the
residual adds folded into the output GEMMs; the same math up to float rounding. It owns the
attention cache: a preallocated
``(layers, N, kv_heads, S, head_dim)`` key/value buffer with ``S = P + max_new_tokens`` and a
``(N, S)`` key-validity mask. Every buffer has a fixed address, so one decode step (embed,
24 layers, head, sampling, EOS bookkeeping) is captured once as a CUDA graph and replayed per
token with no host synchronisation; the step counter lives on the device. The host looks at
``done.all()`` only every ``check_every`` tokens, to stop early once every row has ended.

Options (``rollout.compile``, ``rollout.kernels``, ``rollout.pdl``): ``compile_step``
compiles each decode layer as two functions with the residual adds moved into the next
RMSNorm's kernel; ``attention="triton"`` and ``pick="triton"`` use
:mod:`steerl.generation.kernels` for the decode attention and for the sampling with its
bookkeeping; ``layer="triton"`` runs each layer as the fused kernels of
:mod:`steerl.generation.fused` (where :func:`~steerl.generation.fused.unsupported_reason`
allows: one row tile, models narrower than ``fused.FUSED_MAX_WIDTH``), launched early with
``pdl`` (:func:`steerl.generation.kernels.pdl_launch`).

On the CPU (tests) the same step runs eagerly. Sampling draws the token by an exponential race,
``argmax(z / T - log E)`` with ``E ~ Exp(1)`` from the caller's generator, which is the
categorical distribution of ``softmax(z / T)`` (top-p applied to ``z / T`` first); the
recorded log-probability is that of the tempered, untruncated distribution, as in the eager
sampler. With a fixed generator seed the samples are reproducible, but differ from the eager
sampler's (another random stream).

Supported: ``model_type`` in :data:`SUPPORTED` (Llama, Qwen2, Qwen3, no sliding window).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from steerl.generation.layers import compiled, eps_of, linear_add, rms, rope

#: Decode attention: ``sdpa`` (``F.scaled_dot_product_attention``) or ``triton``
#: (:func:`steerl.generation.kernels.decode_attention`).
ATTENTION = ("sdpa", "triton")
#: Sampling: ``torch`` (tensor ops) or ``triton`` (:func:`steerl.generation.race.race_pick`).
PICK = ("torch", "triton")
#: The MLP's gated half: ``torch`` or ``triton`` (:func:`steerl.generation.gemm.gate_up_silu`).
MLP = ("torch", "triton")
#: The whole decode layer: ``torch`` (the pieces above) or ``triton``: four Triton kernels
#: besides the attention (:mod:`steerl.generation.fused`), launched early where supported.
LAYER = ("torch", "triton")
#: Architectures whose decoder layers this sampler reproduces.
SUPPORTED = ("llama", "qwen2", "qwen3")
#: Prompt widths are rounded up to this multiple so one captured graph serves many batches.
PROMPT_BUCKET = 64


def unsupported_reason(model: PreTrainedModel) -> str | None:
    """Why ``model`` cannot use the static sampler, or ``None`` when it can."""
    from steerl.models import is_peft_model

    if is_peft_model(model):
        # it reads each layer's base .weight directly, so unmerged adapters would be skipped;
        # merging per rollout and unmerging after would drift the base weights in bf16
        return "a peft (LoRA) model: it reads base weights directly and would skip adapters"
    conf = model.config
    kind = getattr(conf, "model_type", "?")
    if kind not in SUPPORTED:
        return f"model type {kind!r} (static sampler supports {', '.join(SUPPORTED)})"
    if getattr(conf, "use_sliding_window", False) and getattr(conf, "sliding_window", None):
        return f"model type {kind!r} with a sliding attention window"
    base = getattr(model, "model", None)
    if base is None or not hasattr(base, "layers") or not hasattr(base, "rotary_emb"):
        return f"model class {type(model).__name__} has no .model.layers/.rotary_emb"
    return None


class StaticSampler:
    """Static cache, prefill and a (graph-captured) decode step for one batch shape.

    ``n`` rows, prompts of width ``p`` (already bucketed) and ``max_new`` new tokens. Sampling
    settings are fixed at construction (they are baked into the captured graph).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        n: int,
        p: int,
        max_new: int,
        *,
        eos_token_id: int | None,
        pad_token_id: int,
        temperature: float,
        top_p: float,
        greedy: bool,
        generator: torch.Generator | None,
        use_graph: bool,
        compile_step: bool = False,
        attention: str = "sdpa",
        pick: str = "torch",
        mlp: str = "torch",
        layer: str = "torch",
        pdl: bool = True,
    ):
        conf = model.config
        dev = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.model, self.base = model, model.model
        self.n, self.p, self.max_new, self.s = n, p, max_new, p + max_new
        self.eos, self.pad = eos_token_id, pad_token_id
        self.temperature, self.top_p, self.greedy = temperature, top_p, greedy
        # greedy decoding records the untempered log-probability (as the eager sampler)
        self._inv_temp = 1.0 if greedy else 1.0 / temperature
        self.generator = generator
        attn = self.base.layers[0].self_attn
        self.head_dim = attn.head_dim
        self.n_heads = conf.num_attention_heads
        self.n_kv = conf.num_key_value_heads
        self.scaling = attn.scaling
        shape = (len(self.base.layers), n, self.n_kv, self.s, self.head_dim)
        self.k_cache = torch.zeros(shape, dtype=self.dtype, device=dev)
        self.v_cache = torch.zeros(shape, dtype=self.dtype, device=dev)
        self.valid = torch.zeros((n, self.s), dtype=torch.bool, device=dev)  # keys to attend
        self.base_pos = torch.zeros(n, dtype=torch.long, device=dev)  # position of new token 0
        self.step = torch.zeros(1, dtype=torch.long, device=dev)  # tokens generated so far
        self.cur = torch.zeros(n, dtype=torch.long, device=dev)  # the token to feed next
        self.done = torch.zeros(n, dtype=torch.bool, device=dev)
        self.tokens = torch.full((n, max_new), pad_token_id, dtype=torch.long, device=dev)
        self.logprobs = torch.zeros((n, max_new), dtype=torch.float32, device=dev)
        # RoPE table for every position the cache can hold, from the model's own rotary module
        with torch.no_grad():
            positions = torch.arange(self.s, device=dev)[None]
            dummy = torch.zeros(1, dtype=self.dtype, device=dev)
            cos, sin = self.base.rotary_emb(dummy, positions)
        half = self.head_dim // 2
        self.cos = cos[0]  # (S, head_dim)
        self.sin = torch.cat([-sin[0, :, :half], sin[0, :, half:]], -1)  # signed, see _rope
        # q, k and v projections as one matrix per layer (refreshed from the model each run)
        attns = [layer.self_attn for layer in self.base.layers]
        self.w_qkv = [torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]) for a in attns]
        self.b_qkv = [
            torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias])
            if a.q_proj.bias is not None
            else None
            for a in attns
        ]
        self._fingerprint = self._params_fingerprint()
        self._forward_fn = self._decode_forward
        from steerl.generation import fused
        from steerl.generation.gemm import GATE_UP_MAX_ROWS

        # compile each decode layer around its attention (which stays outside); only for the
        # plain Llama/Qwen2 layer (no q/k norms, no biases outside q/k/v, SiLU)
        self.compiled = compile_step and fused.layer_reason(model) is None
        if attention not in ATTENTION or pick not in PICK or mlp not in MLP or layer not in LAYER:
            raise ValueError(
                f"attention {attention!r} / pick {pick!r} / mlp {mlp!r} / layer {layer!r}: "
                f"allowed {ATTENTION} / {PICK} / {MLP} / {LAYER}"
            )
        self.attention = attention
        # the kernel computes the SiLU gating only, for one tile of rows
        silu_mlp = (
            getattr(conf, "hidden_act", "") == "silu" and getattr(conf, "mlp_bias", False) is False
        )
        self.mlp = mlp if silu_mlp and n <= GATE_UP_MAX_ROWS else "torch"
        # the fused layer (see its unsupported_reason), unless the layers are compiled
        fits = fused.unsupported_reason(model, n, self.head_dim) is None
        use_fused = fits and attention == "triton" and not self.compiled
        self.layer = layer if use_fused else "torch"
        # the fused layers' kernels launched early where supported (kernels.pdl_launch)
        self.pdl = pdl
        # sampling: plain top-p sorts the vocabulary, which stays on tensor ops
        self.pick = pick if top_p >= 1 else "torch"
        self.graph: torch.cuda.CUDAGraph | None = None
        if use_graph:
            self._capture()

    # ------------------------------------------------------------------ model pieces
    def _params_fingerprint(self) -> tuple[int, ...]:
        return tuple(p.data_ptr() for p in self.model.parameters())

    def is_valid_for(self, model: PreTrainedModel) -> bool:
        """False once the model's parameters were replaced (the graph would read stale ones)."""
        return model is self.model and self._params_fingerprint() == self._fingerprint

    def _refresh_weights(self) -> None:
        """Copy the current q/k/v weights into the fused buffers (same addresses)."""
        with torch.no_grad():
            for i, layer in enumerate(self.base.layers):
                a = layer.self_attn
                torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight], out=self.w_qkv[i])
                if self.b_qkv[i] is not None:
                    torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias], out=self.b_qkv[i])

    def _layer_compiled(self, i: int, h, delta, cos, sin, slot, mask):
        """One decode-step layer through the compiled parts: ``(h, delta) -> (h', delta')``.

        The residual stream is carried as ``h + delta`` and each add is done inside the next
        RMSNorm's kernel (an ``addmm`` with the residual as input copies it first).
        """
        layer = self.base.layers[i]
        attn, mlp, ln2 = layer.self_attn, layer.mlp, layer.post_attention_layernorm
        h, qs = compiled("attn_in")(
            h, delta, layer.input_layernorm.weight, self.w_qkv[i], self.b_qkv[i], cos, sin,
            self.k_cache[i], self.v_cache[i], slot, eps_of(layer.input_layernorm),
            self.n_heads, self.n_kv,
        )  # fmt: skip
        o = self._decode_attention(qs, self.k_cache[i], self.v_cache[i], mask)
        o = o.reshape(h.shape[0], 1, -1)
        if self.mlp == "triton":
            h, x = compiled("attn_out_norm")(h, o, attn.o_proj.weight, ln2.weight, eps_of(ln2))
            return h, F.linear(self._gate_up(x, mlp), mlp.down_proj.weight)
        return compiled("attn_out_mlp")(
            h, o, attn.o_proj.weight, ln2.weight, mlp.gate_proj.weight, mlp.up_proj.weight,
            mlp.down_proj.weight, eps_of(ln2),
        )  # fmt: skip

    def _gate_up(self, x: torch.Tensor, mlp: torch.nn.Module, decode: bool = True):
        """``act(gate(x)) * up(x)`` of one layer's MLP; x (N, q, H) -> (N, q, I). The kernel
        serves decode steps of up to ``GATE_UP_MAX_ROWS`` rows; the prefill's and larger
        batches' rows stay with cuBLAS."""
        if self.mlp == "triton" and decode:
            from steerl.generation.gemm import gate_up_silu

            x2 = x.reshape(-1, x.shape[-1])
            out = gate_up_silu(x2, mlp.gate_proj.weight, mlp.up_proj.weight)
            return out.view(*x.shape[:-1], -1)
        return mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x)

    def _decode_attention(self, qs, kc, vc, mask) -> torch.Tensor:
        """q (N, Hq, 1, D) against the cache -> (N, Hq, D) (or a view with that layout)."""
        n, hq, _, d = qs.shape
        hkv = self.n_kv
        if self.attention == "triton":
            from steerl.generation.kernels import decode_attention

            return decode_attention(qs[:, :, 0], kc, vc, self.valid, self.scaling)
        qg = qs.reshape(n, hkv, hq // hkv, d)
        o = F.scaled_dot_product_attention(qg, kc, vc, attn_mask=mask, scale=self.scaling)
        return o.reshape(n, hq, d)

    def _layer(self, i: int, h: torch.Tensor, cos, sin, slot, mask, prefill: bool):
        """One decoder layer. h: (N, q, H); cos/sin: (N, q, 1, D); mask: (N, 1, q|1, S')."""
        layer = self.base.layers[i]
        attn = layer.self_attn
        n, q, _ = h.shape
        hq, hkv, d = self.n_heads, self.n_kv, self.head_dim
        qkv = F.linear(rms(layer.input_layernorm, h), self.w_qkv[i], self.b_qkv[i])
        qkv = qkv.view(n, q, hq + 2 * hkv, d)
        qk, vs = qkv[:, :, : hq + hkv], qkv[:, :, hq + hkv :].transpose(1, 2)
        if hasattr(attn, "q_norm"):  # Qwen3: per-head RMSNorm before RoPE
            qk = torch.cat([rms(attn.q_norm, qk[:, :, :hq]), rms(attn.k_norm, qk[:, :, hq:])], 2)
        qk = rope(qk, cos, sin)  # (N, q, Hq + Hkv, D)
        qs, ks = qk[:, :, :hq].transpose(1, 2), qk[:, :, hq:].transpose(1, 2)
        kc, vc = self.k_cache[i], self.v_cache[i]
        g = hq // hkv
        if prefill:
            kc[:, :, :q] = ks
            vc[:, :, :q] = vs
            k = kc[:, :, :q].repeat_interleave(g, dim=1)
            v = vc[:, :, :q].repeat_interleave(g, dim=1)
            o = F.scaled_dot_product_attention(qs, k, v, attn_mask=mask, scale=self.scaling)
        else:
            kc.index_copy_(2, slot, ks)
            vc.index_copy_(2, slot, vs)
            # grouped-query attention without copying K/V: the g query heads of one KV head
            # become g query rows of that head (head h uses KV head h // g, as repeat_kv)
            o = self._decode_attention(qs, kc, vc, mask).reshape(n, hq, 1, d)
        o = o.transpose(1, 2).reshape(n, q, hq * d)
        h = linear_add(h, o, attn.o_proj)
        mlp = layer.mlp
        x = rms(layer.post_attention_layernorm, h)
        return linear_add(h, self._gate_up(x, mlp, decode=not prefill), mlp.down_proj)

    def _head(self, h: torch.Tensor) -> torch.Tensor:
        """(N, H) last hidden state -> (N, V) logits in the model's dtype."""
        return self.model.lm_head(rms(self.base.norm, h))

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        """(N, H) last hidden state -> (N, V) float32 logits."""
        return self._head(h).float()

    def _sample_triton(self, h: torch.Tensor) -> None:
        """:meth:`_sample` by :func:`steerl.generation.race.race_pick` (in-kernel noise)."""
        from steerl.generation.race import race_pick

        logits = self._head(h)  # the kernel reads the model dtype
        if self.greedy:  # no draw: greedy decoding leaves every random stream alone
            seed = torch.zeros(1, dtype=torch.long, device=logits.device)
        else:
            seed = torch.randint(0, 2**31 - 1, (1,), generator=self.generator, device=logits.device)
        race_pick(
            logits, seed, inv_temp=self._inv_temp, greedy=self.greedy, done=self.done,
            step=self.step, cur=self.cur, tokens=self.tokens, logprobs=self.logprobs,
            pad=self.pad, eos=self.eos,
        )  # fmt: skip

    def _sample(self, logits: torch.Tensor) -> None:
        """Choose the next token of every row and record it (all on the device)."""
        if self.greedy:
            logp = logits.log_softmax(-1)
            tok = logp.argmax(-1)
        else:
            scaled = logits / self.temperature
            logp = scaled.log_softmax(-1)
            if self.top_p < 1.0:
                from steerl.rollout import _top_p_filter

                scaled = _top_p_filter(scaled, self.top_p)
            race = torch.empty_like(scaled).exponential_(generator=self.generator)
            tok = (scaled - race.log()).argmax(-1)
        tok_lp = logp.gather(-1, tok[:, None]).squeeze(-1)
        col = self.step.clamp(max=self.max_new - 1)
        self.tokens.index_copy_(1, col, torch.where(self.done, self.pad, tok)[:, None])
        self.logprobs.index_copy_(1, col, torch.where(self.done, 0.0, tok_lp)[:, None])
        if self.eos is not None:
            self.done |= tok == self.eos
        self.cur.copy_(tok)
        self.step += 1

    # ------------------------------------------------------------------ prefill / decode
    def prefill(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> None:
        """Reset the state, run the (N, P) left-padded prompts, sample the first token."""
        n, p = prompt_ids.shape
        pad = self.p - p  # left-pad further up to the bucketed width
        ids = F.pad(prompt_ids, (pad, 0), value=self.pad)
        mask = F.pad(prompt_mask, (pad, 0), value=0).bool()
        self.valid.zero_()
        self.valid[:, : self.p] = mask
        self.done.zero_()
        self.step.zero_()
        self.tokens.fill_(self.pad)
        self.logprobs.zero_()
        pos = (mask.long().cumsum(-1) - 1).clamp_min(0)  # (N, P)
        self.base_pos.copy_(mask.sum(-1))
        causal = torch.ones(self.p, self.p, dtype=torch.bool, device=ids.device).tril()
        eye = torch.eye(self.p, dtype=torch.bool, device=ids.device)
        # pad queries attend to themselves only: no all-masked rows, so no NaN in the cache
        attn_mask = ((causal & mask[:, None, :]) | eye)[:, None]  # (N, 1, P, P)
        cos, sin = self.cos[pos][:, :, None], self.sin[pos][:, :, None]  # (N, P, 1, D)
        h = self.base.embed_tokens(ids)
        for i in range(len(self.base.layers)):
            h = self._layer(i, h, cos, sin, None, attn_mask, prefill=True)
        self._sample(self._logits(h[:, -1]))

    def _decode_step(self) -> None:
        """Feed ``cur`` at cache slot ``P + step - 1`` and sample the next token."""
        if self.pick == "triton":
            self._sample_triton(self._decode_hidden())
        else:
            self._sample(self._forward_fn())

    def _decode_forward(self) -> torch.Tensor:
        """Logits (N, V) after feeding ``cur`` at cache slot ``P + step - 1``."""
        return self._logits(self._decode_hidden())

    def _decode_hidden(self) -> torch.Tensor:
        """Last hidden state (N, H) after feeding ``cur`` at cache slot ``P + step - 1``."""
        slot = self.step - 1 + self.p  # (1,)
        self.valid.index_fill_(1, slot, True)
        pos = self.base_pos + self.step - 1  # (N,)
        if self.layer == "triton":
            from steerl.generation import fused

            layers = self.base.layers
            h = self.base.embed_tokens(self.cur)
            hw, ss = fused.prepare(h, layers[0].input_layernorm.weight)
            cos, sin = self.cos[pos], self.sin[pos]  # (N, D)
            for i, layer in enumerate(layers):
                nxt = layers[i + 1].input_layernorm.weight if i + 1 < len(layers) else None
                h, hw, ss = fused.decode_layer(
                    layer, nxt, self.w_qkv[i], self.b_qkv[i], self.k_cache[i], self.v_cache[i],
                    self.valid, self.scaling, self.n_heads, self.n_kv, h, hw, ss, cos, sin, slot,
                    pdl=self.pdl,
                )  # fmt: skip
            return h
        cos, sin = self.cos[pos][:, None, None], self.sin[pos][:, None, None]  # (N, 1, 1, D)
        # one additive mask per step (SDPA turns a boolean one into this on every call)
        mask = torch.zeros((self.n, 1, 1, self.s), dtype=self.dtype, device=self.valid.device)
        mask.masked_fill_(~self.valid[:, None, None, :], float("-inf"))
        h = self.base.embed_tokens(self.cur[:, None])
        if self.compiled:
            delta = None
            for i in range(len(self.base.layers)):
                h, delta = self._layer_compiled(i, h, delta, cos, sin, slot, mask)
            return (h + delta)[:, -1]
        for i in range(len(self.base.layers)):
            h = self._layer(i, h, cos, sin, slot, mask, prefill=False)
        return h[:, -1]

    def _capture(self) -> None:
        """Warm up on a side stream (kernels, compilation), then capture one decode step.

        Neutral to the random state: the warm-up steps draw random numbers, so the
        generator's state is put back afterwards (a run resumed from a checkpoint captures
        at another step than the uninterrupted run and must still draw the same samples).
        """
        state = [self.step, self.valid, self.done, self.cur, self.tokens, self.logprobs]
        saved = [t.clone() for t in state]
        gen = self.generator
        rng = gen.get_state() if gen is not None else torch.cuda.get_rng_state()
        self.step.fill_(1)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(3):
                self.step.fill_(1)
                self._decode_step()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        if self.generator is not None:
            self.graph.register_generator_state(self.generator)
        self.step.fill_(1)
        with torch.no_grad(), torch.cuda.graph(self.graph):
            self._decode_step()
        for t, s in zip(state, saved):
            t.copy_(s)
        if gen is not None:
            gen.set_state(rng)
        else:
            torch.cuda.set_rng_state(rng)

    @torch.no_grad()
    def run(
        self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, check_every: int = 16
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(tokens (N, T), logprobs (N, T), T): T < max_new when every row ended early."""
        self._refresh_weights()
        self.prefill(prompt_ids, prompt_mask)
        steps = 1
        while steps < self.max_new:
            if self.graph is not None:
                self.graph.replay()
            else:
                self._decode_step()
            steps += 1
            if self.eos is not None and steps % check_every == 0 and bool(self.done.all()):
                break  # the only host synchronisation: every check_every tokens
        # copies: the buffers are overwritten by the next call
        return self.tokens[:, :steps].clone(), self.logprobs[:, :steps].clone(), steps
