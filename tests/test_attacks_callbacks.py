"""Issue 17, attack 4: one tenant's callback receivers must not stall anyone else.

Against a production-like start (``moderation api`` and ``moderation worker`` as their own
processes in production mode, a real valkey server) with hostile receivers served in-process on
free ports:

- a *tarpit* that reads the callback and then answers one byte every second, for as long as the
  connection stays open: tenant acme's callbacks go there. Before, callbacks ran on the worker's
  moderation threads with only a per-read timeout, so acme's tarpits held every thread and
  globex's job did not end; now globex's job ends (and its own callback arrives) while acme's
  deliveries are still hanging, and acme holds no more deliverers than its per-tenant cap;
- a *flood* that answers a 400 MiB body: before, the whole body was read (the worker grew by
  hundreds of MiB); now at most a few KiB are read and the worker's peak memory stays put.

Each attempt's total deadline is checked against the tarpit directly (the adapter cuts it off
and asks for a retry however slowly the bytes come).
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from moderation.adapters.http_callbacks import CallbackDelivery
from moderation.core.callbacks import Delivered, verify
from moderation.settings import Settings
from tests.attack_support import KEY_A, KEY_B, Site, image_b64, started_site
from tests.pipeline_support import WorkerProcess
from tests.servers import valkey_url

pytestmark = pytest.mark.xdist_group("attacks_callbacks")

FLOOD_BYTES = 400 * 1024 * 1024


@dataclass
class Receiver:
    """A raw HTTP server on a free port whose answer is chosen by the request path:
    ``/tarpit`` dribbles a status line one byte a second until released or closed, ``/flood``
    answers a 400 MiB body as fast as the client reads it, anything else answers 204."""

    sock: socket.socket = field(default_factory=socket.socket)
    hanging: int = 0
    tarpit_seen: int = 0
    tarpit_closed_by_client: int = 0
    flood_sent: int = 0
    flood_done: int = 0
    bodies: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Receiver:
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        self.release.set()
        self.sock.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                path, headers, body = _read_request(conn)
            except (OSError, ValueError):
                return
            if path == "/tarpit":
                self._tarpit(conn)
            elif path == "/flood":
                self._flood(conn)
            else:
                with self.lock:
                    self.bodies.append((headers, body))
                conn.sendall(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")

    def _tarpit(self, conn: socket.socket) -> None:
        with self.lock:
            self.hanging += 1
            self.tarpit_seen += 1
        conn.settimeout(1.0)
        try:
            for byte in b"HTTP/1.1 200 OK\r\n" * 1000:
                if self.release.is_set():
                    return
                conn.sendall(bytes([byte]))
                try:
                    if conn.recv(1) == b"":  # the client closed the connection
                        with self.lock:
                            self.tarpit_closed_by_client += 1
                        return
                except TimeoutError:
                    pass  # nothing from the client: a second went by
        except OSError:
            with self.lock:
                self.tarpit_closed_by_client += 1
        finally:
            with self.lock:
                self.hanging -= 1

    def _flood(self, conn: socket.socket) -> None:
        conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {FLOOD_BYTES}\r\n\r\n".encode())
        chunk = b"\0" * (1024 * 1024)
        try:
            for _ in range(FLOOD_BYTES // len(chunk)):
                conn.sendall(chunk)
                with self.lock:
                    self.flood_sent += len(chunk)
        except OSError:
            pass
        finally:
            with self.lock:
                self.flood_done += 1


def _read_request(conn: socket.socket) -> tuple[str, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        more = conn.recv(65536)
        if not more:
            raise ValueError("closed")
        data += more
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    path = lines[0].split(" ")[1]
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip()] = value.strip()
    length = int(headers.get("Content-Length", "0"))
    while len(body) < length:
        more = conn.recv(65536)
        if not more:
            break
        body += more
    return path, headers, body


@dataclass
class Running:
    site: Site
    worker: WorkerProcess
    receiver: Receiver


@pytest.fixture(scope="module")
def running(
    test_model_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Running]:
    root = tmp_path_factory.mktemp("attacks_callbacks")
    receiver = Receiver().start()
    settings = test_model_settings.model_copy(
        update={
            "queue": test_model_settings.queue.model_copy(
                update={
                    "allow_private_hosts": ["127.0.0.1/32"],
                    "callback_slots": 4,
                    "callback_tenant_slots": 2,
                    "callback_deadline_s": 120.0,
                    "callback_backoff_s": 0.2,
                }
            )
        }
    )
    with valkey_url() as url, started_site(settings, url, root) as site:
        worker = WorkerProcess(site.settings, root / "worker.log").start()
        try:
            worker.wait_ready(site.store)
            yield Running(site, worker, receiver)
        finally:
            receiver.stop()
            worker.stop()


def _wait(what: str, done: object, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _vm(pid: int, field_name: str) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(rf"{field_name}:\s+(\d+) kB", status)
    assert match is not None
    return int(match.group(1)) * 1024


def test_a_tenants_tarpits_do_not_stall_another_tenants_jobs(running: Running) -> None:
    receiver = running.receiver
    receiver.release.clear()
    with running.site.client(KEY_A) as acme, running.site.client(KEY_B) as globex:
        for i in range(6):  # more than the worker's moderation threads and callback slots
            answer = acme.post(
                "/v1/jobs",
                json={
                    "image_base64": image_b64(i + 1),
                    "id": f"tarpit-{i}",
                    "callback_url": receiver.url("/tarpit"),
                },
            )
            assert answer.status_code == 202, answer.text
        _wait("acme's deliveries to hang", lambda: receiver.hanging >= 2)
        answer = globex.post(
            "/v1/jobs",
            json={"image_base64": image_b64(9), "id": "b-1", "callback_url": receiver.url("/b")},
        )
        assert answer.status_code == 202, answer.text
        _wait(
            "globex's job to end",
            lambda: (
                globex.get("/v1/jobs/b-1").json()["status"] != "queued"
                and globex.get("/v1/jobs/b-1").json()["status"] != "processing"
            ),
        )
        assert globex.get("/v1/jobs/b-1").json()["status"] == "done"
        _wait(
            "globex's callback",
            lambda: any(h.get("X-Moderation-Job-Id") == "b-1" for h, _ in receiver.bodies),
        )
        # ... while acme's tarpits still hold their deliveries, no more of them than acme's cap.
        assert receiver.hanging == 2
        assert receiver.tarpit_seen == 2
        assert receiver.tarpit_closed_by_client == 0
        headers, body = next(c for c in receiver.bodies if c[0].get("X-Moderation-Job-Id") == "b-1")
        secret = running.site.settings.queue.callback_secret.get_secret_value().encode()
        assert verify(secret, body, headers["X-Moderation-Signature"])
        # Every acme job ended too: their callbacks wait in the outbox, not on the job threads.
        for i in range(6):
            assert acme.get(f"/v1/jobs/tarpit-{i}").json()["status"] == "done"
    receiver.release.set()
    _wait("the tarpits to let go", lambda: receiver.hanging == 0)


def test_a_400_mib_reply_is_not_read(running: Running) -> None:
    receiver = running.receiver
    pid = running.worker.pid
    before = _vm(pid, "VmHWM")
    with running.site.client(KEY_A) as acme:
        answer = acme.post(
            "/v1/jobs",
            json={
                "image_base64": image_b64(3),
                "id": "flood-1",
                "callback_url": receiver.url("/flood"),
            },
        )
        assert answer.status_code == 202, answer.text
        _wait("the flood delivery to be cut off", lambda: receiver.flood_done >= 1)
        assert acme.get("/v1/jobs/flood-1").json()["status"] == "done"
    # The worker closed the connection after a few KiB: what was sent is what the socket
    # buffers took, far from 400 MiB, and the worker's peak memory did not move by it.
    assert receiver.flood_sent < 64 * 1024 * 1024, receiver.flood_sent
    assert _vm(pid, "VmHWM") - before < 64 * 1024 * 1024


def test_each_attempt_has_a_total_deadline(test_model_settings: Settings) -> None:
    receiver = Receiver().start()
    settings = test_model_settings.model_copy(
        update={
            "queue": test_model_settings.queue.model_copy(
                update={"allow_private_hosts": ["127.0.0.1/32"], "callback_deadline_s": 2.5}
            )
        }
    )
    delivery = CallbackDelivery(settings)
    try:
        # The tarpit never stops sending (a byte a second, each read succeeds), yet the attempt
        # ends: with a retry and the deadline as the reason, the connection closed by us.
        # (Before, it went on for as long as the tarpit did: the join below is only there so
        # that such a hang fails instead of blocking the suite.)
        outcomes: list[Delivered] = []
        attempt = threading.Thread(
            target=lambda: outcomes.append(
                delivery.deliver("j", receiver.url("/tarpit"), b'{"event":"x"}', attempt=1)
            ),
            daemon=True,
        )
        attempt.start()
        attempt.join(120)
        assert outcomes, "the attempt did not end"
        (outcome,) = outcomes
        assert outcome.status == "retry"
        assert outcome.problem is not None and "deadline" in outcome.problem
        _wait("the tarpit to see the close", lambda: receiver.tarpit_closed_by_client == 1, 10)
        last = delivery.deliver(
            "j", receiver.url("/tarpit"), b"{}", attempt=settings.queue.callback_max_attempts
        )
        assert last.status == "failed"
    finally:
        delivery.close()
        receiver.stop()
