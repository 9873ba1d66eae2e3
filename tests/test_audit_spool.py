"""The audit spool and uploader on the embedded (local folder) store: durable writes from many
threads, a writer killed with SIGKILL mid-burst and drained by a new process, a crash between a
segment's upload and its cursor update, and the ``moderation audit`` commands."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections import defaultdict
from datetime import datetime
from pathlib import Path

import pytest

from moderation.adapters.local_audit import LocalSegmentStore
from moderation.compose.stores import open_audit as open_audit_sink
from moderation.core.audit import AuditRecord, dedupe
from moderation.exceptions import AuditError, AuditSinkUnavailable
from moderation.pipeline.audit import iter_records, verify_store
from moderation.settings import Settings
from tests.audit_support import human_record, make_record

REPO = Path(__file__).resolve().parent.parent


def rec(job: str, decision: str = "block") -> AuditRecord:
    return make_record(job, decision)


def fast(settings: Settings, **audit: object) -> Settings:
    update = {"segment_max_records": 200, "segment_max_age_s": 0.2, "retry_max_s": 0.3, **audit}
    return settings.model_copy(update={"audit": settings.audit.model_copy(update=update)})


def stored(store: LocalSegmentStore) -> list[AuditRecord]:
    return [r for _, r in iter_records(store)]


def test_threads_write_durably_and_every_record_arrives_in_order(settings: Settings) -> None:
    settings = fast(settings)
    sink = open_audit_sink(settings)
    store = sink.store
    per_thread, threads = 300, 6

    def burst(t: int) -> None:
        for i in range(per_thread):
            sink.write(rec(f"t{t}-{i:04d}"))

    workers = [threading.Thread(target=burst, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert sink.flush(30)
    chain = sink.chain_id
    assert sink.close()
    records = stored(store)  # type: ignore[arg-type]
    assert len(records) == per_thread * threads
    order: dict[str, list[int]] = defaultdict(list)
    for r in records:
        thread, i = r.job_id.split("-")
        order[thread].append(int(i))
    assert all(seq == list(range(per_thread)) for seq in order.values())
    report = verify_store(store)
    assert report.ok, report.problems
    assert report.chains == {chain: report.segments} and report.segments >= 9
    # The uploaded spool files are gone; only the chain's state remains.
    spool = next(Path(settings.audit.spool_dir).glob("chain-*"))
    names = sorted(p.name for p in spool.iterdir())
    assert names == ["cursor.json", "lock", "records-00000000.jsonl"]
    assert (spool / "records-00000000.jsonl").stat().st_size > 0  # the live file is kept
    with pytest.raises(AuditError):
        sink.write(rec("late"))


def test_spool_files_rotate_and_uploaded_ones_are_deleted(settings: Settings) -> None:
    settings = fast(settings, spool_file_max_bytes=20_000)
    with open_audit_sink(settings) as sink:
        for i in range(200):
            sink.write(rec(f"job-{i}"))
        assert sink.flush(30)
        chain_dir = Path(settings.audit.spool_dir) / f"chain-{sink.chain_id}"
        files = sorted(p.name for p in chain_dir.glob("records-*.jsonl"))
        assert len(files) == 1 and files[0] != "records-00000000.jsonl"
        store = sink.store
    assert [r.job_id for r in stored(store)] == [f"job-{i}" for i in range(200)]  # type: ignore[arg-type]
    assert verify_store(store).ok


class CrashAfterPut(LocalSegmentStore):
    """Stores the segment, then fails as if the process died before recording the upload."""

    crashes = 2

    def put(self, key: str, data: bytes, *, created: datetime) -> None:
        super().put(key, data, created=created)
        if self.crashes:
            self.crashes -= 1
            raise AuditSinkUnavailable("connection reset after the object was stored")


def test_upload_retried_after_success_rewrites_the_same_key(settings: Settings) -> None:
    # Segments are cut by count only here (not by age), so that a slow, loaded machine still
    # packs 50 + 50 + 20.
    settings = fast(settings, segment_max_records=50, segment_max_age_s=3600.0)
    store = CrashAfterPut(settings.audit.local_dir, prefix=settings.audit.prefix)
    with open_audit_sink(settings, store=store) as sink:
        for i in range(120):
            sink.write(rec(f"job-{i}"))
        assert sink.flush(30)
    keys = list(store.list_keys())
    assert len(keys) == 3  # 50 + 50 + 20, each once despite two re-uploads
    assert [r.job_id for r in stored(store)] == [f"job-{i}" for i in range(120)]
    assert verify_store(store).ok


class Unreachable(LocalSegmentStore):
    down = True

    def put(self, key: str, data: bytes, *, created: datetime) -> None:
        if self.down:
            raise AuditSinkUnavailable("store down")
        super().put(key, data, created=created)


def test_records_wait_in_the_spool_while_the_store_is_down(settings: Settings) -> None:
    settings = fast(settings)
    store = Unreachable(settings.audit.local_dir, prefix=settings.audit.prefix)
    sink = open_audit_sink(settings, store=store)
    for i in range(500):
        sink.write(rec(f"job-{i}"))
    assert not sink.flush(1.0) and sink.backlog() and sink.last_error == "audit_unavailable"
    assert list(store.list_keys()) == []
    store.down = False
    assert sink.flush(30) and not sink.backlog()
    sink.close()
    assert [r.job_id for r in stored(store)] == [f"job-{i}" for i in range(500)]
    assert verify_store(store).ok


WRITER = """
import sys
from moderation.compose.stores import open_audit as open_audit_sink
from moderation.core.audit import AuditRecord
from moderation.settings import Settings
sink = open_audit_sink(Settings())
print("chain", sink.chain_id, flush=True)
for i in range(100000):
    record = AuditRecord(kind="automated", job_id=f"job-{i}", content_sha256=None,
        content_ref=None, policy_id="testworld", policy_version=1, compiled_policy_hash=None,
        model_id=None, weights_sha256=None, category_id="c", decision="block",
        record_id=f"r{i}")
    sink.write(record)
    if i % 7 == 3:
        sink.write(record)  # a retried task writes the same record again
    print(i, flush=True)
