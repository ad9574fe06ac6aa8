"""Loss terms: the policy-gradient family, KL, SFT, DPO, and registries for user losses.

``loss.name`` picks the policy loss from :data:`LOSSES` (or ``package.module:attr``): a class
built as ``cls(cfg: LossConfig)``, or a function ``fn(inputs: LossInputs[, cfg])`` returning
``(loss, metrics)``. ``loss.aux`` adds named terms from :data:`LOSS_TERMS`
(``cls(spec: AuxLossSpec)`` following :class:`LossTerm`). :func:`build_loss_terms` returns them
all; the trainer gives the balancer ``{term.name: term.coef * loss}``.
"""

from __future__ import annotations

import functools
import inspect

from steerl.losses.base import (
    LOSS_TERMS,
    LOSSES,
    DemoInputs,
    LossInputs,
    LossTerm,
    PairInputs,
    aggregate,
    global_counts,
    loss_mask,
)
from steerl.losses.dpo import DPOTerm, dpo_loss
from steerl.losses.policy import (
    GRPOLoss,
    PolicyGradientLoss,
    kl_estimate,
    kl_k1,
    kl_k2,
    kl_k3,
)
from steerl.losses.sft import SFTTerm, sft_loss

TERM_INPUTS = ("rollout", "demonstrations", "pairs")


def build_policy_loss(cfg):
    """The policy loss named by ``loss.name`` (registered or ``module:function``)."""
    from steerl.config import ConfigError
    from steerl.registry import RegistryError

    try:
        obj = LOSSES.get(cfg.name)
    except RegistryError as e:
        raise ConfigError(f"key 'loss.name': {e}") from None
    if obj is sft_loss or obj is dpo_loss:
        raise ConfigError(
            f"key 'loss.name': {cfg.name!r} is not a policy loss; add it as an auxiliary term "
            f"instead: loss.aux: [{{name: {cfg.name}, coef: 0.1}}]"
        )
    if inspect.isclass(obj):
        return obj(cfg)
    if not callable(obj):
        raise ConfigError(f"key 'loss.name': {cfg.name!r} is not callable")
    try:
        takes_cfg = "cfg" in inspect.signature(obj).parameters
    except (TypeError, ValueError):
        takes_cfg = False
    return functools.partial(obj, cfg=cfg) if takes_cfg else obj


class PolicyTerm:
    """The policy loss as the ``policy`` term (coefficient 1, rollout inputs)."""

    name = "policy"
    coef = 1.0
    inputs = "rollout"

    def __init__(self, loss):
        self.loss = loss

    def __call__(self, x: LossInputs):
        return self.loss(x)

    def __repr__(self) -> str:
        return f"PolicyTerm({self.loss!r})"


def build_aux_terms(cfg) -> list[LossTerm]:
    """The ``loss.aux`` terms, in order; errors name the key."""
    from steerl.config import ConfigError
    from steerl.registry import RegistryError

    terms = []
    for i, spec in enumerate(cfg.aux):
        try:
            cls = LOSS_TERMS.get(spec.name)
        except RegistryError as e:
            raise ConfigError(f"key 'loss.aux.{i}.name': {e}") from None
        try:
            term = cls(spec)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"key 'loss.aux.{i}': cannot build {spec.name!r}: {e}") from None
        if not isinstance(term, LossTerm) or term.inputs not in TERM_INPUTS:
            raise ConfigError(
                f"key 'loss.aux.{i}.name': {spec.name!r} is not a loss term (it needs attributes "
                f"name, coef, inputs in {TERM_INPUTS} and a __call__)"
            )
        terms.append(term)
    return terms


def loss_requirements(cfg) -> list[str]:
    """What ``loss.*`` needs from the other sections of a full ``Config``: problems, if any.

    (The ``LossConfig`` section checks its own keys; these span sections.)
    """
    lc, problems = cfg.loss, []
    if lc.advantage == "rloo" and cfg.rollout.group_size < 2:
        problems.append(
            f"loss.advantage=rloo needs rollout.group_size >= 2 (leave-one-out baseline), "
            f"got rollout.group_size={cfg.rollout.group_size}"
        )
    if lc.needs_reference and cfg.model.reference == "none":
        why = "loss.kl_coef > 0" if lc.kl_coef > 0 else "loss.aux dpo"
        problems.append(f"{why} needs a reference model, but model.reference=none")
    return problems


def build_loss_terms(cfg) -> list[LossTerm]:
    """All named terms of the summed loss: ``policy`` first, then ``loss.aux``."""
    return [PolicyTerm(build_policy_loss(cfg)), *build_aux_terms(cfg)]


__all__ = [
    "LOSSES",
    "LOSS_TERMS",
    "DPOTerm",
    "DemoInputs",
    "GRPOLoss",
    "LossInputs",
    "LossTerm",
    "PairInputs",
    "PolicyGradientLoss",
    "PolicyTerm",
    "SFTTerm",
    "aggregate",
    "build_aux_terms",
    "build_loss_terms",
    "build_policy_loss",
    "dpo_loss",
    "global_counts",
    "kl_estimate",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "loss_mask",
    "loss_requirements",
    "sft_loss",
]
