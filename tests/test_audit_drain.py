"""Draining an orphaned audit spool (docs/runbook.md, "Orphaned audit spools"): a worker removed
while S3 was down leaves records on its volume; the drain Job (deploy/k8s/base/audit-drain.yaml)
mounts that volume and runs ``moderation audit flush``, which adopts the dead writer's chain and
uploads every record. Against a real S3 server (moto, Object Lock enforced)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from moderation.compose.stores import open_audit as open_audit_sink
from moderation.compose.stores import open_segment_store
from moderation.core.audit import dedupe
from moderation.pipeline.audit import iter_records, verify_store
from moderation.settings import Settings
from tests.servers import MotoServer
from tests.test_audit_s3 import client, rec, s3_settings

REPO = Path(__file__).resolve().parent.parent


def test_the_drain_command_uploads_an_orphaned_spool_to_s3(
    settings: Settings, s3_server: MotoServer, tmp_path: Path
) -> None:
    client(s3_server).create_bucket(Bucket="audit-drain", ObjectLockEnabledForBucket=True)
    volume = tmp_path / "state-moderation-worker-3"  # the claim the removed worker left
    cfg = s3_settings(settings, s3_server, "audit-drain", spool_dir=volume / "audit-spool")

    sink = open_audit_sink(cfg)
    chain = sink.chain_id
    s3_server.pause()  # S3 unreachable: records only reach the spool
    try:
        jobs = [f"job-{i:03d}" for i in range(120)]
        for job in jobs:
            sink.write(rec(job))
        assert not sink.close(0.5)  # the pod is gone with its records still spooled
    finally:
        s3_server.resume()
    spooled = [p for p in (volume / "audit-spool").rglob("*") if p.is_file()]
    assert spooled  # what the ModerationAuditSpoolOrphaned alert is about

    # the drain Job's command, in its own process, on the mounted volume
    env = {**cfg.to_env(), "MODERATION_LOG_LEVEL": "WARNING"}
    done = subprocess.run(
        [sys.executable, "-m", "moderation.cli", "audit", "flush", "--timeout", "60"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "spool uploaded" in done.stdout

    store = open_segment_store(cfg)
    records = list(dedupe(r for _, r in iter_records(store)))
    assert sorted(r.job_id for r in records) == jobs  # every record, once
    report = verify_store(store)
    assert report.ok, report.problems
    assert list(report.chains) == [chain]  # the drain continued the chain, it did not fork

    check = subprocess.run(
        [sys.executable, "-m", "moderation.cli", "audit", "verify", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert check.returncode == 0 and json.loads(check.stdout)["ok"]


def test_draining_with_s3_still_down_says_so_and_keeps_the_records(
    settings: Settings, s3_server: MotoServer, tmp_path: Path
) -> None:
    client(s3_server).create_bucket(Bucket="audit-down", ObjectLockEnabledForBucket=True)
    volume = tmp_path / "state-moderation-api-1"
    cfg = s3_settings(settings, s3_server, "audit-down", spool_dir=volume / "audit-spool")
    sink = open_audit_sink(cfg)
    s3_server.pause()
    try:
        for i in range(20):
            sink.write(rec(f"down-{i}"))
        assert not sink.close(0.5)
        env = {**cfg.to_env(), "MODERATION_LOG_LEVEL": "WARNING"}
        done = subprocess.run(
            [sys.executable, "-m", "moderation.cli", "audit", "flush", "--timeout", "2"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            cwd=REPO,
        )
    finally:
        s3_server.resume()
    assert done.returncode == 1  # the Job fails: never delete the claim
    assert "not fully uploaded" in done.stdout
    assert [p for p in (volume / "audit-spool").rglob("*") if p.is_file()]