"""


def _env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODERATION_")}
    env.update(
        MODERATION_AUDIT__SPOOL_DIR=str(settings.audit.spool_dir),
        MODERATION_AUDIT__LOCAL_DIR=str(settings.audit.local_dir),
        MODERATION_AUDIT__SEGMENT_MAX_RECORDS="100",
        MODERATION_AUDIT__SEGMENT_MAX_AGE_S="0.05",
        MODERATION_POLICY_PATHS=json.dumps([str(REPO / "moderation/testmodel/assets")]),
        MODERATION_LOG_LEVEL="WARNING",
        PYTHONPATH=str(REPO),
    )
    return env


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "moderation.cli", "audit", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


def test_writer_killed_mid_burst_loses_and_duplicates_nothing(settings: Settings) -> None:
    env = _env(settings)
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert writer.stdout is not None
    chain = writer.stdout.readline().split()[1]
    acked = -1
    for line in writer.stdout:
        acked = int(line)
        if acked >= 1500:
            break
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait(10)
    acked_after = [int(x) for x in writer.stdout.read().split()]
    acked = max([acked, *acked_after])
    store = LocalSegmentStore(settings.audit.local_dir, prefix=settings.audit.prefix)
    uploaded_before = len(list(store.list_keys()))
    assert uploaded_before >= 1  # the burst was being uploaded when the writer died

    # A new process adopts the dead writer's chain and uploads the rest of its spool.
    done = _cli(["flush", "--timeout", "30"], env)
    assert done.returncode == 0, done.stderr
    records = stored(store)
    unique = list(dedupe(records))
    ids = [int(r.record_id[1:]) for r in unique]
    assert ids[: acked + 1] == list(range(acked + 1))  # every acknowledged record, in order
    assert len(ids) - acked <= 2  # at most the record being written when killed (+ its rewrite)
    assert len(records) > len(unique)  # duplicates were written, and read back once

    check = _cli(["verify", "--json"], env)
    report = json.loads(check.stdout)
    assert check.returncode == 0 and report["ok"], report["problems"]
    assert list(report["chains"]) == [chain]  # the chain continued, it did not fork


def test_cli_verify_names_a_deleted_segment_show_and_export(settings: Settings) -> None:
    env = _env(settings)
    settings = fast(settings, segment_max_records=10)
    with open_audit_sink(settings) as sink:
        for i in range(40):
            sink.write(rec(f"job-{i}", decision="block" if i % 2 else "allow"))
        sink.write(human_record("job-4", "rev-1", "rv_0f1e2d3c4b5a6978", content_ref="mem://job-4"))
    shown = _cli(["show", "job-4", "--json"], env)
    assert shown.returncode == 0, shown.stderr
    history = [json.loads(line) for line in shown.stdout.splitlines()]
    assert [(h["kind"], h["decision"], h["actor"]) for h in history] == [
        ("automated", "allow", "system"),
        ("human", "remove", "rv_0f1e2d3c4b5a6978"),
    ]

    out = Path(settings.audit.local_dir).parent / "dsa.csv"
    exported = _cli(["export", "--format", "dsa", "--csv", "--out", str(out)], env)
    assert exported.returncode == 0, exported.stderr
    import csv

    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 21  # 20 automated blocks + 1 human removal
    assert {r["automated_decision"] for r in rows} == {
        "AUTOMATED_DECISION_FULLY",
        "AUTOMATED_DECISION_PARTIALLY",
    }
    assert all(r["content_type"] == "CONTENT_TYPE_IMAGE" for r in rows)
    assert sorted(r["puid"] for r in rows if r["automated_decision"].endswith("PARTIALLY")) == [
        "job-4"
    ]

    store = LocalSegmentStore(settings.audit.local_dir, prefix=settings.audit.prefix)
    keys = list(store.list_keys())
    (Path(settings.audit.local_dir) / keys[2]).unlink()
    check = _cli(["verify"], env)
    assert check.returncode == 1
    assert f"gap: {keys[3]}: seq 2 of chain" in check.stdout.replace("\n", "")
