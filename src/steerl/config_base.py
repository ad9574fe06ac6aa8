"""The base of every config section and the user-facing config error.

Kept apart from ``steerl.config`` so that sections defined next to the component they
configure (``steerl.tuning.spec``) can import it without an import cycle.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ConfigError(ValueError):
    """A recipe or override is invalid; the message is meant for the user as-is."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
