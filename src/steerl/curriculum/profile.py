"""``steerl curriculum profile``: measure each training prompt's difficulty with a policy.

For every training prompt (``curriculum.levels`` of them), ``k`` completions are sampled
with the run's rollout settings (temperature, top-p, ``max_new_tokens``) and scored by the
recipe's first reward; the pass rate is the mean score clipped to [0, 1], and the prompt's
difficulty is ``1 - pass rate``. Rows ``{"id", "difficulty", "pass_rate", "k"}`` are appended
to a JSONL file that ``curriculum.difficulty_file`` loads. The file is flushed after every
chunk, and a rerun skips the ids already in it, so a killed profile resumes where it stopped.
A prompt none of whose completions could be scored gets no row (counted as unscored).

Without ``run_dir`` the policy is the recipe's model as loaded, before any SFT warm-up.
For the built-in ``tiny`` model that is a randomly initialised network: its pass rates are
noise around 0, every difficulty about 1, which silently flattens any curriculum built on
the file. That stops with an error unless ``allow_untrained`` (``--allow-untrained``); a
pretrained model whose recipe has a warm-up (``warmup.steps`` > 0) is profiled with a
warning from :func:`untrained_warning`, since profiling a base model before RL is a real use.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from steerl.config import Config, ConfigError, RewardSpec
from steerl.curriculum.difficulty import append_rows, done_ids
from steerl.evaluation import prompt_fields

UNTRAINED_ERROR = (
    "steerl curriculum profile without --run samples model.name={name!r} as loaded, and the "
    "built-in tiny model is a randomly initialised network: it solves nothing, so every "
    "difficulty would be about 1. Profile a trained run (--run RUN_DIR, e.g. one trained "
    "with warmup.steps > 0 and train.steps=0), or pass --allow-untrained to profile the "
    "untrained model anyway"
)


def untrained_warning(cfg: Config, run_dir: str | Path | None) -> str | None:
    """A warning when a pretrained model is profiled before the recipe's SFT warm-up."""
    if run_dir is not None or cfg.model.name == "tiny" or not cfg.warmup.steps:
        return None
    return (
        f"profiling model.name={cfg.model.name!r} as loaded: the recipe's SFT warm-up "
        f"(warmup.steps={cfg.warmup.steps}) has not run, so these are the base model's pass "
        "rates; pass --run RUN_DIR to profile a trained policy"
    )


def profile_difficulty(
    cfg: Config,
    out: str | Path,
    k: int = 8,
    run_dir: str | Path | None = None,
    chunk: int = 32,
    limit: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    allow_untrained: bool = False,
) -> dict[str, Any]:
    """Profile the training prompts into ``out``; returns counts and the mean pass rate.

    ``run_dir``: sample with the newest checkpoint of that run instead of the recipe's model.
    ``on_progress(done, total)`` is called after every chunk (and once at the start).
    Without ``run_dir``, the built-in tiny model (random weights) needs ``allow_untrained``.
    """
    import torch

    from steerl import checkpoint as ckpt
    from steerl.models import load_policy
    from steerl.rewards import build_rewards
    from steerl.rollout import decode_completions, encode_prompts, generate
    from steerl.tasks import build_task

    if k < 1:
        raise ConfigError(f"--k must be at least 1, got {k}")
    if run_dir is None and cfg.model.name == "tiny" and not allow_untrained:
        raise ConfigError(UNTRAINED_ERROR.format(name=cfg.model.name))
    torch.set_num_threads(cfg.train.threads or min(4, torch.get_num_threads()))
    torch.manual_seed(cfg.train.seed)
    prompts = build_task(cfg).train
    if cfg.curriculum.levels is not None:
        prompts = [p for p in prompts if p.level in set(cfg.curriculum.levels)]
    if limit is not None:
        prompts = prompts[:limit]
    done = done_ids(out)
    todo = [p for p in prompts if p.id not in done]

    policy = load_policy(cfg.model)
    if run_dir is not None:
        path = ckpt.latest_checkpoint(Path(run_dir))
        if path is None:
            raise FileNotFoundError(f"no complete checkpoint in {Path(run_dir) / 'checkpoints'}")
        ckpt.load_weights(path, policy.model)  # full weights, or a LoRA adapter
    model, tok = policy.model, policy.tokenizer
    model.eval()
    first = cfg.rewards[0]
    reward = build_rewards([RewardSpec(name=first.name, args=first.args, timeout=first.timeout)])
    sampler = torch.Generator(device=policy.device).manual_seed(cfg.train.seed)

    total, n_done = len(prompts), len(prompts) - len(todo)
    if on_progress:
        on_progress(n_done, total)
    written, unscored, pass_sum = 0, 0, 0.0
    for i in range(0, len(todo), chunk):
        part = todo[i : i + chunk]
        rows = [p for p in part for _ in range(k)]
        texts = [p.text for p in rows]
        with torch.no_grad():
            ids, mask = encode_prompts(tok, texts, policy.device, cfg.model.chat_template)
            batch = generate(
                model,
                ids,
                mask,
                max_new_tokens=cfg.rollout.max_new_tokens,
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
                temperature=cfg.rollout.temperature,
                top_p=cfg.rollout.top_p,
                generator=sampler,
            )
        completions = decode_completions(tok, batch)
        scores = reward.score(texts, completions, prompt_fields(rows), step=-1).scores[:, 0]
        scores = scores.view(len(part), k)
        out_rows = []
        for p, s in zip(part, scores):
            ok = s[~s.isnan()]
            if not len(ok):
                unscored += 1
                continue
            rate = float(ok.clamp(0, 1).mean())
            pass_sum += rate
            out_rows.append(
                {"id": p.id, "difficulty": 1.0 - rate, "pass_rate": rate, "k": int(len(ok))}
            )
        append_rows(out, out_rows)
        written += len(out_rows)
        n_done += len(part)
        if on_progress:
            on_progress(n_done, total)
    return {
        "out": str(out),
        "prompts": total,
        "already": total - len(todo),
        "written": written,
        "unscored": unscored,
        "mean_pass_rate": pass_sum / written if written else None,
    }
