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
            storage = optuna.storages.RDBStorage(
                url,
                heartbeat_interval=heartbeat_s,
                grace_period=2 * heartbeat_s,
                heartbeat_stale_trial_callback=retry,
                **kwargs,
            )
            if url.startswith("sqlite"):
                serialize_sqlite(storage.engine)
            return storage
        except SQLAlchemyError as e:
            last = e
            time.sleep(0.5 * (attempt + 1))
        except ImportError as e:  # a driver such as psycopg2 is missing
            raise StorageError(
                f"cannot open {url!r}: {e} (for PostgreSQL: pip install 'steerl[postgres]')"
            ) from None
    raise StorageError(f"cannot open the study storage {url!r}: {last}")


def serialize_sqlite(engine: Any) -> None:
    """Make every transaction on this SQLite engine take the write lock when it begins.

    Optuna hands a queued (WAITING) trial to a worker by reading its state and setting it
    RUNNING in one session, with ``SELECT ... FOR UPDATE``, which SQLite ignores; and Python's
    sqlite3 starts no transaction before that read. Two workers could both read WAITING and
    both run the same trial (seen in CI: two processes training into one trial directory).
    ``BEGIN IMMEDIATE`` (SQLAlchemy's recipe for pysqlite) makes such read-then-write sessions
    one at a time; the sessions are short, and the 120 s busy timeout covers the waits.
    """
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _no_implicit_transactions(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy's "begin" below starts them

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # pooled connections opened before the listeners are dropped


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
