"""The static-cache sampler (rollout.backend=static): the CPU runs its decode step eagerly."""

from __future__ import annotations

import pytest
import torch

from steerl.config import ConfigError, load_config
from steerl.generation import samplers
from steerl.generation import static as static_mod
from steerl.generation.static import StaticSampler, unsupported_reason
from steerl.logprobs import gather_logprobs
from steerl.rollout import encode_prompts, generate, position_ids_from_mask, resolve_backend

PROMPTS = ["1+2=", "123+456=", "7=", "98+1=", "5+55=", "4321+8765="]


def _qwen(num_layers: int = 2, seed: int = 0, bias: bool = True, head_dim: int = 8):
    """A small Qwen2 (grouped-query attention, q/k/v biases) with prompt-dependent outputs."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    conf = Qwen2Config(
        vocab_size=40,
        hidden_size=4 * head_dim,
        intermediate_size=64,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
    )
    model = Qwen2ForCausalLM(conf).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2 or bias:
                p.normal_(0.0, 0.5)
    return model


def _prompts(n: int = 6, p: int = 7, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 40, (n, p), generator=g)
    mask = torch.ones_like(ids)
    for row, pad in enumerate([0, 3, 0, 5, 1, 0][:n]):  # left padding of mixed widths
        pad = min(pad, p - 1)  # every prompt keeps at least one token
        mask[row, :pad] = 0
        ids[row, :pad] = 0
    return ids, mask


def _gen(model, ids, mask, **kw):
    kw.setdefault("max_new_tokens", 10)
    kw.setdefault("eos_token_id", 2)
    kw.setdefault("pad_token_id", 0)
    return generate(model, ids, mask, **kw)


def _full_logprobs(model, batch, temperature: float = 1.0) -> torch.Tensor:
    """Teacher-forced float64 forward: log-probs of the completion tokens (N, T)."""
    model = model.double()
    ids = torch.cat([batch.prompt_ids, batch.completion_ids], 1)
    mask = torch.cat([batch.prompt_mask, batch.completion_mask], 1)
    with torch.no_grad():
        logits = model(
            input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)
        )
    model.float()
    p, t = batch.prompt_ids.shape[1], batch.completion_ids.shape[1]
    return gather_logprobs(logits.logits[:, p - 1 : p - 1 + t] / temperature, batch.completion_ids)


@pytest.fixture(autouse=True)
def _fresh_cache():
    samplers.clear_cache()
    yield
    samplers.clear_cache()


# --------------------------------------------------------------------------- correctness
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_static_greedy_equals_eager_greedy(tiny_policy, arch):
    if arch == "llama":
        policy = tiny_policy("llama", scale=0.5)
        model = policy.model
        ids, mask = encode_prompts(policy.tokenizer, PROMPTS, policy.device)
        kw = dict(eos_token_id=policy.tokenizer.eos_token_id, pad_token_id=0)
    else:
        model = _qwen()
        ids, mask = _prompts()
        kw = {}
    eager = _gen(model, ids, mask, greedy=True, **kw)
    fast = _gen(model, ids, mask, greedy=True, backend="static", **kw)
    assert torch.equal(eager.completion_ids, fast.completion_ids)
    assert torch.equal(eager.completion_mask, fast.completion_mask)
    torch.testing.assert_close(fast.logprobs, eager.logprobs, atol=1e-4, rtol=0)
    assert len({tuple(r) for r in fast.completion_ids.tolist()}) > 1  # not vacuous


@pytest.mark.parametrize(("temperature", "top_p"), [(1.0, 1.0), (0.7, 1.0), (1.0, 0.6)])
def test_static_sampling_logprobs_match_full_precision_forward(temperature, top_p):
    model = _qwen()
    ids, mask = _prompts()
    g = torch.Generator().manual_seed(1)
    batch = _gen(
        model, ids, mask, generator=g, temperature=temperature, top_p=top_p, backend="static"
    )
    m = batch.completion_mask.bool()
    assert m.sum() > 2 * len(ids)
    want = _full_logprobs(model, batch, temperature)
    torch.testing.assert_close(batch.logprobs[m], want[m].float(), atol=1e-4, rtol=0)
    assert (batch.logprobs[~m] == 0).all()


def test_static_sampling_follows_the_distribution():
    """First-token frequencies over many rows match softmax of the prompt's logits."""
    model = _qwen(num_layers=1)
    ids = torch.randint(4, 40, (1, 5), generator=torch.Generator().manual_seed(3)).repeat(4000, 1)
    mask = torch.ones_like(ids)
    batch = _gen(model, ids, mask, max_new_tokens=1, backend="static", eos_token_id=None)
    with torch.no_grad():
        probs = model(input_ids=ids[:1]).logits[0, -1].double().softmax(-1)
    freq = torch.bincount(batch.completion_ids[:, 0], minlength=probs.numel()).double() / 4000
    assert (freq - probs).abs().max() < 0.03


