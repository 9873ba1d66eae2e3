"""The one place psycopg errors become project errors: a server that cannot be reached, is
shutting down or restarting, a statement timeout or an exhausted pool are
:class:`~moderation.exceptions.DatabaseUnavailable` (transient: retry); anything else is a bug
or a schema problem and propagates as it is."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

import psycopg
import psycopg.errors
import psycopg_pool

from moderation.exceptions import DatabaseUnavailable

__all__ = ["TRANSIENT_ERRORS", "database_errors", "translated"]

P = ParamSpec("P")
T = TypeVar("T")

#: Errors after which the same call may succeed later.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    psycopg.OperationalError,  # connection refused/lost, admin shutdown, query canceled...
    psycopg.errors.SerializationFailure,
    psycopg.errors.DeadlockDetected,
    psycopg.errors.LockNotAvailable,
    psycopg.errors.QueryCanceled,  # statement_timeout
    psycopg.errors.CannotConnectNow,  # the server is starting up or in recovery
    psycopg_pool.PoolTimeout,
    psycopg_pool.PoolClosed,
)


@contextmanager
def database_errors(what: str = "database") -> Iterator[None]:
    """Translate transient psycopg/pool errors raised inside the block into
    :class:`~moderation.exceptions.DatabaseUnavailable`."""
    try:
        yield
    except TRANSIENT_ERRORS as exc:
        raise DatabaseUnavailable(f"{what} unavailable: {exc}".strip()) from exc


def translated(what: str) -> Callable[[Callable[P, T]], Callable[P, T]]:
    """Decorator form of :func:`database_errors`."""

    def decorate(fn: Callable[P, T]) -> Callable[P, T]:
        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            with database_errors(what):
                return fn(*args, **kwargs)

        return wrapper

    return decorate
