"""``queue.callback_senders``: the API pods deliver callbacks from the outbox (so the GPU
workers, scaled on jobs only, are never needed for a callback), against a real Redis and a real
HTTP receiver."""

from __future__ import annotations

import http.server
import queue
import threading
from collections.abc import Iterator

import pytest

from moderation.compose.api import build_api
from moderation.compose.callbacks import sends_callbacks
from moderation.compose.stores import open_callbacks
from moderation.settings import Settings
from tests.pipeline_support import pipeline_settings


@pytest.fixture
def receiver() -> Iterator[tuple[str, queue.Queue[bytes]]]:
    got: queue.Queue[bytes] = queue.Queue()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            got.put(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://localhost:{server.server_address[1]}/hook", got
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("senders", "api", "workers"),
    [("workers", False, True), ("api", True, False), ("both", True, True)],
)
def test_which_processes_send(senders: str, api: bool, workers: bool, settings: Settings) -> None:
    cfg = settings.model_copy(
        update={"queue": settings.queue.model_copy(update={"callback_senders": senders})}
    )
    assert sends_callbacks(cfg, "api") is api
    assert sends_callbacks(cfg, "workers") is workers


def test_the_api_delivers_callbacks_from_the_outbox(
    settings: Settings, redis_url: str, receiver: tuple[str, queue.Queue[bytes]]
) -> None:
    url, got = receiver
    cfg = pipeline_settings(settings, redis_url, allow_private_hosts=["localhost"])
    cfg = cfg.model_copy(update={"queue": cfg.queue.model_copy(update={"callback_senders": "api"})})
    process = build_api(cfg)
    try:
        assert process.callbacks is not None
        # what a worker does when a job ends: the callback goes to the outbox
        open_callbacks(cfg).send("job-1", url, b'{"job": "job-1"}', tenant="default")
        assert got.get(timeout=60) == b'{"job": "job-1"}'
    finally:
        process.close()


def test_by_default_the_api_sends_nothing(settings: Settings, redis_url: str) -> None:
    process = build_api(pipeline_settings(settings, redis_url))
    try:
        assert process.callbacks is None
    finally:
        process.close()
