"""The policy-quality tools against real components: a shadow version on a real worker process
and real Redis (never acted on, measured, audited; then backtested and promoted), and review
decisions exported from the real review queue feeding ``eval`` and ``calibrate`` unchanged."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from typer.testing import CliRunner

from moderation import testmodel
from moderation.adapters.memory import (
    MemoryAuditSink,
    MemoryCallbacks,
    MemoryPublisher,
    MemoryRateLimiter,
)
from moderation.adapters.policy_files import edit_policy_text, load_policy_file
from moderation.adapters.redis_deliveries import RedisDeliveryLog
from moderation.adapters.redis_jobs import RedisJobStore
from moderation.adapters.redis_review import RedisReviewQueue
from moderation.adapters.redis_workers import RedisWorkerRegistry
from moderation.cli import app
from moderation.client import ModerationClient
from moderation.compose.scoring import Scoring
from moderation.compose.stores import open_blob_store, open_history, open_segment_store
from moderation.core.admission import Tenant
from moderation.core.policy import PolicyMode
from moderation.core.review import ReviewDecision
from moderation.metrics import render
from moderation.pipeline.audit import iter_records
from moderation.pipeline.batching import MicroBatcher
from moderation.pipeline.outcomes import Outcomes
from moderation.pipeline.process import Processor
from moderation.pipeline.review_evidence import ReviewEvidence
from moderation.pipeline.score import score_local
from moderation.pipeline.sources import ImageSources, InlineSource
from moderation.pipeline.submit import PolicyCatalog, SubmitRequest, Submitter
from moderation.settings import Settings
from moderation.testmodel import world
from moderation.testmodel.samples import encoded
from tests.pipeline_support import (
    WorkerProcess,
    live_workers,
    pipeline_settings,
    start_api,
    stop_api,
)

pytestmark = pytest.mark.slow
TESTWORLD = testmodel.POLICY_PATH.read_text()
SHADOW_THRESHOLDS = {"contraband_symbol": (0.05, 0.1), "restricted_logo": (0.9, 0.99)}


def _wait(condition: Any, timeout: float = 60.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError(f"timed out waiting for {what}")


@pytest.fixture
def shadow_pipeline(settings: Settings, redis_url: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "testworld.yaml").write_text(TESTWORLD)
    (folder / "testworld.v2.yaml").write_text(
        edit_policy_text(TESTWORLD, version=2, mode=PolicyMode.SHADOW, thresholds=SHADOW_THRESHOLDS)
    )
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    base = settings.model_copy(
        update={
            "policy_paths": [folder],
            "audit": settings.audit.model_copy(update={"segment_max_age_s": 0.3}),
            "embeddings": settings.embeddings.model_copy(
                update={"store": True, "flush_interval_s": 0.5}
            ),
        }
    )
    cfg = pipeline_settings(base, redis_url)
    store = RedisJobStore.from_url(redis_url, cfg.queue)
    worker = WorkerProcess(cfg, tmp_path / "worker.log", metrics_dir=metrics_dir).start()
    server = None
    try:
        info = worker.wait_ready(store)
        assert info["policies"] == {"testworld": 1} and info["shadow_policies"] == {"testworld": 2}
        server, url = start_api(cfg)
        yield {
            "settings": cfg,
            "url": url,
            "store": store,
            "folder": folder,
            "metrics": metrics_dir,
            "worker": worker,
        }
    finally:
        if server is not None:
            stop_api(server)
        worker.stop()


def test_a_shadow_version_on_a_real_worker_is_measured_audited_backtested_and_promoted(
    shadow_pipeline: dict[str, Any], scoring: Scoring
) -> None:
    cfg: Settings = shadow_pipeline["settings"]
    images = [
        encoded(im)
        for band in ("block", "review", "allow")
        for im, _ in world.sample_images(band, 5, 91)
    ]
    live_only = [
        r.verdict
        for r in score_local(
            [(str(i), lambda d=d: d) for i, d in enumerate(images)], scoring.moderator
        )
    ]
    with ModerationClient(shadow_pipeline["url"]) as client:
        ids = client.submit_many(images)
        results = client.wait_many(ids, 120)
    for result, expected in zip(results, live_only, strict=True):
        assert result.verdict is not None and expected is not None
        assert result.verdict.decision is expected.decision  # never acted on
        assert [(p.id, p.version) for p in result.verdict.policies] == [("testworld", 1)]

    # measured: the shadow's verdicts per live/shadow decision, from the worker's metrics
    body = render(path=str(shadow_pipeline["metrics"]))[0].decode()
    shadow_lines = [
        line for line in body.splitlines() if line.startswith("moderation_shadow_decisions_total{")
    ]
    counted = sum(float(line.rsplit(" ", 1)[1]) for line in shadow_lines)
    assert counted == len(images) and all('version="2"' in line for line in shadow_lines)
    assert any('live="review"' in line and 'shadow="block"' in line for line in shadow_lines)

    # recorded: each job's automated audit record carries the shadow verdict
    segments = open_segment_store(cfg)

    def audited() -> dict[str, Any]:
        found = {r.job_id: r for _, r in iter_records(segments) if r.kind == "automated"}
        return found if set(ids) <= set(found) else {}

    records = _wait(audited, what="audit records")
    shadow_of: dict[str, tuple[str, str]] = {}
    for job_id, result in zip(ids, results, strict=True):
        (shadow,) = records[job_id].details["shadow"]
        assert shadow["version"] == 2 and shadow["live_decision"] == result.verdict.decision.value  # type: ignore[union-attr]
        shadow_of[job_id] = (shadow["live_decision"], shadow["decision"])
    changed = {j for j, (live, shadow) in shadow_of.items() if live != shadow}
    assert changed

    # the stored embeddings (shards in the object store, written within the flush interval)
    # backtest to the same changes the shadow saw live
    history = open_history(cfg)

    def stored() -> int:
        return sum(len(b) for _, b in history.read_many([k.key for k in history.keys(0)]))

    _wait(lambda: stored() == len(images), what="the history shards")
    env = {**cfg.to_env({}), "COLUMNS": "200", "MODERATION_LOG_LEVEL": "WARNING"}
    runner = CliRunner()
    candidate = shadow_pipeline["folder"] / "testworld.v2.yaml"
    done = runner.invoke(
        app,
        ["policy", "backtest", str(candidate), "--since", "1h", "--json", "--examples", "100"],
        env=env,
        catch_exceptions=False,
    )
    assert done.exit_code == 0, done.output
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["scored"] == len(images) and report["drift"] == 0
    assert {c["job_id"] for c in report["examples"]} == changed
    assert {c["job_id"]: c["after"]["decision"] for c in report["examples"]} == {
        j: shadow_of[j][1] for j in changed
    }

    # promoted: audited, then the worker serves v2 and acts on it
    done = runner.invoke(
        app,
        ["policy", "promote", "testworld", "--by", "alice", "--note", "measured"],
        env=env,
        catch_exceptions=False,
    )
    assert done.exit_code == 0, done.output
    live_file = shadow_pipeline["folder"] / "testworld.yaml"
    assert load_policy_file(live_file).version == 2 and not candidate.exists()
    policy_records = [r for _, r in iter_records(segments) if r.kind == "policy"]
    assert [(r.decision, r.actor, r.policy_version, r.job_id) for r in policy_records] == [
        ("promote", "alice", 2, "policy/testworld")
    ]
    _wait(
        lambda: any(
            w["policies"] == {"testworld": 2} and w["shadow_policies"] == {}
            for w in live_workers(shadow_pipeline["store"])
        ),
        what="the worker to reload",
    )
    job = next(iter(changed))
    index = ids.index(job)
    with ModerationClient(shadow_pipeline["url"]) as client:
        again = client.wait(client.submit(images[index]), 60)
    assert again.verdict is not None
    assert [(p.id, p.version) for p in again.verdict.policies] == [("testworld", 2)]
    assert again.verdict.decision.value == shadow_of[job][1]  # now acted on


# --- review decisions feed eval and calibrate ---------------------------------------------------


def _borderline(n: int, seed: int) -> list[tuple[bytes, bool]]:
    """Red stars blended part-way toward a neighbour, labelled by the nearer colour."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        mix = float(rng.uniform(0.25, 0.47) if i % 2 else rng.uniform(0.53, 0.75))
        neighbour = ("orange", "purple")[i % 4 // 2]
        image = world.render(
            "red", "star", seed=seed * 1000 + i, mix_with=neighbour, mix=mix, clear=True
        )
        out.append((encoded(image), mix < 0.5))
    return out


def test_review_decisions_exported_from_the_queue_feed_eval_and_calibrate(
    settings: Settings, redis_url: str, tmp_path: Path, scoring: Scoring
) -> None:
    cfg = pipeline_settings(settings, redis_url)
    store = RedisJobStore.from_url(redis_url, cfg.queue)
    deliveries = RedisDeliveryLog.from_url(redis_url, cfg.queue)
    queue = RedisReviewQueue.from_url(redis_url, cfg.review)
    sources = ImageSources([InlineSource(store)])
    submitter = Submitter(
        store=store,
        publisher=MemoryPublisher(),
        sources=sources,
        catalog=PolicyCatalog(
            RedisWorkerRegistry.from_url(redis_url, cfg.queue), lambda: {"testworld"}
        ),
        settings=cfg.queue,
        check_callback_url=lambda url: None,
        limiter=MemoryRateLimiter(),
    )
    outcomes = Outcomes(
        store,
        deliveries=deliveries,
        audit=MemoryAuditSink(),
        callbacks=MemoryCallbacks(),
        review=queue,
        policies=lambda: scoring.policies.current.policies,
        # As in the workers: the scored bytes are kept in the object store for the reviewer
        # (the inline bytes go when the job ends), and the export names that copy.
        evidence=ReviewEvidence(open_blob_store(cfg), retention_s=cfg.review.evidence_retention_s),
    )
    encoder = scoring.model.encoder
    batcher: MicroBatcher[Any, NDArray[np.float32]] = MicroBatcher(
        lambda xs: list(encoder.encode_prepared(xs)), max_batch=16, max_wait_s=0.0
    )
    processor = Processor(
        store=store,
        deliveries=deliveries,
        sources=sources,
        moderator=scoring.moderator,
        batcher=batcher,
        outcomes=outcomes,
        settings=cfg.queue,
    )
    truth: dict[str, bool] = {}
    try:
        for data, violates in _borderline(80, 5):
            job = submitter.submit([SubmitRequest(image_bytes=data)], tenant=Tenant("default"))[0]
            assert processor.process(job.id).outcome == "verdict"
            truth[job.id] = violates
    finally:
        batcher.close()
    reviewed = 0
    for _ in range(400):  # two reviewers: a critical removal needs a second one
        claim = queue.claim("rv_alice") or queue.claim("rv_bob")
        if claim is None:
            break
        reviewer = claim.lease.reviewer
        remove = truth[claim.item.job_id]
        result = queue.decide(
            claim.item.review_id,
            reviewer=reviewer,
            token=claim.lease.token,
            decision=ReviewDecision.REMOVE if remove else ReviewDecision.ALLOW,
            reason_code=claim.item.reason_codes[0] if remove else None,
        )
        if result.outcome.final is not None:
            outcomes.record_human_decision(result.outcome.final)
            queue.delivered(claim.item.review_id)
            reviewed += 1
    assert reviewed >= 40
    env = {**cfg.to_env({}), "COLUMNS": "200", "MODERATION_LOG_LEVEL": "WARNING"}
    runner = CliRunner()
    for name in ("export.jsonl", "export.csv"):
        folder = tmp_path / name.replace(".", "-")
        folder.mkdir()
        policy = folder / "testworld.yaml"
        policy.write_text(TESTWORLD)
        export = tmp_path / name
        done = runner.invoke(app, ["review", "export", "--out", str(export)], env=env)
        assert done.exit_code == 0, done.output
        if name.endswith(".jsonl"):  # the jobs' inline bytes are gone: rows name the evidence
            rows = [json.loads(line) for line in export.read_text().splitlines()]
            assert rows and all(r["image"].startswith("evidence:review-evidence/") for r in rows)
        evaluated = runner.invoke(
            app,
            [
                "eval",
                str(export),
                "--policy",
                str(policy),
                "--json",
                "--out",
                str(tmp_path / f"report-{name}"),
            ],
            env=env,
            catch_exceptions=False,
        )
        assert evaluated.exit_code == 0, evaluated.output
        report = json.loads(evaluated.stdout.splitlines()[-1])
        assert report["kind"] == "review_export" and report["n_scored"] == reviewed
        (category,) = report["categories"]
        assert category["key"] == "testworld/contraband_symbol"
        assert category["n"] == reviewed
        assert category["positives"] == sum(
            truth[j]
            for j in truth
            if j
            in {
                json.loads(x)["job_id"]
                for x in (tmp_path / "export.jsonl").read_text().splitlines()
            }
        )
        assert "labels come from human review" in report["notes"][0]
        calibrated = runner.invoke(
            app,
            [
                "calibrate",
                str(export),
                "--policy",
                str(policy),
                "--target-precision",
                "0.8",
                "--target-recall",
                "0.8",
                "--confidence",
                "0",
            ],
            env=env,
            catch_exceptions=False,
        )
        assert calibrated.exit_code == 0, calibrated.output
        assert "labels come from human review" in calibrated.output
        new = load_policy_file(folder / "testworld.v2.yaml")
        assert new.version == 2 and new.mode is PolicyMode.SHADOW
        thresholds = new.category("contraband_symbol").thresholds
        assert thresholds != load_policy_file(policy).category("contraband_symbol").thresholds
        assert new.category("restricted_logo") == load_policy_file(policy).category(
            "restricted_logo"
        )
