"""Training stability: clipping, non-finite/spike/threshold guards, convergence monitors.

How to wire it into a training loop (one ``StabilityManager`` owns every piece and its state)::

    mgr = StabilityManager(cfg.stability, total_steps=cfg.train.steps)

    # each RL step `step` (0-based), each optimizer update within it:
    lr = base_lr * schedule.value(step) * mgr.lr_scale(step)   # set before the update
    loss.backward()
    clip = mgr.clip(model.parameters())                         # ClipResult(pre, post, clipped)
    d = mgr.check_update(loss_value, clip.pre_norm, step_metrics_so_far, step=step,
                         terms={"policy": ..., "kl": ...},      # optional: for the diagnosis
                         named_params=model.named_parameters()) # optional: for the diagnosis
    if d.action == "apply":
        for g in optimizer.param_groups:                        # d.lr_scale: lower_lr starts now
            g["lr"] = base_lr * schedule.value(step) * d.lr_scale * g.get("lr_scale", 1.0)
        optimizer.step()
    elif d.action == "skip":
        optimizer.zero_grad(set_to_none=True)
    elif d.action == "rollback":                                # restore the newest checkpoint,
        keep = mgr.state_dict()                                 # but not the manager's state
        ...restore model / optimizer / other components...
        mgr.load_state_dict(keep); mgr.on_rollback()            # raises past max_rollbacks
    elif d.action == "stop":
        ...zero grads, save, stop; d.reason says why...

    # after the step, with everything logged for it:
    metrics |= clip.metrics() | mgr.step_metrics(step)
    if mgr.observe_train(metrics, step):                        # plateau stop, late guard stop
        stop
    # after each evaluation:
    if mgr.observe_eval({"eval/accuracy/level_1": ..., ...}, step):   # early stopping
        stop
    # checkpoint: components["stability"] = mgr.state_dict(); resume: mgr.load_state_dict(...)
    # end of run: summary["stability"] = mgr.health()

``StabilityError`` (``NonFiniteError`` is one) means the run cannot go on: too many skipped
steps in a row, too many rollbacks. It is the user's to fix (a message, not a traceback).
"""

from steerl.stability.clipping import ClipResult, GradClipper, global_grad_norm, unit_norms
from steerl.stability.guards import (
    Diagnosis,
    NonFiniteError,
    NonFiniteGuard,
    StabilityError,
    ThresholdGuard,
    build_threshold_guards,
    diagnose,
    grad_norm_and_clip,
)
from steerl.stability.manager import Decision, StabilityManager
from steerl.stability.monitor import EarlyStopping, PlateauDetector
from steerl.stability.spikes import SpikeDetector

__all__ = [
    "ClipResult",
    "Decision",
    "Diagnosis",
    "EarlyStopping",
    "GradClipper",
    "NonFiniteError",
    "NonFiniteGuard",
    "PlateauDetector",
    "SpikeDetector",
    "StabilityError",
    "StabilityManager",
    "ThresholdGuard",
    "build_threshold_guards",
    "diagnose",
    "global_grad_norm",
    "grad_norm_and_clip",
    "unit_norms",
]
