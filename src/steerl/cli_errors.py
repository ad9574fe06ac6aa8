"""How every ``steerl`` command reports the user's mistakes (shared by all sub-apps).

A mistake the user can fix (a bad recipe or override, an unknown component, a model that will
not load, a reward that keeps failing, a missing file) ends with a red ``error: ...`` on
stderr and exit code 2; anything else is a bug and keeps its traceback. Kept apart from
``steerl.cli`` so the sub-apps (``tuning/cli.py``, ``curriculum/cli.py``, ``pareto/cli.py``)
can import it without importing the main app (which imports them).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console

from steerl.config import ConfigError
from steerl.registry import RegistryError

EXIT_USER_ERROR = 2


def is_user_error(e: Exception) -> bool:
    """A mistake the user can fix (as opposed to a bug in steerl or in their code)."""
    if isinstance(e, (ConfigError, RegistryError, FileNotFoundError)):
        return True
    from steerl.models import ModelLoadError  # heavy imports: only for the remaining cases
    from steerl.rewards import RewardFailure
    from steerl.stability import StabilityError

    return isinstance(e, (ModelLoadError, RewardFailure, StabilityError))


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the user's mistakes into ``error: ...`` and exit code 2; re-raise anything else."""
    try:
        yield
    except Exception as e:
        if not is_user_error(e):
            raise
        Console(stderr=True).print(
            f"error: {e}", style="red", markup=False, highlight=False, soft_wrap=True
        )
        raise typer.Exit(EXIT_USER_ERROR) from None
