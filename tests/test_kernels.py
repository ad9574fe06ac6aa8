"""The static sampler's decode-step kernels (rollout.kernels, rollout.compile) on the CPU.

The Triton kernels run under Triton's interpreter here (conftest sets ``TRITON_INTERPRET=1``
when there is no GPU); they are skipped where Triton is not installed. The compiled decode
layers run through inductor's CPU backend.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_generation import _prompts
from test_generation import _qwen as small_qwen

from steerl.config import ConfigError, load_config
from steerl.generation import gemm as G
from steerl.generation import kernels as K
from steerl.generation import race as R
from steerl.generation import samplers
from steerl.generation.static import StaticSampler
from steerl.rollout import resolve_kernels

needs_triton = pytest.mark.skipif(K.triton is None, reason="Triton is not installed")


def _qwen(head_dim: int = 16):
    """A small Qwen2 whose head size suits the attention kernel (power of 2, >= 16)."""
    return small_qwen(head_dim=head_dim)


def _run(model, greedy: bool, seed: int = 3, compiled: bool = False, **kw):
    ids, mask = _prompts()
    s = StaticSampler(
        model, 6, 64, 10, eos_token_id=2, pad_token_id=0, temperature=0.7, top_p=1.0,
        greedy=greedy, generator=torch.Generator().manual_seed(seed), use_graph=False, **kw,
    )  # fmt: skip
    s.compiled = compiled  # compile_step applies with CUDA graphs only; force it here
    return s.run(ids, mask)


@pytest.fixture(autouse=True)
def _fresh_cache():
    samplers.clear_cache()
    yield
    samplers.clear_cache()


# --------------------------------------------------------------------------- kernels
@needs_triton
def test_decode_attention_matches_sdpa_with_gqa_and_masked_keys():
    g = torch.Generator().manual_seed(0)
    n, hq, hkv, s, d = 3, 4, 2, 150, 16  # 150 keys: 3 programs per head, the last partial
    q = torch.randn(n, 1, hq + 2, d, generator=g)[:, 0, :hq]  # strided, as the sampler's
    k, v = torch.randn(2, n, hkv, s, d, generator=g)
    valid = torch.rand(n, s, generator=g) > 0.4
    valid[2] = False
    valid[2, 7] = True  # one key: its value is the output; the other programs see none
    out = K.decode_attention(q, k, v, valid, 0.3)
    ref = F.scaled_dot_product_attention(
        q[:, :, None],
        k.repeat_interleave(hq // hkv, 1),
        v.repeat_interleave(hq // hkv, 1),
        attn_mask=valid[:, None, None],
        scale=0.3,
    )[:, :, 0]
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[2, :2], v[2, 0, 7].expand(2, d), atol=1e-6, rtol=0)


def _sdpa(q, k, v, valid, scale):
    g = q.shape[1] // k.shape[1]
    return F.scaled_dot_product_attention(
        q[:, :, None],
        k.repeat_interleave(g, 1),
        v.repeat_interleave(g, 1),
        attn_mask=valid[:, None, None],
        scale=scale,
    )[:, :, 0]


@needs_triton
@pytest.mark.parametrize("s", [520, 40])  # 8 splits (the last 3 past the keys), or 1 split
def test_decode_attention_one_launch_merges_deterministically_and_resets_counters(s):
    g = torch.Generator().manual_seed(1)
    n, hq, hkv, d = 2, 6, 2, 16  # 3 query heads per KV head
    q = torch.randn(n, hq, d, generator=g)
    k, v = torch.randn(2, n, hkv, s, d, generator=g)
    valid = torch.rand(n, s, generator=g) > 0.5
    valid[1] = False
    valid[1, s - 1] = True  # only the last split sees a key
    out = K.decode_attention(q, k, v, valid, 0.25)
    torch.testing.assert_close(out, _sdpa(q, k, v, valid, 0.25), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1], v[1, :, s - 1].repeat_interleave(3, 0), atol=1e-6, rtol=0)
    counters = K.ARRIVAL_COUNTERS.get((q.device, n * hkv))
    if s > K.ATTN_BLOCK_S * (K.ATTN_SPLITS - 1):
        assert counters is not None and counters.shape == (n * hkv,)
    if counters is not None:
        assert (counters == 0).all()  # every (row, KV head) put its counter back
    again = K.decode_attention(q, k, v, valid, 0.25)
    assert torch.equal(again, out)  # bitwise (on a GPU the merge order ignores arrival order)
    if counters is not None:
        assert K.ARRIVAL_COUNTERS[(q.device, n * hkv)] is counters  # the same buffer, reused
        assert (counters == 0).all()


def _state(rows: int, cols: int, step: int = 0):
    return dict(
        done=torch.zeros(rows, dtype=torch.bool),
        step=torch.tensor([step]),
        cur=torch.full((rows,), -5),
        tokens=torch.full((rows, cols), -9),
        logprobs=torch.full((rows, cols), -9.0),
    )


@needs_triton
def test_race_pick_greedy_and_bookkeeping():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(5, 37, generator=g) * 3  # 37 logits: 2 splits of 32, partly masked
    z = logits * 0.5
    want = z.argmax(-1)
    st = _state(5, 4, step=4)  # past the last column: it is overwritten (clamped)
    st["done"][1] = True
    eos = int(want[2])
    R.race_pick(
        logits, torch.tensor([0]), inv_temp=0.5, greedy=True, pad=7, eos=eos, splits=2, block=16,
        **st,
    )  # fmt: skip
    assert torch.equal(st["cur"], want)
    assert int(st["step"]) == 5
    lp = z.log_softmax(-1).gather(-1, want[:, None])[:, 0]
    assert st["tokens"][:, 3].tolist() == [int(want[0]), 7, eos, int(want[3]), int(want[4])]
    lp[1] = 0.0  # a row that had ended records 0
    torch.testing.assert_close(st["logprobs"][:, 3], lp)
    assert (st["tokens"][:, :3] == -9).all() and (st["logprobs"][:, :3] == -9).all()
    assert st["done"].tolist() == [bool(want[0] == eos), True, True] + [
        bool(t == eos) for t in want[3:].tolist()
    ]


@needs_triton
def test_race_pick_samples_the_tempered_distribution():
    rows = 300
    base = torch.tensor([1.0, 0.2, -0.5, 0.8, 0.0, -1.0])  # 6 logits: the second split is short
    logits = base.expand(rows, 6).contiguous()

    def draw(seed):
        st = _state(rows, 1)
        R.race_pick(
            logits, torch.tensor([seed]), inv_temp=1 / 0.8, greedy=False, pad=0, eos=None,
            splits=2, block=4, **st,
        )  # fmt: skip
        return st

    st = draw(11)
    want = (base / 0.8).softmax(-1)
    freq = torch.bincount(st["cur"], minlength=6).float() / rows
    assert (freq - want).abs().max() < 0.12  # 4 standard errors at 300 draws
    assert (freq > 0).sum() >= 5  # not a greedy pick
    torch.testing.assert_close(st["logprobs"][:, 0], (base / 0.8).log_softmax(-1)[st["cur"]])
    assert torch.equal(draw(11)["cur"], st["cur"])  # a seed fixes the draw
    assert not torch.equal(draw(12)["cur"], st["cur"])


# --------------------------------------------------------------------------- the sampler
@needs_triton
def test_sampler_with_triton_kernels_matches_tensor_ops():
    model = _qwen()
    ref = _run(model, greedy=True)
    tri = _run(model, greedy=True, attention="triton", pick="triton", mlp="triton")
    assert torch.equal(tri[0], ref[0])
    torch.testing.assert_close(tri[1], ref[1], atol=1e-5, rtol=0)
    assert len({tuple(r) for r in ref[0].tolist()}) > 1  # not vacuous
    gen = torch.Generator().manual_seed(5)
    state = gen.get_state()
    ids, mask = _prompts()
    StaticSampler(
        model, 6, 64, 4, eos_token_id=2, pad_token_id=0, temperature=1.0, top_p=1.0,
        greedy=True, generator=gen, use_graph=False, attention="triton", pick="triton",
    ).run(ids, mask)  # fmt: skip
    assert torch.equal(gen.get_state(), state)  # greedy decoding draws nothing
    # sampling: the attention kernel alone keeps the tensor-op random stream
    sample = _run(model, greedy=False)
    tri_attn = _run(model, greedy=False, attention="triton")
    assert torch.equal(tri_attn[0], sample[0])
    a, b = _run(model, False, pick="triton"), _run(model, False, pick="triton")
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(_run(model, False, seed=4, pick="triton")[0], a[0])


def test_compiled_decode_layers_match_the_eager_ones():
    """The compiled path (residual adds moved into the next norm) is the same function."""
    model = _qwen(head_dim=8)
    for greedy in (True, False):
        ref = _run(model, greedy)
        fast = _run(model, greedy, compiled=True)
        assert torch.equal(fast[0], ref[0])
        torch.testing.assert_close(fast[1], ref[1], atol=1e-4, rtol=0)


@needs_triton
def test_compiled_layers_with_the_mlp_kernel_match_the_eager_ones():
    """``rollout.compile`` with ``rollout.kernels=triton``: the compiled output projection
    and norm, then the gate/up kernel and the down projection (attn_out_norm path)."""
    model = _qwen()
    ref = _run(model, True)
    fast = _run(model, True, compiled=True, attention="triton", pick="triton", mlp="triton")
    assert torch.equal(fast[0], ref[0])
    torch.testing.assert_close(fast[1], ref[1], atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="mlp 'cuda'"):
        _run(model, True, mlp="cuda")


def test_mlp_kernel_serves_one_row_tile_only():
    """Past G.GATE_UP_MAX_ROWS rows the kernel would stream the weights once per row tile:
    the sampler keeps cuBLAS there."""
    model = _qwen()
    kw = dict(eos_token_id=2, pad_token_id=0, temperature=1.0, top_p=1.0, greedy=True,
              generator=None, use_graph=False, mlp="triton")  # fmt: skip
    assert StaticSampler(model, G.GATE_UP_MAX_ROWS, 64, 2, **kw).mlp == "triton"
    assert StaticSampler(model, G.GATE_UP_MAX_ROWS + 1, 64, 2, **kw).mlp == "torch"


# --------------------------------------------------------------------------- the key
def test_resolve_kernels(monkeypatch):
    model = _qwen()
    assert resolve_kernels("auto", model, "static") == "torch"  # CPU: never auto
    assert resolve_kernels("auto", model, "eager") == "torch"
    with pytest.raises(ConfigError, match=r"rollout\.kernels.*'triton'.*'eager'.*auto, torch"):
        resolve_kernels("triton", model, "eager")  # the kernels serve the static sampler only
    assert resolve_kernels("torch", model, "static") == "torch"
    with pytest.raises(ConfigError, match=r"rollout\.kernels.*'fast'.*auto, triton, torch"):
        resolve_kernels("fast", model, "static")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ConfigError, match=r"rollout\.kernels.*'triton'.*cpu, not CUDA.*auto"):
        resolve_kernels("triton", model, "static")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(ConfigError, match=r"rollout\.kernels.*power-of-2 head size.*has 8"):
        resolve_kernels("triton", _qwen(head_dim=8), "static")
    monkeypatch.setattr(K, "triton", None)
    with pytest.raises(ConfigError, match=r"rollout\.kernels.*Triton is not installed"):
        resolve_kernels("triton", model, "static")


def test_bad_kernels_value_names_key_and_allowed_values():
    with pytest.raises(ConfigError, match=r"rollout\.kernels.*'cuda'.*'auto', 'triton' or"):
        load_config("default", ["rollout.kernels=cuda"])


@needs_triton
def test_fused_decode_layers_match_the_eager_ones():
    """``layer="triton"``: each decode layer in qkv_rope, the attention, two rows_linear and
    gate_up_silu with the norms and residual adds folded in; the same tokens and
    log-probabilities as the tensor-op layers, greedy and sampled (same random stream)."""
    model = _qwen(head_dim=32)
    for greedy in (True, False):
        ref = _run(model, greedy)
        fused = _run(model, greedy, attention="triton", layer="triton")
        assert torch.equal(fused[0], ref[0])
        torch.testing.assert_close(fused[1], ref[1], atol=1e-4, rtol=0)
    kw = dict(eos_token_id=2, pad_token_id=0, temperature=1.0, top_p=1.0, greedy=True,
              generator=None, use_graph=False, layer="triton")  # fmt: skip
    assert StaticSampler(model, 6, 64, 2, attention="triton", **kw).layer == "triton"
    compiled = StaticSampler(model, 6, 64, 2, attention="triton", compile_step=True, **kw)
    assert compiled.compiled and compiled.layer == "torch"  # rollout.compile keeps its layers
    # it needs the attention kernel, one row tile and a head size of at least 32
    assert StaticSampler(model, 6, 64, 2, **kw).layer == "torch"
    assert (
        StaticSampler(model, G.GATE_UP_MAX_ROWS + 1, 64, 2, attention="triton", **kw).layer
        == "torch"
    )
    assert StaticSampler(_qwen(), 6, 64, 2, attention="triton", **kw).layer == "torch"
    with pytest.raises(ValueError, match="layer 'cuda'"):
        _run(model, True, layer="cuda")


@needs_triton
def test_race_pick_with_a_vocabulary_of_non_power_of_2_blocks():
    """5,000 logits are 5 blocks of 1,024: the default splits round down to a power of 2
    (the merge ranges over them), and explicit ones must be powers of 2."""
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(3, 5000, generator=g)
    st = _state(3, 1)
    R.race_pick(logits, torch.tensor([0]), inv_temp=1.0, greedy=True, pad=0, eos=None, **st)
    assert torch.equal(st["cur"], logits.argmax(-1))
    with pytest.raises(ValueError, match="power of 2"):
        R.race_pick(logits, torch.tensor([0]), inv_temp=1.0, greedy=True, pad=0, eos=None,
                    splits=3, **_state(3, 1))  # fmt: skip


def test_fused_layer_refuses_mixed_norm_and_projection_dtypes():
    from steerl.generation import fused

    model = _qwen(head_dim=32)
    assert fused.unsupported_reason(model, 6, 32) is None
    model.model.layers[0].input_layernorm.to(torch.float64)
    assert "different dtypes" in fused.unsupported_reason(model, 6, 32)


@needs_triton
def test_decode_attention_leaves_keys_unsplit_for_many_row_heads(monkeypatch):
    """From ``ATTN_UNSPLIT_FROM`` (row, KV head) pairs on, one program per pair (caches of up
    to ``ATTN_UNSPLIT_MAX_KEYS`` keys): no partials, no arrival counters, the same result."""
    g = torch.Generator().manual_seed(6)
    n, hq, hkv, d, s = 2, 4, 2, 16, 520
    q = torch.randn(n, hq, d, generator=g)
    k, v = torch.randn(2, n, hkv, s, d, generator=g)
    valid = torch.rand(n, s, generator=g) > 0.3
    monkeypatch.setattr(K, "ARRIVAL_COUNTERS", {})
    split = K.decode_attention(q, k, v, valid, 0.25)
    assert (q.device, n * hkv) in K.ARRIVAL_COUNTERS  # 4 pairs: split, merged by counters
    monkeypatch.setattr(K, "ARRIVAL_COUNTERS", {})
    monkeypatch.setattr(K, "ATTN_UNSPLIT_FROM", n * hkv)
    monkeypatch.setattr(K, "ATTN_UNSPLIT_MAX_KEYS", s - 1)  # a longer cache: still split
    torch.testing.assert_close(K.decode_attention(q, k, v, valid, 0.25), split)
    assert (q.device, n * hkv) in K.ARRIVAL_COUNTERS
    monkeypatch.setattr(K, "ARRIVAL_COUNTERS", {})
    monkeypatch.setattr(K, "ATTN_UNSPLIT_MAX_KEYS", s)
    whole = K.decode_attention(q, k, v, valid, 0.25)
    assert not K.ARRIVAL_COUNTERS
    torch.testing.assert_close(whole, split, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(whole, _sdpa(q, k, v, valid, 0.25), atol=1e-5, rtol=1e-5)


def test_rollout_pdl_reaches_the_static_sampler():
    """``rollout.pdl`` (bool) is handed to the static sampler (its fused layers' launches)."""
    from steerl.rollout import generate

    model = _qwen()
    ids, mask = _prompts()
    for pdl in (False, True):
        samplers.clear_cache()
        generate(model, ids, mask, max_new_tokens=3, eos_token_id=2, pad_token_id=0,
                 backend="static", pdl=pdl)  # fmt: skip
        assert next(iter(samplers._SAMPLERS.values())).pdl is pdl
    assert load_config("default", ["rollout.pdl=false"]).rollout.pdl is False
    with pytest.raises(ConfigError, match=r"rollout\.pdl"):
        load_config("default", ["rollout.pdl=sometimes"])


def test_fused_layers_serve_models_narrower_than_the_measured_cut(monkeypatch):
    """From ``fused.FUSED_MAX_WIDTH`` on, the sampler keeps the tensor-op layers (with the
    Triton attention and sampling): measured faster there."""
    from steerl.generation import fused

    model = _qwen(head_dim=32)
    assert fused.unsupported_reason(model, 6, 32) is None
    width = model.config.hidden_size
    monkeypatch.setattr(fused, "FUSED_MAX_WIDTH", width)
    assert f"hidden size {width}" in fused.unsupported_reason(model, 6, 32)
    kw = dict(eos_token_id=2, pad_token_id=0, temperature=1.0, top_p=1.0, greedy=True,
              generator=None, use_graph=False, attention="triton", layer="triton")  # fmt: skip
    assert StaticSampler(model, 6, 64, 2, **kw).layer == "torch"


@needs_triton
def test_every_fused_layer_kernel_asks_for_the_early_launch_it_was_given(monkeypatch):
    """``pdl`` (``rollout.pdl``) reaches all five kernels of every fused layer, and each
    launch's ``PDL`` flag agrees with its launch option (off CUDA: a plain launch)."""
    asked = []
    launch = K.pdl_launch

    def spy(device, want=True):
        asked.append(want)
        return launch(device, want)

    monkeypatch.setattr(K, "pdl_launch", spy)
    model = _qwen(head_dim=32)
    layers = model.config.num_hidden_layers
    for pdl in (True, False):
        asked.clear()
        s = StaticSampler(
            model, 6, 64, 3, eos_token_id=2, pad_token_id=0, temperature=1.0, top_p=1.0,
            greedy=True, generator=None, use_graph=False, attention="triton", layer="triton",
            pdl=pdl,
        )  # fmt: skip
        s.run(*_prompts())
        assert asked and set(asked) == {pdl}
        assert len(asked) == 5 * layers * 2  # 2 decode steps after the prefill's token
    assert K.pdl_args(torch.device("cpu"), True) == {"PDL": False}
