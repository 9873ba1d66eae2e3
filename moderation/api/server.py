"""Serving the API: from bound sockets, with its operations port beside it (``moderation api``),
or from a thread of the current process (the demo, tests and benchmarks).

Neither server reads ``X-Forwarded-*`` headers (``proxy_headers=False``): only
``api_trusted_proxies`` may name the client (:mod:`moderation.api.authn`), never uvicorn's default
of trusting 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import threading
import time
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI

from moderation.exceptions import ModerationError

__all__ = ["serve_in_thread", "serve_sockets"]


class _Follower(uvicorn.Server):
    """A server that leaves the signals to the one beside it and stops with it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class _Stoppable(uvicorn.Server):
    """A server that returns after a SIGINT / SIGTERM instead of re-raising it.

    uvicorn re-raises the signal it caught once it has shut down, which ends the process before
    the caller's ``finally`` runs (the audit spool would stay unflushed). This one keeps the
    signals it caught in :attr:`stopped_by` for the caller to act on after its own cleanup.
    """

    stopped_by: list[int]

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        self.stopped_by = []
        with super().capture_signals():
            yield
            # uvicorn (>= 0.29) keeps the caught signals here and re-raises them after the block.
            caught: list[int] = getattr(self, "_captured_signals", [])
            self.stopped_by = [int(s) for s in caught]
            caught.clear()


def serve_sockets(
    app: FastAPI,
    sock: socket.socket,
    *,
    ops_app: FastAPI | None = None,
    ops_sock: socket.socket | None = None,
    log_level: str = "info",
    limit_concurrency: int | None = None,
) -> list[signal.Signals]:
    """Serve ``app`` on ``sock`` (and ``ops_app`` on ``ops_sock``) until SIGINT / SIGTERM.

    Returns the signals that stopped the servers (empty when they stopped otherwise): unlike
    plain uvicorn, this returns after a signal, so the caller's cleanup (closing the audit log,
    which flushes its spool) runs before the process exits. ``limit_concurrency``: more
    connections and requests than this at once are answered 503 (``app`` only).
    """
    server = _Stoppable(
        uvicorn.Config(
            app, log_level=log_level, proxy_headers=False, limit_concurrency=limit_concurrency
        )
    )

    async def serve() -> None:
        ops_task = None
        if ops_app is not None and ops_sock is not None:
            ops = _Follower(
                uvicorn.Config(
                    ops_app,
                    log_level=log_level,
                    proxy_headers=False,
                    lifespan="off",
                    access_log=False,
                )
            )
            ops_task = asyncio.create_task(ops.serve(sockets=[ops_sock]))
        try:
            await server.serve(sockets=[sock])
        finally:
            if ops_task is not None:
                ops.should_exit = True
                await ops_task

    asyncio.run(serve())
    return [signal.Signals(s) for s in server.stopped_by]


def serve_in_thread(app: FastAPI, port: int, *, host: str = "127.0.0.1") -> uvicorn.Server:
    """Start ``app`` on ``host:port`` in a daemon thread; returns the uvicorn Server
    (``should_exit = True`` stops it).

    Raises:
        ModerationError: the server did not start within 30 s (the port is taken).
    """
    server = uvicorn.Server(
        uvicorn.Config(app, host=host, port=port, log_level="warning", proxy_headers=False)
    )
    thread = threading.Thread(target=server.run, name="api", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise ModerationError(f"the API could not start on {host}:{port}")
        time.sleep(0.05)
    return server
