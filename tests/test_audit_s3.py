"""The audit log on a real S3-compatible server over HTTP (moto_server): Object Lock retention,
locked segments that cannot be deleted, tamper detection, an outage in the middle of a burst,
and no credential in any record or log line."""

from __future__ import annotations

import gzip
import logging
import threading
import time
from collections import defaultdict
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from pydantic import SecretStr

from moderation.adapters.s3_audit import S3SegmentStore
from moderation.compose.stores import open_audit as open_audit_sink
from moderation.core.audit import AuditRecord, dedupe
from moderation.pipeline.audit import iter_records, verify_store
from moderation.settings import Settings
from tests.audit_support import human_record, make_record
from tests.servers import MotoServer

ACCESS_KEY = "AKIAAUDITTESTKEY7Q3Z"
SECRET_KEY = "audit-test-secret-Zq8vL2mN4pR6tY1uW3xK"
SESSION_SECRET = "review-session-secret-9GfT2hJ"
PSEUDONYM_SECRET = "pseudonym-secret-4KdS8aQ"


def s3_settings(settings: Settings, server: MotoServer, bucket: str, **audit: Any) -> Settings:
    return settings.model_copy(
        update={
            "s3": settings.s3.model_copy(
                update={
                    "endpoint_url": server.url,
                    "access_key_id": SecretStr(ACCESS_KEY),
                    "secret_access_key": SecretStr(SECRET_KEY),
                    "connect_timeout_s": 0.5,
                    "read_timeout_s": 0.5,
                    "max_attempts": 1,
                }
            ),
            "review": settings.review.model_copy(
                update={
                    "session_secret": SecretStr(SESSION_SECRET),
                    "pseudonym_secret": SecretStr(PSEUDONYM_SECRET),
                }
            ),
            "audit": settings.audit.model_copy(
                update={
                    "bucket": bucket,
                    "retention_days": 30,
                    "retention_mode": "COMPLIANCE",
                    "segment_max_records": 250,
                    "segment_max_age_s": 0.2,
                    "retry_max_s": 0.5,
                    **audit,
                }
            ),
        }
    )


def client(server: MotoServer) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=server.url,
        region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    )


def rec(job: str) -> AuditRecord:
    return make_record(job, ref=f"s3://in/{job}")


@pytest.fixture
def locked(settings: Settings, s3_server: MotoServer) -> Settings:
    client(s3_server).create_bucket(Bucket="audit-locked", ObjectLockEnabledForBucket=True)
    return s3_settings(settings, s3_server, "audit-locked")


def write_all(settings: Settings, jobs: list[str]) -> S3SegmentStore:
    with open_audit_sink(settings) as sink:
        for job in jobs:
            sink.write(rec(job))
        assert sink.flush(30)
        store = sink.store
    assert isinstance(store, S3SegmentStore)
    return store


def test_write_list_verify_with_retention_and_locked_segments(
    locked: Settings, s3_server: MotoServer
) -> None:
    jobs = [f"job-{i}" for i in range(600)]
    store = write_all(locked, jobs)
    keys = list(store.list_keys())
    assert len(keys) >= 3 and keys == sorted(keys)
    assert [r.job_id for _, r in iter_records(store)] == jobs
    report = verify_store(store)
    assert report.ok, report.problems
    s3 = client(s3_server)
    for key in keys:
        head = s3.head_object(Bucket="audit-locked", Key=key)
        assert head["ObjectLockMode"] == "COMPLIANCE"
        days = (head["ObjectLockRetainUntilDate"] - head["LastModified"]).days
        assert 29 <= days <= 30
    version = s3.head_object(Bucket="audit-locked", Key=keys[0])["VersionId"]
    with pytest.raises(ClientError) as denied:
        s3.delete_object(Bucket="audit-locked", Key=keys[0], VersionId=version)
    assert denied.value.response["Error"]["Code"] == "AccessDenied"
    assert s3.get_object(Bucket="audit-locked", Key=keys[0])["Body"].read().startswith(b"\x1f\x8b")


