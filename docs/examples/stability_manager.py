"""Spike detection and the non-finite guard on a synthetic stream of losses."""

import math

from steerl.config import StabilityConfig
from steerl.stability import StabilityManager

cfg = StabilityConfig(
    spikes=[{"metric": "train/loss", "window": 20, "threshold": 6.0, "action": "skip"}],
    skip_nonfinite=True,
)
manager = StabilityManager(cfg, total_steps=40)
for step in range(40):
    loss = 1.0 + 0.01 * math.sin(step)
    if step == 25:
        loss *= 1000  # an injected spike
    if step == 30:
        loss = float("nan")  # an injected non-finite loss
    decision = manager.check_update(loss, grad_norm=0.5, step=step)
    if decision.action != "apply":
        print(f"step {step}: {decision.action} ({decision.reason})")
print("health:", manager.health())
