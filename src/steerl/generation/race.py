"""The static sampler's sampling step in Triton (CUDA; optional): :func:`race_pick`.

The next token by the exponential race ``argmax(z - log E)`` on the tempered logits ``z``,
its log-probability ``z - logsumexp(z)``, and the sampler's bookkeeping (recorded token and
log-probability, ``done``, the fed-back token), in two kernels plus the step counter's
increment. The Exp(1) noise is drawn inside the kernel from a Philox stream seeded by one
integer per step taken from the caller's generator, so it never touches memory (the
tensor-op version writes and reads 39 MB of noise per step at batch 64). Tests run it on the
CPU through Triton's interpreter (``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import torch

from steerl.generation.kernels import tl, triton

if triton is not None:

    @triton.jit
    def _race_update(
        logits_ptr, row, s_logits, offs, V, inv_temp, u, m, ssum, best, best_idx, best_z,
        GREEDY: tl.constexpr,
    ):  # fmt: skip
        """One block of logits into the lane-wise running log-sum-exp and race winner."""
        ok = offs < V
        z = tl.load(logits_ptr + row * s_logits + offs, mask=ok, other=float("-inf"))
        z = z.to(tl.float32) * inv_temp
        m_new = tl.maximum(m, z)
        ssum = ssum * tl.exp(m - m_new) + tl.exp(z - m_new)
        if GREEDY:
            race = z
        else:
            race = z - tl.log(-tl.log(u))  # E = -log U ~ Exp(1)
        race = tl.where(ok, race, float("-inf"))
        better = race > best
        best = tl.where(better, race, best)
        best_idx = tl.where(better, offs, best_idx)
        best_z = tl.where(better, z, best_z)
        return m_new, ssum, best, best_idx, best_z

    @triton.jit
    def _race_partial_kernel(
        logits_ptr, seed_ptr, m_ptr, s_ptr, best_ptr, idx_ptr, zb_ptr,
        s_logits, V, inv_temp,
        SPLITS: tl.constexpr, CHUNK: tl.constexpr, BLOCK: tl.constexpr, GREEDY: tl.constexpr,
    ):  # fmt: skip
        """Logits [sp * CHUNK, (sp + 1) * CHUNK) of one row, BLOCK at a time as four
        contiguous quarters that share one Philox call (``rand4x``: four uniforms per counter,
        a quarter of the generator's arithmetic, which bounds this kernel)."""
        Q: tl.constexpr = BLOCK // 4
        ROW_SPAN: tl.constexpr = SPLITS * CHUNK // 4  # Philox counters per row
        row = tl.program_id(0)
        sp = tl.program_id(1)
        seed = tl.load(seed_ptr)
        j = tl.arange(0, Q)
        m = tl.full((Q,), -1.0e30, tl.float32)
        ssum = tl.zeros((Q,), tl.float32)
        best = tl.full((Q,), float("-inf"), tl.float32)
        best_idx = tl.zeros((Q,), tl.int32)
        best_z = tl.zeros((Q,), tl.float32)
        lo = sp * CHUNK
        for start in range(lo, lo + CHUNK, BLOCK):
            if GREEDY:
                u0, u1, u2, u3 = m, m, m, m  # unused
            else:  # one counter per position of the quarter: unique over rows and blocks
                u0, u1, u2, u3 = tl.rand4x(seed, row * ROW_SPAN + start // 4 + j)
            args = (logits_ptr, row, s_logits)
            m, ssum, best, best_idx, best_z = _race_update(
                *args, start + j, V, inv_temp, u0, m, ssum, best, best_idx, best_z, GREEDY
            )
            m, ssum, best, best_idx, best_z = _race_update(
                *args, start + Q + j, V, inv_temp, u1, m, ssum, best, best_idx, best_z, GREEDY
            )
            m, ssum, best, best_idx, best_z = _race_update(
                *args, start + 2 * Q + j, V, inv_temp, u2, m, ssum, best, best_idx, best_z, GREEDY
            )
            m, ssum, best, best_idx, best_z = _race_update(
                *args, start + 3 * Q + j, V, inv_temp, u3, m, ssum, best, best_idx, best_z, GREEDY
            )
        mm = tl.max(m, 0)
        total = tl.sum(ssum * tl.exp(m - mm), 0)
        top = tl.argmax(best, 0)
        lane = tl.arange(0, Q) == top
        out = row * SPLITS + sp
        tl.store(m_ptr + out, mm)
        tl.store(s_ptr + out, total)
        tl.store(best_ptr + out, tl.max(best, 0))
        tl.store(idx_ptr + out, tl.sum(tl.where(lane, best_idx, 0), 0))
        tl.store(zb_ptr + out, tl.sum(tl.where(lane, best_z, 0.0), 0))

    @triton.jit
    def _race_combine_kernel(
        m_ptr, s_ptr, best_ptr, idx_ptr, zb_ptr,
        done_ptr, step_ptr, cur_ptr, tokens_ptr, logprobs_ptr, s_tok, s_lp,
        N, pad, eos, max_new,
        SPLITS: tl.constexpr, BLOCK_N: tl.constexpr,
    ):  # fmt: skip
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        sps = tl.arange(0, SPLITS)
        in_rows = rows < N
        at = rows[:, None] * SPLITS + sps[None, :]
        mask2 = in_rows[:, None]
        pm = tl.load(m_ptr + at, mask=mask2, other=-1.0e30)
        ps = tl.load(s_ptr + at, mask=mask2, other=0.0)
        pb = tl.load(best_ptr + at, mask=mask2, other=float("-inf"))
        pi = tl.load(idx_ptr + at, mask=mask2, other=0)
        pz = tl.load(zb_ptr + at, mask=mask2, other=0.0)
        mrow = tl.max(pm, 1)
        lse = mrow + tl.log(tl.sum(ps * tl.exp(pm - mrow[:, None]), 1))
        win = tl.argmax(pb, 1)
        pick = sps[None, :] == win[:, None]
        tok = tl.sum(tl.where(pick, pi, 0), 1)
        lp = tl.sum(tl.where(pick, pz, 0.0), 1) - lse
        step = tl.load(step_ptr)
        col = tl.minimum(step, max_new - 1)
        done = tl.load(done_ptr + rows, mask=in_rows, other=0) != 0
        tl.store(tokens_ptr + rows * s_tok + col, tl.where(done, pad, tok), mask=in_rows)
        tl.store(logprobs_ptr + rows * s_lp + col, tl.where(done, 0.0, lp), mask=in_rows)
        tl.store(done_ptr + rows, (done | (tok == eos)).to(tl.int8), mask=in_rows)
        tl.store(cur_ptr + rows, tok, mask=in_rows)


#: Programs per row of :func:`race_pick`'s first kernel (a row of 152k logits is 16 chunks).
RACE_SPLITS = 16
RACE_BLOCK = 1024


def race_pick(
    logits: torch.Tensor,
    seed: torch.Tensor,
    *,
    inv_temp: float,
    greedy: bool,
    done: torch.Tensor,
    step: torch.Tensor,
    cur: torch.Tensor,
    tokens: torch.Tensor,
    logprobs: torch.Tensor,
    pad: int,
    eos: int | None,
    splits: int | None = None,
    block: int | None = None,
) -> None:
    """Sample and record the next token of every row, in place (see the module docstring).

    ``logits`` (N, V) any float dtype; ``seed`` a one-element int64 tensor (the Philox seed
    of this step); ``done`` (N,) bool, ``step`` (1,) int64, ``cur`` (N,) int64, ``tokens``
    (N, T) int64 and ``logprobs`` (N, T) float32 are updated as the tensor-op sampler does.
    ``splits`` programs per row, each scanning ``block`` logits at a time (defaults: up to
    :data:`RACE_SPLITS` and :data:`RACE_BLOCK`, fewer for a small vocabulary).
    """
    n, vocab = logits.shape
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    block = block or min(RACE_BLOCK, max(4, triton.next_power_of_2(vocab)))
    if block < 4 or block & (block - 1):
        raise ValueError(f"race_pick: block must be a power of 2 >= 4 (four quarters), got {block}")
    if splits is None:  # a power of 2 (the merge ranges over the splits), at most RACE_SPLITS
        splits = min(RACE_SPLITS, 1 << (triton.cdiv(vocab, block).bit_length() - 1))
    if splits < 1 or splits & (splits - 1):
        raise ValueError(f"race_pick: splits must be a power of 2, got {splits}")
    chunk = triton.cdiv(triton.cdiv(vocab, splits), block) * block
    dev = logits.device
    part = [torch.empty((n, splits), dtype=torch.float32, device=dev) for _ in range(4)]
    idx = torch.empty((n, splits), dtype=torch.int32, device=dev)
    pm, ps, pb, pz = part
    _race_partial_kernel[(n, splits)](
        logits, seed, pm, ps, pb, idx, pz,
        logits.stride(0), vocab, inv_temp,
        SPLITS=splits, CHUNK=chunk, BLOCK=block, GREEDY=greedy,
    )  # fmt: skip
    block_n = min(64, triton.next_power_of_2(n))
    _race_combine_kernel[(triton.cdiv(n, block_n),)](
        pm, ps, pb, idx, pz,
        done.view(torch.int8), step, cur, tokens, logprobs, tokens.stride(0), logprobs.stride(0),
        n, pad, -1 if eos is None else eos, tokens.shape[1],
        SPLITS=splits, BLOCK_N=block_n,
    )  # fmt: skip
    step += 1  # after every row read it (the row blocks run in any order)
