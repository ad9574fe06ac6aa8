"""Balancers turn named loss terms into one backward pass.

Protocol: ``combine(terms: dict[str, Tensor], params) -> dict[str, float]`` does the
backward and returns the weights it used (logged every step as ``balancer/<term>``);
``state_dict()`` / ``load_state_dict()`` carry its state through checkpoints.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from steerl.registry import Registry

BALANCERS: Registry = Registry("balancer")


@BALANCERS.register("static")
class StaticBalancer:
    """Fixed weights (1 for every term unless given): backward of the weighted sum."""

    def __init__(self, weights: dict[str, float] | None = None):
        self.weights = dict(weights or {})

    def combine(
        self, terms: dict[str, torch.Tensor], params: Iterable[torch.nn.Parameter] = ()
    ) -> dict[str, float]:
        used = {k: self.weights.get(k, 1.0) for k in terms}
        total = sum(w * terms[k] for k, w in used.items())
        total.backward()
        return used

    def state_dict(self) -> dict:
        return {"weights": dict(self.weights)}

    def load_state_dict(self, state: dict) -> None:
        self.weights = dict(state["weights"])

    def __repr__(self) -> str:
        return f"StaticBalancer(weights={self.weights})"
