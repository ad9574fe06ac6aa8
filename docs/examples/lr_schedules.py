"""Learning-rate shapes with warm-up and a floor; each is a pure function of the step."""

import sys

from steerl.schedules import WarmupDecay

total = 100
shapes = {
    "constant": WarmupDecay("constant", total, warmup_steps=10),
    "linear": WarmupDecay("linear", total, warmup_steps=10, min_ratio=0.1),
    "cosine": WarmupDecay("cosine", total, warmup_steps=10, min_ratio=0.1),
    "wsd": WarmupDecay("wsd", total, warmup_steps=10, min_ratio=0.0, decay_fraction=0.2),
    "polynomial": WarmupDecay("polynomial", total, warmup_steps=10, power=2.0),
}
for name, s in shapes.items():
    print(f"{name:10s}", " ".join(f"{s.value(k):.2f}" for k in (0, 9, 10, 50, 80, 99)))

if len(sys.argv) > 1:  # python lr_schedules.py out.png: plot the shapes
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    for name, s in shapes.items():
        ax.plot(range(total), [s.value(k) for k in range(total)], label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("LR / peak")
    ax.legend()
    fig.tight_layout()
    fig.savefig(sys.argv[1], dpi=100)
