from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from steerl.logprobs import completion_logprobs, entropy_from_logits, gather_logprobs
from steerl.rollout import (
    _top_p_filter,
    decode_completions,
    encode_prompts,
    generate,
    position_ids_from_mask,
)

PROMPTS = ["1+2=", "123+456=", "7=", "98+1=", "5+55=", "4321+8765="]


def _encode(policy, texts=PROMPTS):
    return encode_prompts(policy.tokenizer, texts, policy.device)


def _gen(policy, ids, mask, **kw):
    tok = policy.tokenizer
    kw.setdefault("max_new_tokens", 6)
    kw.setdefault("eos_token_id", tok.eos_token_id)
    kw.setdefault("pad_token_id", tok.pad_token_id)
    return generate(policy.model, ids, mask, **kw)


def _completion_logits(model, batch) -> torch.Tensor:
    """Logits predicting each completion token, from one forward of prompt + completion."""
    ids = torch.cat([batch.prompt_ids, batch.completion_ids], 1)
    mask = torch.cat([batch.prompt_mask, batch.completion_mask], 1)
    with torch.no_grad():
        logits = model(
            input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)
        ).logits
    p, t = batch.prompt_ids.shape[1], batch.completion_ids.shape[1]
    return logits[:, p - 1 : p - 1 + t].float()


def test_encode_prompts_left_pads():
    from steerl.models import build_char_tokenizer

    tok = build_char_tokenizer()
    ids, mask = encode_prompts(tok, ["1=", "123="], torch.device("cpu"))
    assert ids.tolist()[0][:2] == [tok.pad_token_id] * 2
    assert mask.tolist() == [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]
    assert position_ids_from_mask(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]


# --------------------------------------------------------------------------- log-probs
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_sampling_logprobs_match_full_forward(tiny_policy, arch):
    policy = tiny_policy(arch, scale=0.5)
    ids, mask = _encode(policy)
    assert (mask == 0).any()  # mixed lengths: some rows are left-padded
    g = torch.Generator().manual_seed(0)
    batch = _gen(policy, ids, mask, generator=g, max_new_tokens=8)
    assert batch.completion_mask.sum() > len(PROMPTS)
    with torch.no_grad():
        lp, ent = completion_logprobs(policy.model, batch, with_entropy=True)
    m = batch.completion_mask.bool()
    torch.testing.assert_close(lp[m], batch.logprobs[m], atol=1e-4, rtol=0)
    assert (batch.logprobs[~m] == 0).all()
    assert ent is not None and ent.shape == lp.shape and (ent >= 0).all()


def test_sampling_logprobs_are_of_the_tempered_untruncated_distribution(tiny_policy):
    policy = tiny_policy(scale=0.5)
    ids, mask = _encode(policy)
    for temperature, top_p in [(0.7, 1.0), (1.3, 1.0), (1.0, 0.5)]:
        g = torch.Generator().manual_seed(1)
        batch = _gen(policy, ids, mask, generator=g, temperature=temperature, top_p=top_p)
        logits = _completion_logits(policy.model, batch) / temperature
        want = gather_logprobs(logits, batch.completion_ids)
        m = batch.completion_mask.bool()
        torch.testing.assert_close(want[m], batch.logprobs[m], atol=1e-4, rtol=0)


def test_gather_logprobs_and_entropy():
    logits = torch.randn(3, 5, 7, generator=torch.Generator().manual_seed(0))
    targets = torch.randint(0, 7, (3, 5), generator=torch.Generator().manual_seed(1))
    want = logits.log_softmax(-1).gather(-1, targets[..., None]).squeeze(-1)
    torch.testing.assert_close(gather_logprobs(logits, targets), want)
    uniform = torch.zeros(2, 3, 8)
    torch.testing.assert_close(entropy_from_logits(uniform), torch.full((2, 3), 8.0).log())


# --------------------------------------------------------------------------- greedy
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_greedy_matches_hf_generate(tiny_policy, arch):
    policy = tiny_policy(arch, scale=0.5)
    tok = policy.tokenizer
    ids, mask = _encode(policy)
    ours = _gen(policy, ids, mask, greedy=True, max_new_tokens=8)
    with torch.no_grad():
        hf = policy.model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=False,
            max_new_tokens=8,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
    hf = hf[:, ids.shape[1] :]
    t = ours.completion_ids.shape[1]
    assert torch.equal(ours.completion_ids, hf[:, :t])
    assert (hf[:, t:] == tok.pad_token_id).all()
    assert len({tuple(r) for r in ours.completion_ids.tolist()}) > 1  # the test is not vacuous


def test_greedy_equals_top_p_near_zero(tiny_policy):
    policy = tiny_policy(scale=0.5)
    ids, mask = _encode(policy)
    greedy = _gen(policy, ids, mask, greedy=True)
    nucleus = _gen(policy, ids, mask, top_p=1e-6, generator=torch.Generator().manual_seed(0))
    assert torch.equal(greedy.completion_ids, nucleus.completion_ids)
    assert torch.equal(greedy.completion_mask, nucleus.completion_mask)


def test_generate_restores_training_mode(tiny_policy):
    policy = tiny_policy()
    policy.model.train()
    ids, mask = _encode(policy)
    _gen(policy, ids, mask, greedy=True, max_new_tokens=2)
    assert policy.model.training


# --------------------------------------------------------------------------- EOS, masks
def _force_eos(model, eos_id: int, eos_at: dict[int, int]):
    """Forward hook: row r emits EOS at completion index ``eos_at[r]`` and never before."""
    calls = {"n": 0}

    def hook(module, args, output):
        k = calls["n"]
        calls["n"] += 1
        for row in range(output.logits.shape[0]):
            at = eos_at.get(row)
            if at is None or k < at:
                output.logits[row, -1, eos_id] = -1e4
            elif k == at:
                output.logits[row, -1, eos_id] = 1e4
        return output

    return model.register_forward_hook(hook)


