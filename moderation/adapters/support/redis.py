"""Redis connections for the adapters, and the one place Redis errors become
:class:`~moderation.exceptions.QueueUnavailable` (transient)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

import redis

from moderation.exceptions import QueueUnavailable

__all__ = ["connect", "redis_errors", "translated"]

P = ParamSpec("P")
T = TypeVar("T")


def connect(url: str, *, decode: bool = False, socket_timeout: float = 30.0) -> redis.Redis:
    """A Redis client for ``url`` (connects lazily). ``decode``: return str instead of bytes."""
    return redis.Redis.from_url(
        url,
        decode_responses=decode,
        socket_timeout=socket_timeout,
        socket_connect_timeout=5,
        health_check_interval=30,
    )


@contextmanager
def redis_errors(what: str = "redis") -> Iterator[None]:
    """Translate Redis errors raised inside the block into ``QueueUnavailable``."""
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise QueueUnavailable(f"{what} unavailable: {exc}") from exc
    except redis.RedisError as exc:
        raise QueueUnavailable(f"{what} error: {exc}") from exc


def translated(what: str) -> Callable[[Callable[P, T]], Callable[P, T]]:
    """Decorator form of :func:`redis_errors`."""

    def decorate(fn: Callable[P, T]) -> Callable[P, T]:
        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            with redis_errors(what):
                return fn(*args, **kwargs)

        return wrapper

    return decorate
