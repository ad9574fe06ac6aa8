"""Objectives: reward combination, advantages, and balancers of loss terms."""

from steerl.objectives.advantages import group_advantages, group_std, weighted_sum
from steerl.objectives.balancers import BALANCERS, StaticBalancer


def build_balancer(cfg):
    return BALANCERS.get(cfg.balancer)()


__all__ = [
    "BALANCERS",
    "StaticBalancer",
    "build_balancer",
    "group_advantages",
    "group_std",
    "weighted_sum",
]