def test_static_same_seed_same_samples_other_seed_differs():
    model = _qwen()
    ids, mask = _prompts()

    def run(seed):
        return _gen(
            model, ids, mask, generator=torch.Generator().manual_seed(seed), backend="static"
        )

    a, b, c = run(7), run(7), run(8)
    assert torch.equal(a.completion_ids, b.completion_ids)
    assert torch.equal(a.logprobs, b.logprobs)
    assert not torch.equal(a.completion_ids, c.completion_ids)


# --------------------------------------------------------------------------- EOS, shapes
def _force_eos(monkeypatch, eos: int, eos_at: dict[int, int]):
    """Row r emits EOS at completion index ``eos_at[r]`` and never before (static sampler)."""
    orig = StaticSampler._logits

    def logits(self, h):
        out = orig(self, h)
        k = int(self.step)  # the index of the token sampled from these logits
        for row in range(out.shape[0]):
            at = eos_at.get(row)
            out[row, eos] = 1e4 if at == k else -1e4
        return out

    monkeypatch.setattr(StaticSampler, "_logits", logits)


def test_static_masks_stop_after_first_eos(monkeypatch):
    model = _qwen()
    ids, mask = _prompts(4)
    _force_eos(monkeypatch, 2, {0: 0, 1: 2, 3: 4})  # row 2: never
    batch = _gen(model, ids, mask, max_new_tokens=5, backend="static", generator=None)
    assert batch.completion_mask.tolist() == [
        [1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1],
    ]
    assert batch.truncated.tolist() == [False, False, True, False]
    c = batch.completion_ids
    assert c[0, 0] == 2 and c[1, 2] == 2 and c[3, 4] == 2 and (c[2] != 2).all()
    assert (c[batch.completion_mask == 0] == 0).all()  # pad after EOS
    assert (batch.logprobs[batch.completion_mask == 0] == 0).all()


def test_static_stops_early_once_every_row_ended(monkeypatch):
    model = _qwen()
    ids, mask = _prompts(3)
    _force_eos(monkeypatch, 2, {0: 1, 1: 0, 2: 3})
    batch = _gen(model, ids, mask, max_new_tokens=100, backend="static")
    # the host looks every 16 tokens: it stops at the first look after the last EOS
    assert batch.completion_ids.shape == (3, 16)
    assert batch.completion_mask.sum(-1).tolist() == [2, 1, 4]
    assert not batch.truncated.any()


def test_ignore_eos_gives_full_length_completions(monkeypatch):
    model = _qwen()
    ids, mask = _prompts(3)
    _force_eos(monkeypatch, 2, {0: 0, 1: 0, 2: 0})
    for backend in ("static", "eager"):
        batch = _gen(model, ids, mask, max_new_tokens=6, backend=backend, ignore_eos=True)
        assert batch.completion_ids.shape == (3, 6)
        assert batch.completion_mask.all() and batch.truncated.all()


def test_one_sampler_serves_prompts_of_different_widths():
    model = _qwen()
    for width in (3, 7, 20):
        ids, mask = _prompts(p=width)
        eager = _gen(model, ids, mask, greedy=True)
        fast = _gen(model, ids, mask, greedy=True, backend="static")
        assert torch.equal(eager.completion_ids, fast.completion_ids)
    assert len(samplers._SAMPLERS) == 1  # widths bucketed to 64: one cache, one graph


