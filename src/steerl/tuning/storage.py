"""Opening an Optuna RDB storage (SQLite file or any SQLAlchemy URL) with heartbeats, and what
the objectives of shared studies (``steerl tune`` trials, shared Pareto sweeps) record in it.

A trial that another worker makes unnecessary is marked ``surplus`` and fails
(:func:`drop_surplus`); a trial whose own run fails records ``error`` before failing
(:func:`recording_error`), which tells it from a dead worker's trial.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn


class StorageError(ValueError):
    """The storage URL cannot be opened (bad URL, server down, missing driver)."""


def rdb_storage(url: str, heartbeat_s: int, max_retry: int) -> Any:
    """An RDB storage whose running trials beat every ``heartbeat_s`` seconds; a trial silent
    for twice that is failed by the next worker and re-queued up to ``max_retry`` times.

    Workers that start together race to create the tables; creation is retried."""
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 120}}
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
    last: Exception | None = None
    for attempt in range(6):
        try:
            return optuna.storages.RDBStorage(
                url,
                heartbeat_interval=heartbeat_s,
                grace_period=2 * heartbeat_s,
                heartbeat_stale_trial_callback=retry,
                **kwargs,
            )
        except SQLAlchemyError as e:
            last = e
            time.sleep(0.5 * (attempt + 1))
        except ImportError as e:  # a driver such as psycopg2 is missing
            raise StorageError(
                f"cannot open {url!r}: {e} (for PostgreSQL: pip install 'steerl[postgres]')"
            ) from None
    raise StorageError(f"cannot open the study storage {url!r}: {last}")


class Surplus(Exception):
    """This trial is not needed (another worker already covers its work): it is dropped."""


def drop_surplus(trial: Any) -> NoReturn:
    """Mark ``trial`` as surplus (user attribute ``surplus``) and end it with :class:`Surplus`."""
    trial.set_user_attr("surplus", True)
    raise Surplus()


@contextmanager
def recording_error(
    trial: Any, passthrough: tuple[type[BaseException], ...] = ()
) -> Iterator[None]:
    """An exception raised in the block (other than ``passthrough``) is recorded in the trial's
    ``error`` user attribute, then raised again."""
    try:
        yield
    except passthrough:
        raise
    except Exception as e:
        trial.set_user_attr("error", f"{type(e).__name__}: {e}"[:2000])
        raise