def test_verify_names_edit_deletion_swap_and_missing_retention(
    locked: Settings, s3_server: MotoServer
) -> None:
    # Segments cut by size only: 1,500 records in six segments of 250.
    slow = locked.model_copy(
        update={"audit": locked.audit.model_copy(update={"segment_max_age_s": 60.0})}
    )
    store = write_all(slow, [f"job-{i}" for i in range(1500)])
    keys = list(store.list_keys())
    assert len(keys) == 6
    s3 = client(s3_server)

    def get(key: str) -> bytes:
        return s3.get_object(Bucket="audit-locked", Key=key)["Body"].read()

    # Edit one byte of segment 1 (a new version without retention: the locked one stays).
    data = bytearray(get(keys[1]))
    data[200] ^= 0xFF
    s3.put_object(Bucket="audit-locked", Key=keys[1], Body=bytes(data))
    # Delete segment 3 (a delete marker hides it; the locked version cannot be removed).
    s3.delete_object(Bucket="audit-locked", Key=keys[3])
    # Swap segments 4 and 5.
    four, five = get(keys[4]), get(keys[5])
    s3.put_object(Bucket="audit-locked", Key=keys[4], Body=five)
    s3.put_object(Bucket="audit-locked", Key=keys[5], Body=four)

    problems = verify_store(store).problems
    found = {(p.kind, p.key) for p in problems}
    assert ("corrupt", keys[1]) in found
    assert ("gap", keys[4]) in found
    assert ("reordered", keys[4]) in found and ("reordered", keys[5]) in found
    assert {k for kind, k in found if kind == "retention"} == {keys[1], keys[4], keys[5]}
    assert {k for _, k in found} == {keys[1], keys[4], keys[5]}
    gap = next(p for p in problems if p.kind == "gap")
    assert "seq 3 " in gap.message and keys[2] in gap.message


def test_s3_down_during_a_burst_every_record_arrives_in_order(
    locked: Settings, s3_server: MotoServer
) -> None:
    sink = open_audit_sink(locked)
    threads, per_thread = 6, 500
    started = threading.Event()

    def burst(t: int) -> None:
        for i in range(per_thread):
            sink.write(rec(f"t{t}-{i:04d}"))
            if i == 50:
                started.set()

    workers = [threading.Thread(target=burst, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    assert started.wait(30)
    s3_server.pause()  # S3 unreachable (connections hang) in the middle of the burst
    try:
        for w in workers:
            w.join()  # writes still return: they only wait for the local spool
        assert sink.backlog() and not sink.flush(1.0)
        deadline = time.monotonic() + 20
        while sink.last_error is None and time.monotonic() < deadline:
            sink.flush(0.2)  # the uploader is stuck on a request that times out
        assert sink.last_error == "audit_unavailable" and sink.backlog()
    finally:
        s3_server.resume()
    assert sink.flush(60)
    chain = sink.chain_id
    assert sink.close()
    store = sink.store
    records = list(dedupe(r for _, r in iter_records(store)))
    assert len(records) == threads * per_thread
    by_thread: dict[str, list[int]] = defaultdict(list)
    for r in records:
        thread, i = r.job_id.split("-")
        by_thread[thread].append(int(i))
    assert all(v == list(range(per_thread)) for v in by_thread.values())
    report = verify_store(store)
    assert report.ok, report.problems
    assert report.records == threads * per_thread and list(report.chains) == [chain]


def test_no_secret_in_records_or_logs_and_reviewers_are_pseudonymous(
    settings: Settings, s3_server: MotoServer, caplog: pytest.LogCaptureFixture
) -> None:
    client(s3_server).create_bucket(Bucket="audit-plain")
    cfg = s3_settings(settings, s3_server, "audit-plain")
    caplog.set_level(logging.DEBUG)
    sink = open_audit_sink(cfg)
    for i in range(30):
        sink.write(rec(f"job-{i}"))
    sink.write(human_record("job-3", "rev-9", "rv_5d41402abc4b2a76", content_ref="s3://in/job-3"))
    assert sink.flush(30)
    s3_server.pause()  # failures get logged too
    try:
        sink.write(rec("during-outage"))
        assert not sink.flush(1.5)
        deadline = time.monotonic() + 20
        while sink.last_error is None and time.monotonic() < deadline:
            sink.flush(0.2)
        assert sink.last_error == "audit_unavailable"
    finally:
        s3_server.resume()
    assert sink.close(30)
    store = sink.store
    assert not verify_store(store).problems
    raw = b"".join(gzip.decompress(store.get(k)) for k in store.list_keys()).decode()
    records = [r for _, r in iter_records(store)]
    assert {r.actor for r in records} == {"system", "rv_5d41402abc4b2a76"}
    assert any("upload to s3://audit-plain/audit/ failed" in m for m in caplog.messages)
    # botocore's DEBUG output carries the signed Authorization header (the access key id): the
    # adapter caps the SDK loggers even when the application runs at DEBUG.
    assert logging.getLogger("botocore.endpoint").getEffectiveLevel() >= logging.INFO
    for secret in (ACCESS_KEY, SECRET_KEY, SESSION_SECRET, PSEUDONYM_SECRET):
        assert secret not in raw
        assert secret not in caplog.text
        for record in caplog.records:
            assert secret not in record.getMessage() and secret not in str(record.args)
