"""Adaptive selectors on scripted statistics, and DAPO zero-variance filtering with refill.

A simulated policy replaces the model so that each selector's rule is visible in a few
seconds: 3 levels x 200 prompts; level 1 is always solved, level 2 half-solved (pass rates
0.2-0.9), and in level 3 a third of the prompts are solved 30% of the time, the rest never.
Every step samples 32 prompts x G = 8 Bernoulli rewards and feeds them back with
``curriculum.update``, exactly as the trainer does.

Run as `python adaptive_curriculum.py out.png` to also plot the sampling share per level.
"""

import sys

import numpy as np
import torch

from steerl.config import CurriculumConfig
from steerl.curriculum import CURRICULA, sample_groups
from steerl.rewards import RewardResult
from steerl.rollout import Rollout
from steerl.tasks.base import Prompt

G, B, STEPS = 8, 32, 40
rng = np.random.default_rng(0)
prompts = [
    Prompt(id=f"L{lv}-{i}", text=f"q{lv}-{i}", answer="", difficulty=float(lv))
    for lv in (1, 2, 3)
    for i in range(200)
]
true_p = {p.id: 1.0 for p in prompts if p.level == 1}
true_p.update({p.id: rng.uniform(0.2, 0.9) for p in prompts if p.level == 2})
true_p.update({p.id: 0.3 if rng.random() < 1 / 3 else 0.0 for p in prompts if p.level == 3})


def rollout_rewards(batch: list[Prompt], gen: np.random.Generator) -> torch.Tensor:
    """(groups, G) pass/fail rewards of the simulated policy."""
    p = np.array([true_p[q.id] for q in batch])[:, None]
    return torch.tensor((gen.random((len(batch), G)) < p).astype(np.float64))


def group_advantages(r: torch.Tensor) -> torch.Tensor:
    return (r - r.mean(-1, keepdim=True)) / (r.std(-1, keepdim=True) + 1e-4)


shares: dict[str, np.ndarray] = {}
print(f"{'selector':17s} informative  level share (1, 2, 3), last 20 steps  state")
arms = {
    "uniform": {},
    "competence": {},  # band [0.2, 0.8] of the posterior pass rate
    "adarft": {},  # target difficulty from 0, moved by the batch mean reward
    "learnability": {},  # weight p(1 - p)
    "bandit": {},  # softmax over levels on learning progress
    "prioritized": {},  # rank temperature 1: weight 1 / rank
    "prioritized T=0.1": {"prioritized": {"temperature": 0.1}},  # PLR's value
}
for label, extra in arms.items():
    name = label.split()[0]
    cfg = CurriculumConfig(name=name, **extra)
    cur = CURRICULA.get(name)(prompts, seed=0, cfg=cfg, total_steps=STEPS)
    gen = np.random.default_rng(1)
    informative, share = [], np.zeros((STEPS, 3))
    for step in range(STEPS):
        batch = cur.sample(B, step)
        r = rollout_rewards(batch, gen)
        cur.update([q.id for q in batch], r, step, advantages=group_advantages(r))
        informative.append(float((r.std(-1) > 0).float().mean()))
        m = cur.metrics()
        share[step] = [m.get(f"curriculum/level_{lv}/share", 0.0) for lv in (1, 2, 3)]
    shares[label] = share
    state = {
        k.removeprefix("curriculum/"): round(v, 2)
        for k, v in cur.metrics().items()
        if k.endswith(("target_difficulty", "in_band", "/prob", "replay_share"))
    }
    print(
        f"{label:17s} {np.mean(informative[20:]):11.2f}  "
        + "  ".join(f"{x:.2f}" for x in share[20:].mean(0))
        + f"  {state}"
    )

# DAPO dynamic sampling: groups whose rewards do not vary are dropped, and further prompts
# are sampled and generated (up to max_refill_rounds rounds) until B groups carry signal.
cur = CURRICULA.get("uniform")(prompts, seed=0)
gen = np.random.default_rng(2)


def fake_generate(batch):
    """A stand-in for the rollout: one-token prompts and completions."""
    n = len(batch) * G
    z = torch.zeros(n, 1, dtype=torch.long)
    rollout = Rollout(z, z + 1, z, z + 1, torch.zeros(n, 1), torch.zeros(n, dtype=torch.bool))
    return rollout, [""] * n


def fake_score(batch, completions):
    """The combined reward (B*G,) and every reward's scores, as the trainer's scorer returns."""
    r = rollout_rewards(batch, gen).reshape(-1).float()
    return r, RewardResult(r[:, None], ["pass"], torch.ones(1))


for step, rounds in enumerate((0, 1, 3)):
    cfg = CurriculumConfig(max_refill_rounds=rounds)
    got = sample_groups(
        lambda n, step=step: cur.sample(n, step), fake_generate, fake_score, B, G, cfg
    )
    m = got.metrics
    print(
        f"max_refill_rounds={rounds}: sampled {m['curriculum/sampled_groups']:.0f} groups in "
        f"{got.refill_rounds + 1} round(s), filtered {m['curriculum/filtered_fraction']:.0%}, "
        f"kept {m['curriculum/kept_groups']:.0f} of {B} (short batch: {got.cap_hit})"
    )

if len(sys.argv) > 1:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(shares)
    fig, axes = plt.subplots(len(names), 1, figsize=(6, 0.85 * len(names) + 0.8), sharex=True)
    for ax, name in zip(axes, names):
        im = ax.imshow(
            shares[name].T, aspect="auto", origin="lower", vmin=0, vmax=1, cmap="viridis"
        )
        ax.set_yticks([0, 1, 2], ["1", "2", "3"], fontsize=7)
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    fig.subplots_adjust(left=0.24, right=0.8, top=0.93, bottom=0.1)
    axes[-1].set_xlabel("step (simulated policy)")
    axes[0].set_title("Share of sampled prompts per level", fontsize=9)
    fig.colorbar(im, cax=fig.add_axes((0.84, 0.25, 0.03, 0.5)), label="share")
    fig.savefig(sys.argv[1], dpi=90)
    print("wrote", sys.argv[1])
