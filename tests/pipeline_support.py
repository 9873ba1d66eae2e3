"""Helpers for the queue-pipeline tests: a real Celery worker subprocess, the API on a free port,
pipeline settings with short timeouts, and image bytes."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from moderation.adapters.redis_jobs import RedisJobStore
from moderation.adapters.redis_workers import RedisWorkerRegistry
from moderation.api.server import serve_in_thread
from moderation.app import create_app
from moderation.compose.api import build_api
from moderation.settings import Settings
from tests.servers import free_port

ROOT = Path(__file__).resolve().parent.parent


def live_workers(store: RedisJobStore) -> list[dict[str, Any]]:
    """The heartbeats of the live workers, from the registry beside ``store``."""
    return RedisWorkerRegistry(store.redis, store.settings).workers()


def pipeline_settings(settings: Settings, redis_url: str, **queue: Any) -> Settings:
    """``settings`` on ``redis_url`` with test-sized queue options (short visibility timeout,
    fast unacked restore, quick retries, small batches)."""
    options: dict[str, Any] = {
        "batch_size": 8,
        "batch_wait_ms": 20,
        "concurrency": 12,
        "visibility_timeout_s": 8,
        "unacked_restore_interval_s": 1.0,
        "unacked_restore_throttle_s": 1.0,
        "max_retries": 2,
        "retry_backoff_s": 0.2,
        "retry_backoff_max_s": 1.0,
        "callback_backoff_s": 0.2,
        "callback_max_attempts": 3,
        "policy_reload_s": 1.0,
        "sweep_interval_s": 1.0,
        "http_timeout_s": 3.0,
        "callback_secret": SecretStr("test-secret"),
        **queue,
    }
    return settings.model_copy(
        update={
            "redis_url": redis_url,
            "queue": settings.queue.model_copy(update=options),
        }
    )


class WorkerProcess:
    """``moderation worker`` in its own process group (so ``kill -9`` is a real crash)."""

    def __init__(
        self,
        settings: Settings,
        log_path: Path,
        *,
        metrics_dir: Path | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.log_path = log_path
        self.metrics_dir = metrics_dir
        self.extra_env = extra_env or {}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        env = self.settings.to_env()
        env["PYTHONPATH"] = str(ROOT)
        env["OMP_NUM_THREADS"] = env.get("OMP_NUM_THREADS", "1")
        if self.metrics_dir is not None:
            env["PROMETHEUS_MULTIPROC_DIR"] = str(self.metrics_dir)
        env.update(self.extra_env)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moderation.cli", "worker", "--loglevel", "INFO"],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def wait_ready(
        self, store: RedisJobStore, timeout: float = 120.0, *, exclude: set[str] | None = None
    ) -> dict[str, Any]:
        """Wait for this worker's heartbeat (model loaded)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for info in live_workers(store):
                if info.get("name", "").endswith(f"-{self.pid}"):
                    return info
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"worker exited ({self.proc.returncode}):\n{self.log()}")
            time.sleep(0.1)
        raise TimeoutError(f"worker not ready after {timeout}s:\n{self.log()}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    def kill9(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        except ProcessLookupError:
            pass


def start_api(settings: Settings, **collaborators: Any) -> tuple[Any, str]:
    """The API (uvicorn, in a thread) on a free port: (server, base URL). ``collaborators``
    replace parts of :func:`moderation.compose.api.build_api` (e.g. ``publisher=``)."""
    port = free_port()
    process = build_api(settings, **collaborators)
    server = serve_in_thread(create_app(process), port)
    server.process = process  # closed by stop_api
    return server, f"http://127.0.0.1:{port}"


def stop_api(server: Any) -> None:
    server.should_exit = True
    process = getattr(server, "process", None)
    if process is not None:
        process.close()


def png_bytes(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes(image: Any, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def raw_exchange(
    base: str, head: str, body_chunks: Any = (), *, timeout: float = 30.0
) -> tuple[int, dict[str, str], bytes, int]:
    """Send a raw HTTP/1.1 request (``head`` without the blank line) and whatever
    ``body_chunks`` yields, stopping when the server answers or closes; returns (status,
    headers, body, bytes of the body sent). For what an HTTP client refuses to send: a
    Content-Length it does not deliver, an endless chunked body."""
    import select
    import socket
    from urllib.parse import urlsplit

    url = urlsplit(base)
    sock = socket.create_connection((url.hostname or "127.0.0.1", url.port or 80), timeout=timeout)
    sent = 0
    received = b""
    try:
        sock.sendall(head.encode() + b"\r\n\r\n")
        for chunk in body_chunks:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break  # the server answered (or closed) before the body was complete
            try:
                sock.sendall(chunk)
            except OSError:
                break
            sent += len(chunk)
        sock.settimeout(timeout)
        while b"\r\n\r\n" not in received or not _complete(received):
            try:
                data = sock.recv(65536)
            except OSError:
                break
            if not data:
                break
            received += data
    finally:
        sock.close()
    head_bytes, _, payload = received.partition(b"\r\n\r\n")
    lines = head_bytes.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1]) if lines and lines[0] else 0
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return status, headers, payload, sent


def _complete(received: bytes) -> bool:
    head, _, payload = received.partition(b"\r\n\r\n")
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            return len(payload) >= int(value.strip())
    return False
