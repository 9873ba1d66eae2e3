"""Serving the API from a thread of the current process (the demo, tests and benchmarks)."""

from __future__ import annotations

import threading
import time

import uvicorn
from fastapi import FastAPI

from moderation.exceptions import ModerationError

__all__ = ["serve_in_thread"]


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
