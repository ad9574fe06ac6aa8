"""Loss terms: the policy-gradient family, KL, SFT, and a registry for user losses."""

from steerl.losses.base import LOSSES, LossInputs
from steerl.losses.policy import GRPOLoss, kl_k3
from steerl.losses.sft import sft_loss


def build_policy_loss(cfg):
    """The policy loss named by ``loss.name`` (registered or ``module:function``)."""
    from steerl.config import ConfigError
    from steerl.registry import RegistryError

    try:
        cls = LOSSES.get(cfg.name)
    except RegistryError as e:
        raise ConfigError(f"key 'loss.name': {e}") from None
    return cls(cfg)


__all__ = ["LOSSES", "GRPOLoss", "LossInputs", "build_policy_loss", "kl_k3", "sft_loss"]
