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

from moderation.adapters.redis_jobs import RedisJobStore
from moderation.api import create_app
from moderation.api.server import serve_in_thread
from moderation.compose import build_api
from moderation.settings import Settings
from tests.servers import free_port

ROOT = Path(__file__).resolve().parent.parent


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
        "callback_secret": "test-secret",
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
            for info in store.workers():
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
    replace parts of :func:`moderation.compose.build_api` (e.g. ``publisher=``)."""
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