def test_sampler_sees_weight_updates_and_rebuilds_when_replaced():
    model = _qwen()
    ids, mask = _prompts()
    before = _gen(model, ids, mask, greedy=True, backend="static")
    with torch.no_grad():  # an optimizer step: in place
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    after = _gen(model, ids, mask, greedy=True, backend="static")
    assert not torch.equal(before.completion_ids, after.completion_ids)
    assert torch.equal(after.completion_ids, _gen(model, ids, mask, greedy=True).completion_ids)
    sampler = next(iter(samplers._SAMPLERS.values()))
    model.model.norm.weight = torch.nn.Parameter(model.model.norm.weight.detach() * 2)
    assert not sampler.is_valid_for(model)  # a new tensor: the cached graph would be stale
    again = _gen(model, ids, mask, greedy=True, backend="static")
    assert torch.equal(again.completion_ids, _gen(model, ids, mask, greedy=True).completion_ids)


def test_one_off_sampler_neither_evicts_nor_duplicates_the_cached_ones(monkeypatch):
    model = _qwen()
    kept = [_prompts(n=n) for n in (4, 5)]  # two shapes: the cache is full (_KEEP = 2)
    for ids, mask in kept:
        _gen(model, ids, mask, greedy=True, backend="static")
    cached = dict(samplers._SAMPLERS)
    assert len(cached) == samplers._KEEP
    built = []
    init = static_mod.StaticSampler.__init__
    monkeypatch.setattr(
        static_mod.StaticSampler,
        "__init__",
        lambda self, *a, **k: built.append(a[1]) or init(self, *a, **k),
    )
    ids, mask = _prompts(n=6)  # a third shape, once: built, run, not cached
    one_off = _gen(model, ids, mask, greedy=True, backend="static", keep_sampler=False)
    assert built == [6] and samplers._SAMPLERS == cached
    assert torch.equal(one_off.completion_ids, _gen(model, ids, mask, greedy=True).completion_ids)
    ids, mask = kept[0]  # a cached shape: the cached sampler serves it
    _gen(model, ids, mask, greedy=True, backend="static", keep_sampler=False)
    assert built == [6] and samplers._SAMPLERS == cached


# --------------------------------------------------------------------------- backend choice
def test_resolve_backend(tiny_policy):
    llama = tiny_policy("llama").model
    gpt2 = tiny_policy("gpt2").model
    assert resolve_backend("auto", llama) == "eager"  # CPU: eager unless asked
    assert resolve_backend("static", llama) == "static"
    assert resolve_backend("auto", gpt2) == "eager"
    assert unsupported_reason(gpt2) is not None
    with pytest.raises(ConfigError, match=r"rollout\.backend.*'static'.*gpt2.*auto, eager"):
        resolve_backend("static", gpt2)


def test_bad_backend_value_names_key_and_allowed_values():
    with pytest.raises(ConfigError, match=r"rollout\.backend.*'fast'.*'auto', 'eager' or 'static'"):
        load_config("default", ["rollout.backend=fast"])


def test_trainer_runs_with_the_static_backend(tiny_config, tmp_path):
    from steerl.trainer import Trainer

    cfg = tiny_config("rollout.backend=static", "warmup.steps=1", "train.steps=2")
    trainer = Trainer(cfg, tmp_path)
    assert trainer.sampler_backend == "static"
    summary = trainer.train()
    assert summary["rl_steps"] == 2 and summary["completed"]


def test_evaluation_decodes_with_the_rollout_backend_and_frees_it(tiny_config, tmp_path):
    from steerl.generation import static
    from steerl.trainer import Trainer

    # 7 held-out prompts in chunks of 512: one padded chunk
    extra = ("warmup.steps=2", "task.arithmetic.eval_per_level=7")
    eager = Trainer(tiny_config(*extra, "rollout.backend=eager"), tmp_path / "e")
    fast = Trainer(tiny_config(*extra, "rollout.backend=static"), tmp_path / "s")
    for t in (eager, fast):  # a few SFT steps: completions that are not all alike
        t.warmup_step()
        t.warmup_step()
    calls = []
    real = static.StaticSampler.run
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(static.StaticSampler, "run", lambda s, *a: calls.append(s.n) or real(s, *a))
        acc = fast.evaluate()
    assert calls and all(n == calls[0] for n in calls)  # padded to one shape
    assert acc == eager.evaluate()  # greedy: the same completions, the same accuracy
    assert not samplers._SAMPLERS  # nothing kept after evaluation
