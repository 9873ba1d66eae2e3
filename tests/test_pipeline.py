"""The whole pipeline with real components: valkey broker, a `moderation worker` subprocess (Celery,
thread pool, micro-batcher, the test model), the API on uvicorn, moto S3 over HTTP, and a local
HTTP server for http(s) images, redirects, a flaky origin and callback receipts.

One pipeline serves the whole module (starting a worker loads the model: seconds); every test
uses its own job ids.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest
from pydantic import SecretStr
from typer.testing import CliRunner

from moderation import testmodel
from moderation.adapters.redis_deliveries import RedisDeliveryLog
from moderation.adapters.redis_jobs import RedisJobStore
from moderation.cli import app as cli_app
from moderation.client import ModerationClient
from moderation.compose.stores import open_audit, open_queue
from moderation.core.callbacks import verify
from moderation.core.decision import Decision
from moderation.core.jobs import JobResult, JobStatus
from moderation.metrics import render
from moderation.pipeline.outcomes import Outcomes
from moderation.settings import Settings, TenantS3Source, TenantSettings
from moderation.testmodel.samples import bomb_png
from tests.pipeline_support import (
    WorkerProcess,
    jpeg_bytes,
    live_workers,
    pipeline_settings,
    png_bytes,
    start_api,
    stop_api,
)
from tests.servers import MotoServer, free_port, start_valkey

pytestmark = pytest.mark.slow
SECRET = b"test-secret"


@dataclass
class Origin:
    """A local HTTP server: images, a redirect to an internal address, a 503 origin and a
    callback receiver."""

    port: int
    image: bytes
    flaky_hits: int = 0
    callbacks: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str, host: str = "localhost") -> str:
        return f"http://{host}:{self.port}{path}"


def _serve(origin: Origin) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            if self.path == "/img.png":
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(origin.image)))
                self.end_headers()
                self.wfile.write(origin.image)
            elif self.path == "/redirect-internal":
                self.send_response(302)
                self.send_header("Location", origin.url("/img.png", "127.0.0.1"))
                self.end_headers()
            elif self.path == "/flaky":
                with origin.lock:
                    origin.flaky_hits += 1
                self.send_response(503)
                self.send_header("Content-Length", "0")
                self.end_headers()
            else:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with origin.lock:
                origin.callbacks.append((dict(self.headers.items()), body))
            self.send_response(204)
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", origin.port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@dataclass
class Pipeline:
    settings: Settings
    store: RedisJobStore
    client: ModerationClient
    origin: Origin
    s3: Any
    worker: WorkerProcess
    metrics_dir: Path
    policy_file: Path

    def run(self, image: Any, timeout: float = 60, **kw: Any) -> JobResult:
        return self.client.wait(self.client.submit(image, **kw), timeout)


@pytest.fixture(scope="module")
def pipe(
    test_model_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pipeline]:
    tmp = tmp_path_factory.mktemp("pipeline")
    policy_dir = tmp / "policies"
    policy_dir.mkdir()
    policy_file = policy_dir / "testworld.yaml"
    shutil.copy(testmodel.POLICY_PATH, policy_file)
    metrics_dir = tmp / "metrics"
    metrics_dir.mkdir()
    redis = start_valkey()
    moto = MotoServer()
    moto.start()
    origin = Origin(port=free_port(), image=png_bytes(testmodel.sample_images("block", 1, 5)[0][0]))
    http = _serve(origin)
    base = test_model_settings.model_copy(
        update={
            "policy_paths": [policy_dir],
            "cache_dir": tmp / "cache",
            "s3": test_model_settings.s3.model_copy(
                update={
                    "endpoint_url": moto.url,
                    "access_key_id": SecretStr("testing"),
                    "secret_access_key": SecretStr("testing"),
                    "max_attempts": 1,
                }
            ),
            # The tenant of the open API (no keys) may read the test bucket.
            "tenants": {"default": TenantSettings(s3_sources=[TenantS3Source(bucket="uploads")])},
        }
    )
    # This worker prepares images in prepare processes (the other flow tests' workers use their
    # decode threads): every test below also covers that path.
    settings = pipeline_settings(
        base, redis.connection_url, allow_private_hosts=["localhost"], prepare_processes=2
    )
    s3 = boto3.client(
        "s3",
        endpoint_url=moto.url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    s3.create_bucket(Bucket="uploads")
    store = RedisJobStore.from_url(redis.connection_url, settings.queue)
    worker = WorkerProcess(settings, tmp / "worker.log", metrics_dir=metrics_dir).start()
    server = None
    try:
        worker.wait_ready(store)
        server, url = start_api(settings)
        with ModerationClient(url) as client:
            yield Pipeline(settings, store, client, origin, s3, worker, metrics_dir, policy_file)
    finally:
        if server is not None:
            stop_api(server)
        worker.stop()
        http.shutdown()
        moto.stop()
        redis.stop()


def test_verdicts_match_direct_scoring_and_the_policy_bands(pipe: Pipeline, scoring: Any) -> None:
    """Block / review / allow samples, inline and from S3, on real forward passes in the worker:
    each verdict equals scoring the same bytes in-process, and the bands come out as designed."""
    images: list[tuple[str, bytes]] = []
    for band in ("block", "review", "allow"):
        images += [(band, png_bytes(img)) for img, _ in testmodel.sample_images(band, 4, 11)]
    refs: list[str | bytes] = []
    for i, (_, data) in enumerate(images):
        if i % 2:
            pipe.s3.put_object(Bucket="uploads", Key=f"e2e/{i}.png", Body=data)
            refs.append(f"s3://uploads/e2e/{i}.png")
        else:
            refs.append(data)
    ids = pipe.client.submit_many(refs)
    results = pipe.client.wait_many(ids, timeout=120)
    moderator = scoring.moderator
    direct = moderator.moderate([moderator.prepare(data) for _, data in images])
    matches = 0
    for (band, _), result, expected in zip(images, results, direct, strict=True):
        assert result.status is JobStatus.DONE, result.error
        verdict = result.verdict
        assert verdict is not None
        assert verdict.decision is expected.decision
        assert verdict.score == pytest.approx(expected.score, abs=1e-3)
        assert [(p.id, p.version) for p in verdict.policies] == [("testworld", 1)]
        assert result.content_sha256 is not None
        matches += verdict.decision.value == band
    assert matches >= len(images) - 2, f"only {matches}/{len(images)} in their band"
    # They were prepared by the worker's prepare processes (children of its fork server).
    assert pipe.worker.proc is not None
    assert len(_descendants(pipe.worker.proc.pid)) >= 3  # fork server + 2 pool processes


def _descendants(pid: int) -> set[int]:
    parents = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                parents[int(proc.name)] = int(
                    (proc / "stat").read_text().rsplit(")", 1)[1].split()[1]
                )
            except OSError:
                continue
    found = {pid}
    changed = True
    while changed:
        more = {p for p, parent in parents.items() if parent in found} - found
        changed = bool(more)
        found |= more
    return found - {pid}


def test_hostile_inputs_end_as_error_results_and_the_worker_keeps_serving(pipe: Pipeline) -> None:
    from moderation.testmodel import sample_images

    jpeg = jpeg_bytes(sample_images("allow", 1, 2)[0][0])
    pipe.s3.put_object(Bucket="uploads", Key="zero.png", Body=b"")
    cases: dict[str, tuple[str | bytes, set[str]]] = {
        "truncated": (jpeg[: len(jpeg) // 2], {"image_corrupt"}),
        "garbage-jpeg": (jpeg[:20] + b"\x00" * 500, {"image_corrupt"}),
        "non-image": (b"%PDF-1.4 definitely not an image" * 20, {"unsupported_format"}),
        "bomb": (bomb_png(60_000), {"image_too_large"}),
        "huge-side": (bomb_png(25_000), {"image_too_large"}),
        "zero-byte": ("s3://uploads/zero.png", {"image_corrupt"}),
        "s3-missing": ("s3://uploads/nope.png", {"fetch_failed", "not_found"}),
        # Refused by the SSRF guard: the tenant is told no more than "fetch_failed".
        "loopback": (pipe.origin.url("/img.png", "127.0.0.1"), {"fetch_failed"}),
        "metadata": ("http://169.254.169.254/latest/meta-data/", {"fetch_failed"}),
        "private": ("http://10.0.0.1/x.jpg", {"fetch_failed"}),
        "redirect": (pipe.origin.url("/redirect-internal"), {"fetch_failed"}),
    }
    ids = {name: pipe.client.submit(ref) for name, (ref, _) in cases.items()}
    for name, job_id in ids.items():
        result = pipe.client.wait(job_id, 60)
        assert result.status is JobStatus.ERROR, (name, result)
        assert result.error is not None
        assert result.error.code in cases[name][1], (name, result.error)
        assert result.error.message
    good = pipe.run(pipe.origin.url("/img.png"))  # allowlisted host, same worker process
    assert good.status is JobStatus.DONE and good.verdict is not None
    assert pipe.worker.proc is not None and pipe.worker.proc.poll() is None


def test_transient_errors_retry_with_backoff_then_fail_with_the_reason(pipe: Pipeline) -> None:
    result = pipe.run(pipe.origin.url("/flaky"))
    assert result.status is JobStatus.ERROR
    assert result.error is not None
    assert result.error.transient and result.error.code in {"fetch_transient", "http_5xx"}
    assert result.error.attempts == pipe.settings.queue.max_retries + 1
    assert pipe.origin.flaky_hits >= pipe.settings.queue.max_retries + 1
    assert "gave up after 3 attempts" in result.error.message


def _callbacks_for(
    pipe: Pipeline, job_id: str, n: int, timeout: float = 30
) -> list[tuple[dict[str, str], bytes]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with pipe.origin.lock:
            got = [c for c in pipe.origin.callbacks if c[0].get("X-Moderation-Job-Id") == job_id]
        if len(got) >= n:
            return got
        time.sleep(0.1)
    raise AssertionError(f"{n} callback(s) for {job_id} not received")


def test_signed_callback_and_human_decision(pipe: Pipeline, tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from moderation.core.review import HumanDecision, ReviewDecision

    image = png_bytes(testmodel.sample_images("review", 1, 21)[0][0])
    callback = pipe.origin.url("/callback")
    result = pipe.run(image, id="cb-1", callback_url=callback, metadata={"post": 7})
    headers, body = _callbacks_for(pipe, "cb-1", 1)[0]
    assert verify(SECRET, body, headers["X-Moderation-Signature"])
    assert not verify(b"wrong", body, headers["X-Moderation-Signature"])
    payload = json.loads(body)
    assert payload["event"] == "job.finished"
    assert payload["result"]["job_id"] == "cb-1"
    assert payload["result"]["metadata"] == {"post": 7}
    assert payload["result"]["verdict"]["decision"] == result.verdict.decision.value  # type: ignore[union-attr]

    settings = pipe.settings.model_copy(
        update={
            "audit": pipe.settings.audit.model_copy(
                update={"spool_dir": tmp_path / "spool", "local_dir": tmp_path / "audit"}
            )
        }
    )
    audit = open_audit(settings)
    outcomes = Outcomes(
        pipe.store,
        deliveries=RedisDeliveryLog(pipe.store.redis, pipe.store.settings),
        audit=audit,
        callbacks=open_queue(settings),
    )
    decision = HumanDecision(
        job_id="cb-1",
        review_id="r-1",
        decision=ReviewDecision.REMOVE,
        reason_code="TW_X",
        reviewers=["rv_1"],
        category_id="contraband_symbol",
        policy_id="testworld",
        policy_version=1,
        decided_at=datetime.now(UTC),
    )
    updated = outcomes.record_human_decision(decision)
    audit.close()
    assert updated.decision is Decision.BLOCK
    headers, body = _callbacks_for(pipe, "cb-1", 2)[1]
    assert headers["X-Moderation-Event"] == "job.human_decision"
    assert verify(SECRET, body, headers["X-Moderation-Signature"])
    assert json.loads(body)["result"]["human"]["decision"] == "remove"
    assert pipe.client.get("cb-1").human is not None


def test_duplicate_delivery_of_a_finished_job_is_a_no_op(pipe: Pipeline) -> None:
    image = png_bytes(testmodel.sample_images("allow", 1, 31)[0][0])
    first = pipe.run(image, id="dup-1")
    open_queue(pipe.settings).publish(["dup-1"])
    deadline = time.monotonic() + 20
    while pipe.worker.log().count("moderate[dup-1] succeeded in") < 2:
        assert time.monotonic() < deadline, "the second delivery never ran"
        time.sleep(0.1)
    assert "moderate[dup-1] succeeded in" in pipe.worker.log()
    assert "'duplicate'" in pipe.worker.log()
    outcomes = [job for job, _ in pipe.store.outcomes() if job == "dup-1"]
    assert outcomes == ["dup-1"]
    assert pipe.client.get("dup-1").finished_at == first.finished_at


def test_dead_letter_then_requeue_from_the_cli(pipe: Pipeline) -> None:
    """A job whose deliveries keep dying is dead-lettered (error result), listed by `moderation
    dlq list`, and `moderation dlq requeue` runs it again."""
    image = png_bytes(testmodel.sample_images("block", 1, 41)[0][0])
    store = pipe.store
    from moderation.core.image_ref import ImageRef
    from moderation.core.jobs import Job

    job = Job(id="poison-1", image=ImageRef.for_inline("poison-1"))
    store.create(job, image)
    deliveries = RedisDeliveryLog(store.redis, store.settings)
    for _ in range(pipe.settings.queue.max_deliveries):  # as if it crashed the worker 4 times
        deliveries.count_delivery(job.id)
    open_queue(pipe.settings).publish([job.id])
    dead = pipe.client.wait(job.id, 30)
    assert dead.status is JobStatus.ERROR and dead.error is not None
    assert dead.error.code == "poison_message"
    runner = CliRunner()
    env = pipe.settings.to_env(base={})
    listed = runner.invoke(cli_app, ["dlq", "list"], env=env)
    assert listed.exit_code == 0, listed.output
    assert json.loads(listed.output.strip().splitlines()[-1])["job_id"] == "poison-1"
    requeued = runner.invoke(cli_app, ["dlq", "requeue", "poison-1"], env=env)
    assert requeued.exit_code == 0 and "requeued 1" in requeued.output
    result = pipe.client.wait(job.id, 30)
    assert result.status is JobStatus.DONE and result.verdict is not None
    assert deliveries.dead_letters() == []


def test_policy_change_is_picked_up_without_restart(pipe: Pipeline) -> None:
    text = pipe.policy_file.read_text()
    pipe.policy_file.write_text(text.replace("version: 1", "version: 2", 1))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if any(w["policies"].get("testworld") == 2 for w in live_workers(pipe.store)):
            break
        time.sleep(0.2)
    result = pipe.run(png_bytes(testmodel.sample_images("block", 1, 51)[0][0]))
    assert result.verdict is not None
    assert [(p.id, p.version) for p in result.verdict.policies] == [("testworld", 2)]
    assert pipe.worker.proc is not None and pipe.worker.proc.poll() is None


def test_worker_metrics_are_aggregated(pipe: Pipeline) -> None:
    pipe.client.wait_many(
        pipe.client.submit_many(
            [png_bytes(i) for i, _ in testmodel.sample_images("allow", 16, 61)]
        ),
        60,
    )
    body = render(path=str(pipe.metrics_dir))[0].decode()
    lines = dict(
        line.rsplit(" ", 1) for line in body.splitlines() if line and not line.startswith("#")
    )
    batches = float(lines["moderation_batch_size_count"])
    images = float(lines["moderation_batch_size_sum"])
    assert images >= 16 and batches < images  # the encoder ran on batches
    assert float(lines['moderation_jobs_total{outcome="verdict"}']) >= 16
    assert any(
        k.startswith("moderation_decisions_total{category=") and 'policy="testworld"' in k
        for k in lines
    )
    assert 'moderation_stage_seconds_count{stage="decode"}' in lines
