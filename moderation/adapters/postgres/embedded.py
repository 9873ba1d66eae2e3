"""An embedded PostgreSQL 16 (the ``pgserver`` wheel ships the server binaries) for the
one-command default: without ``MODERATION_DATABASE__URL``, ``moderation demo`` starts one with
its data in ``database.embedded_dir``, as it starts an embedded valkey. Tests start one per
test process in a temporary folder (``tests/servers.py``).

The server listens on a Unix socket in its data folder only (no TCP port: nothing else on the
machine can collide with it or reach it); the URL is ``postgresql://postgres:@/postgres?host=
<socket dir>``. Its data is durable like any PostgreSQL's (write-ahead log, fsync on commit): a
restart of the demo keeps every record. When the process runs as root, pgserver runs the
server as an unprivileged ``pgserver`` user and opens the folders above the data folder for it
to traverse (PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from types import TracebackType
from typing import Any

from moderation.exceptions import DatabaseUnavailable

__all__ = ["EmbeddedPostgres"]

log = logging.getLogger(__name__)


class EmbeddedPostgres:
    """A PostgreSQL server over ``data_dir`` (created on first start), stopped on ``stop()`` or
    at exit. ``delete``: remove the data folder when stopping (temporary servers)."""

    def __init__(self, *, data_dir: Path, delete: bool = False) -> None:
        self.data_dir = data_dir.expanduser().resolve()
        self.delete = delete
        self._server: Any = None
        #: Whether the last start found the data of an earlier run.
        self.had_data = False

    @property
    def url(self) -> str:
        """The server's URL (database ``postgres``).

        Raises:
            DatabaseUnavailable: the server is not running.
        """
        if self._server is None:
            raise DatabaseUnavailable("the embedded PostgreSQL is not running")
        return str(self._server.get_uri())

    @property
    def pid(self) -> int | None:
        """The postmaster's process id (its backends are its children); None: not running."""
        return int(self._server.get_pid()) if self._server is not None else None

    def url_of(self, database: str) -> str:
        """The URL of another database of this server."""
        if self._server is None:
            raise DatabaseUnavailable("the embedded PostgreSQL is not running")
        return str(self._server.get_uri(database))

    def start(self) -> str:
        """Start the server (or join the one already running over ``data_dir``); returns its URL.

        Raises:
            DatabaseUnavailable: the package is missing or the server did not start.
        """
        with warnings.catch_warnings():
            # pgserver keeps its lock under /tmp/runtime-<uid> when XDG_RUNTIME_DIR is unset,
            # and says so on every import
            warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
            try:
                from pgserver import get_server  # type: ignore[attr-defined]
            except ImportError as exc:
                raise DatabaseUnavailable(
                    "the embedded PostgreSQL needs the pgserver package"
                ) from exc
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self.had_data = (self.data_dir / "PG_VERSION").exists()
        try:
            self._server = get_server(
                self.data_dir, cleanup_mode="delete" if self.delete else "stop"
            )
        except Exception as exc:  # pgserver raises CalledProcessError, TimeoutExpired, OSError...
            raise DatabaseUnavailable(
                f"cannot start the embedded PostgreSQL in {self.data_dir}: {exc} "
                f"(its log: {self.data_dir / 'log'})"
            ) from exc
        return self.url

    def stop(self) -> None:
        """Stop the server (when this is the last process using it)."""
        server, self._server = self._server, None
        if server is not None:
            try:
                server.cleanup()
            except Exception as exc:  # stopping is best effort: the server may be gone already
                log.warning("stopping the embedded PostgreSQL in %s: %s", self.data_dir, exc)

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
