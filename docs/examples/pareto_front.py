"""Pareto tools on the measured demo sweep: front, hypervolume, crowding, knee, soups, Tchebycheff.

The objective vectors are the ones `steerl pareto sweep pareto_demo --weights simplex:4` and
`steerl pareto soup` measured (README, "Pareto fronts"): mean greedy exact_match and
length_penalty on 600 held-out prompts, so each is a count divided by 600.
"""

import sys

import numpy as np
import torch

from steerl.config import ModelConfig
from steerl.models import load_policy
from steerl.objectives.scalarize import smooth_tchebycheff, tchebycheff, weighted_sum
from steerl.pareto import (
    crowding_distance,
    fronts,
    hv_contributions,
    hypervolume,
    interpolate,
    knee_point,
    non_dominated,
    simplex,
)
from steerl.pareto.sweep import angles, default_ref

# 1. The sweep: one run per preference vector of simplex(K=2 rewards, N=4 divisions)
prefs = simplex(2, 4)
# (exact_match, length_penalty) of p0..p4 and of the soups s1..s3, both maximised
sweep = np.array([[386, -155.75], [376, -133.75], [371, -132.5], [320, -111.75], [188, -91.25]])
sweep = sweep / 600
soups = np.array([[374, -145.5], [281, -108.25], [226, -93.5]]) / 600

mask = non_dominated(sweep)
ref = default_ref(sweep)  # each objective's minimum minus 10% of its range
print("preferences:", prefs.tolist())
print("on the front:", mask.tolist())
print(f"hypervolume {hypervolume(sweep[mask], ref):.4f} w.r.t. ref {np.round(ref, 3).tolist()}")
print("exclusive HV contributions:", np.round(hv_contributions(sweep, ref), 5).tolist())
print("crowding distance:", np.round(crowding_distance(sweep), 3).tolist())
print(f"knee point: p{knee_point(sweep)}")
print("angle to the preference ray (deg):", angles(sweep, prefs, mask))

# 2. Soups join the same front: non-dominated sorting over all 8 points
everything = np.vstack([sweep, soups])
labels = [f"p{i}" for i in range(5)] + [f"s{i}" for i in range(1, 4)]
for rank, idx in enumerate(fronts(everything)):
    print(f"front {rank}:", [labels[i] for i in idx])

# 3. A rewarded soup is a weighted average of weights fine-tuned from one start; the
#    endpoints of the interpolation are the original models exactly
tiny = ModelConfig(name="tiny")
torch.manual_seed(0)
base = load_policy(tiny).model.state_dict()
a = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v for k, v in base.items()}
b = {k: v - 0.01 * torch.randn_like(v) if v.is_floating_point() else v for k, v in base.items()}
for w in simplex(2, 4):
    mixed = interpolate([a, b], w.tolist())
    gap_a = max((mixed[k] - a[k]).abs().max().item() for k in a)
    print(f"soup {w.tolist()}: max |theta - theta_a| = {gap_a:.4f}")

# 4. Scalarising one group of completions toward a preference (rows: completions; columns:
#    exact_match, length_penalty). C is a balanced answer in a concave part of the front.
R = torch.tensor([[1.0, -1.0], [0.0, 0.0], [0.45, -0.55]])  # A: right but long, B, C
lam = torch.tensor([0.5, 0.5])
ideal = torch.tensor([1.0, 0.0])  # the best value of each reward
for name, r in [
    ("weighted sum", weighted_sum(R, lam)),
    ("tchebycheff", tchebycheff(R, lam, ideal)),
    ("smooth tchebycheff", smooth_tchebycheff(R, lam, ideal, mu=0.1)),
]:
    print(f"{name:18s} A, B, C ->", [round(x, 3) for x in r.tolist()])

if len(sys.argv) > 1:  # python pareto_front.py out.png: the front with sweep and soups
    from steerl.pareto import plot_front_2d

    plot_front_2d(
        everything,
        sys.argv[1],
        names=["exact_match", "length_penalty"],
        labels=labels,
        title="pareto_demo: sweep (p) and soups (s)",
    )
    print("wrote", sys.argv[1])
