"""Training stability: clipping and guards."""

from steerl.stability.guards import NonFiniteError, NonFiniteGuard, grad_norm_and_clip

__all__ = ["NonFiniteError", "NonFiniteGuard", "grad_norm_and_clip"]
