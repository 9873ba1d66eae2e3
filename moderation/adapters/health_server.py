"""The worker's probe endpoint: ``GET /livez`` and ``GET /readyz`` answer JSON, 200 or 503.

A small standard-library HTTP server on a daemon thread (a worker has no web framework): the
Kubernetes probes of the worker pod call it (``queue.worker_health_port``).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from moderation.pipeline.health import HealthReport

__all__ = ["HealthServer"]

log = logging.getLogger(__name__)


class HealthServer:
    """Serves ``/livez`` and ``/readyz`` from two report functions until :meth:`close`."""

    def __init__(
        self,
        *,
        liveness: Callable[[], HealthReport],
        readiness: Callable[[], HealthReport],
        port: int,
        host: str = "0.0.0.0",  # noqa: S104 - the kubelet probes the pod's address
    ) -> None:
        routes = {"/livez": liveness, "/readyz": readiness}

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass  # probes every few seconds: not worth a log line each

            def do_GET(self) -> None:
                report = routes.get(self.path.split("?", 1)[0])
                if report is None:
                    self._send(404, {"detail": "not found: use /livez or /readyz"})
                    return
                got = report()
                self._send(200 if got.ok else 503, got.as_dict())

            def _send(self, status: int, body: dict[str, object]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="health-server", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> HealthServer:
        self._thread.start()
        log.info("worker health endpoint on port %d (/livez, /readyz)", self.port)
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