@pytest.mark.parametrize("greedy", [True, False])
@pytest.mark.parametrize("pad_is_eos", [False, True])
def test_masks_stop_after_first_eos(tiny_policy, greedy, pad_is_eos):
    policy = tiny_policy(scale=0.5)
    tok = policy.tokenizer
    eos = tok.eos_token_id
    pad = eos if pad_is_eos else tok.pad_token_id
    ids, mask = _encode(policy, PROMPTS[:4])
    handle = _force_eos(policy.model, eos, {0: 0, 1: 2, 3: 4})  # row 2: never
    try:
        batch = _gen(
            policy,
            ids,
            mask,
            max_new_tokens=5,
            pad_token_id=pad,
            greedy=greedy,
            generator=torch.Generator().manual_seed(0),
        )
    finally:
        handle.remove()
    assert batch.completion_mask.tolist() == [
        [1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1],
    ]
    assert batch.truncated.tolist() == [False, False, True, False]
    c = batch.completion_ids
    assert c[0, 0] == eos and c[1, 2] == eos and c[3, 4] == eos and (c[2] != eos).all()
    assert (c[batch.completion_mask == 0] == pad).all()
    assert (batch.logprobs[batch.completion_mask == 0] == 0).all()
    assert batch.logprobs[0, 0] > -1e-3  # EOS was (nearly) certain
    assert batch.num_tokens == 1 + 3 + 5 + 5
    texts = decode_completions(tok, batch)
    assert texts[0] == ""
    for row, text in zip(range(1, 4), texts[1:]):
        kept = c[row][batch.completion_mask[row].bool()].tolist()
        assert text == tok.decode(kept, skip_special_tokens=True)
        assert "<" not in text


def test_generation_stops_when_every_row_is_done(tiny_policy):
    policy = tiny_policy(scale=0.5)
    ids, mask = _encode(policy, PROMPTS[:3])
    handle = _force_eos(policy.model, policy.tokenizer.eos_token_id, {0: 1, 1: 0, 2: 1})
    try:
        batch = _gen(policy, ids, mask, max_new_tokens=6, greedy=True)
    finally:
        handle.remove()
    assert batch.completion_ids.shape == (3, 2)
    assert batch.completion_mask.tolist() == [[1, 1], [1, 0], [1, 1]]
    assert not batch.truncated.any()


def test_rollout_index_selects_rows(tiny_policy):
    policy = tiny_policy(scale=0.5)
    ids, mask = _encode(policy)
    batch = _gen(policy, ids, mask, generator=torch.Generator().manual_seed(0))
    sub = batch.index(torch.tensor([4, 1]))
    assert torch.equal(sub.prompt_ids, batch.prompt_ids[[4, 1]])
    assert torch.equal(sub.completion_ids, batch.completion_ids[[4, 1]])
    assert torch.equal(sub.logprobs, batch.logprobs[[4, 1]])
    assert torch.equal(sub.truncated, batch.truncated[[4, 1]])


# --------------------------------------------------------------------------- seeds
def test_same_seed_same_samples_different_seed_different(tiny_policy):
    policy = tiny_policy(scale=0.5)
    ids, mask = _encode(policy, PROMPTS * 2)

    def run(seed):
        return _gen(policy, ids, mask, generator=torch.Generator().manual_seed(seed))

    a, b, c = run(7), run(7), run(8)
    assert torch.equal(a.completion_ids, b.completion_ids)
    assert torch.equal(a.logprobs, b.logprobs)
    assert not torch.equal(a.completion_ids, c.completion_ids)


def test_sampler_generator_is_independent_of_global_rng(tiny_policy):
    policy = tiny_policy(scale=0.5)
    ids, mask = _encode(policy)
    torch.manual_seed(0)
    a = _gen(policy, ids, mask, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(1)
    b = _gen(policy, ids, mask, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.completion_ids, b.completion_ids)


# --------------------------------------------------------------------------- top-p
def test_top_p_keeps_minimal_nucleus_example():
    probs = torch.tensor([0.05, 0.5, 0.15, 0.3])
    logits = probs.log()[None]
    kept = lambda p: torch.isfinite(_top_p_filter(logits, p))[0].tolist()  # noqa: E731
    assert kept(0.4) == [False, True, False, False]
    assert kept(0.7) == [False, True, False, True]
    assert kept(0.9) == [False, True, True, True]
    assert kept(0.99) == [True, True, True, True]
    out = _top_p_filter(logits, 0.7)
    assert torch.equal(out[0, [1, 3]], logits[0, [1, 3]])  # kept logits unchanged


@settings(max_examples=60, deadline=None)
@given(
    logits=st.lists(st.floats(-8, 8, allow_nan=False), min_size=2, max_size=12),
    top_p=st.floats(0.01, 0.99),
)
def test_top_p_keeps_minimal_nucleus_property(logits, top_p):
    x = torch.tensor(logits, dtype=torch.float64)[None]
    probs = x.softmax(-1)[0]
    kept = torch.isfinite(_top_p_filter(x, top_p))[0]
    assert kept.any()
    # the kept set is a top-k set: every kept token is at least as likely as every dropped one
    if (~kept).any():
        assert probs[kept].min() >= probs[~kept].max() - 1e-12
    mass = probs[kept].sum()
    assert mass >= top_p - 1e-9  # enough mass ...
    assert mass - probs[kept].min() < top_p + 1e-9  # ... and no smaller set would do
