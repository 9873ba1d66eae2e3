"""The embedding history: shard keys, the Parquet format (and its twin), the workers' buffered
writer, shards in a local folder and in a real S3 server (moto_server) with retention by whole
days, the one-time import of an old Redis history, the deprecated settings, and the merge of a
backtest's group counts."""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from moderation.adapters.local_blobs import LocalBlobStore
from moderation.adapters.memory import MemoryBlobStore, MemoryHistoryFormat
from moderation.adapters.parquet_history import ParquetHistory
from moderation.adapters.s3_blobs import S3BlobStore
from moderation.cli import app
from moderation.core.backtest import BacktestChange, BacktestPartial, Outcome, merge_partials
from moderation.core.decision import Decision, PolicyRef, Verdict
from moderation.core.embeddings import HistoryBatch, StoredEmbedding
from moderation.core.history_keys import (
    day_prefix,
    days_between,
    parse_shard_key,
    shard_key,
    writer_token,
)
from moderation.core.image_ref import ImageRef
from moderation.core.jobs import Job
from moderation.core.policy import Action
from moderation.exceptions import HistoryShardUnreadable
from moderation.metrics import metrics
from moderation.pipeline.history import EmbeddingHistory
from moderation.pipeline.history_import import import_history
from moderation.pipeline.history_shards import HistoryShards, expired_days
from moderation.ports import HistoryFormat
from moderation.settings import BlobSettings, EmbeddingSettings, S3Settings, Settings
from tests.servers import MotoServer

T0 = datetime(2026, 12, 7, 9, 59, 58, tzinfo=UTC).timestamp()


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _item(i: int, *, at: float = T0, frames: int = 1, tenant: str = "acme", dim: int = 8) -> Any:
    rng = np.random.default_rng(i)
    x = rng.normal(size=(frames, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return StoredEmbedding(
        job_id=f"{tenant}/job-{i}" if tenant != "default" else f"job-{i}",
        model_id="test-model",
        embeddings=StoredEmbedding.quantize(x),
        tenant=tenant,
        policies=("testworld", "weapons") if i % 2 else (),
        decision=("allow", "review", "block")[i % 3],
        deciding=None if i % 3 == 0 else "testworld/contraband_symbol",
        versions={"testworld": 1 + i % 2},
        content_sha256=None if i % 4 == 0 else f"{i:064x}",
        image=None if i % 5 == 0 else f"s3://uploads/{i}.jpg",
        at=at + i * 0.001,
    )


def _decided(i: int, tenant: str = "acme") -> tuple[Job, Verdict, Any, str | None]:
    job = Job(id=f"{tenant}/job-{i}", image=ImageRef(uri=f"mem://{i}"), tenant=tenant)
    verdict = Verdict(
        decision=Decision.ALLOW,
        action=Action.NONE,
        reason_code=None,
        policy_id=None,
        category_id=None,
        severity=None,
        score=0.1,
        categories=[],
        scores={},
        policies=[PolicyRef("testworld", 1, "p" * 64, "c" * 64)],
        model="test-model",
    )
    return job, verdict, np.ones((1, 8), np.float32) / np.sqrt(8), f"{i:064x}"


# --- keys --------------------------------------------------------------------------------------


def test_shard_keys_name_the_hour_and_time_span_and_nothing_of_a_tenant() -> None:
    key = shard_key(T0, T0 + 1.5, "pod-7/worker 12", 3, suffix=".parquet")
    assert key == (
        "embeddings/date=2026-12-07/hour=09/"
        f"{int(T0 * 1000):013d}-{int((T0 + 1.5) * 1000):013d}-pod-7-worker-12-000003.parquet"
    )
    parsed = parse_shard_key(key)
    assert parsed is not None and (parsed.first, parsed.last) == (T0, T0 + 1.5)
    assert parsed.writer_name == "pod-7-worker-12"
    assert parsed.overlaps(T0 + 1, T0 + 2) and not parsed.overlaps(T0 + 2, None)
    assert not parsed.overlaps(0, T0 - 1)
    with pytest.raises(ValueError, match="one UTC hour"):
        shard_key(T0, T0 + 3, "w", 1, suffix=".parquet")  # 09:59:58 -> 10:00:01
    with pytest.raises(ValueError, match="one UTC hour"):
        shard_key(T0, T0 - 1, "w", 1, suffix=".parquet")
    assert parse_shard_key("embeddings/date=2026-12-07/hour=09/notes.txt") is None
    assert writer_token("../..") == "writer" and writer_token("a:b") == "a-b"
    assert days_between(T0, T0 + 2 * 86400) == [
        date(2026, 12, 7),
        date(2026, 12, 8),
        date(2026, 12, 9),
    ]
    assert day_prefix(date(2026, 1, 2)) == "embeddings/date=2026-01-02/"


def test_expired_days_are_whole_days_before_the_retention_limit() -> None:
    now = datetime(2026, 12, 31, 5, 0, tzinfo=UTC).timestamp()
    # limit: 2026-12-01 05:00 -> 2026-12-01 still has live rows; 11-30 and before are gone
    assert expired_days(now, 30 * 86400, 3) == [
        date(2026, 11, 28),
        date(2026, 11, 29),
        date(2026, 11, 30),
    ]


# --- the shard format --------------------------------------------------------------------------


@pytest.fixture(params=["parquet", "memory"])
def fmt(request: pytest.FixtureRequest) -> HistoryFormat:
    return ParquetHistory() if request.param == "parquet" else MemoryHistoryFormat()


def test_a_shard_keeps_every_field_and_filters_by_tenant(fmt: HistoryFormat) -> None:
    items = [
        _item(i, frames=1 + i % 3, tenant=("acme", "globex", "default")[i % 3]) for i in range(30)
    ]
    data = fmt.encode(HistoryBatch.from_items(items))
    back = fmt.decode(data)
    assert len(back) == 30 and back.dim == 8 and back.embeddings.dtype == np.float16
    for original, read in zip(items, back.items(), strict=True):
        assert read.job_id == original.job_id and read.tenant == original.tenant
        np.testing.assert_array_equal(read.embeddings, original.embeddings)
        assert (read.policies, read.decision, read.deciding, read.versions) == (
            original.policies,
            original.decision,
            original.deciding,
            original.versions,
        )
        assert (read.content_sha256, read.image, read.model_id) == (
            original.content_sha256,
            original.image,
            original.model_id,
        )
        assert read.at == pytest.approx(original.at, abs=1e-3)
    globex = fmt.decode(data, tenant="globex")
    assert globex.job_ids == [i.job_id for i in items if i.tenant == "globex"]
    np.testing.assert_array_equal(
        globex.embeddings, np.concatenate([i.embeddings for i in items if i.tenant == "globex"])
    )
    assert len(fmt.decode(data, tenant="initech")) == 0
    assert len(fmt.decode(fmt.encode(HistoryBatch.from_items([])))) == 0


def test_an_unreadable_shard_is_a_clear_error(fmt: HistoryFormat) -> None:
    data = fmt.encode(HistoryBatch.from_items([_item(1)]))
    for bad in (b"", b"PAR1 garbage", data[: len(data) // 2], b'{"format": "x"}'):
        with pytest.raises(HistoryShardUnreadable) as caught:
            fmt.decode(bad)
        assert caught.value.code == "history_shard_unreadable"


def test_a_parquet_file_that_is_not_a_shard_is_refused() -> None:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(pa.table({"job_id": ["a"]}), sink)
    with pytest.raises(HistoryShardUnreadable, match="not an embedding-history shard"):
        ParquetHistory().decode(sink.getvalue())


def test_width_mismatch_in_one_batch_is_refused() -> None:
    with pytest.raises(ValueError, match="different widths"):
        HistoryBatch.from_items([_item(1, dim=8), _item(2, dim=16)])


# --- the workers' buffered writer --------------------------------------------------------------


def _writer(
    blobs: Any = None, clock: Clock | None = None, **settings: Any
) -> tuple[EmbeddingHistory, HistoryShards]:
    shards = HistoryShards(
        blobs or MemoryBlobStore(), MemoryHistoryFormat(), clock=clock or Clock()
    )
    options = {"store": True, "flush_rows": 10, "flush_interval_s": 60.0, **settings}
    history = EmbeddingHistory(
        shards, writer="host-1", settings=EmbeddingSettings(**options), clock=shards.clock
    )
    return history, shards


def _rows(shards: HistoryShards) -> list[StoredEmbedding]:
    keys = [k.key for k in shards.keys(0, T0 + 10 * 86400)]
    return [item for _, batch in shards.read_many(keys) for item in batch.items()]


def _count(result: str) -> float:
    return (
        metrics().registry.get_sample_value(
            "moderation_embeddings_stored_total", {"result": result}
        )
        or 0.0
    )


def test_the_writer_flushes_by_rows_by_bytes_and_by_age_and_splits_hours() -> None:
    clock = Clock()
    history, shards = _writer(clock=clock)
    assert history.record_many([_decided(i) for i in range(9)]) == 9
    assert shards.keys(0) == [] and history.buffered == 9  # below every threshold
    history.record_many([_decided(9)])  # the 10th row: a shard, on the caller's thread here
    assert [len(b) for _, b in shards.read_many([k.key for k in shards.keys(0)])] == [10]
    # by age: the oldest item waited flush_interval_s; rows on both sides of 10:00 UTC
    history.record_many([_decided(i) for i in range(10, 13)])
    clock.now = T0 + 3  # 10:00:01
    history.record_many([_decided(i) for i in range(13, 15)])
    assert history.flush() == 0  # not due yet
    clock.now = T0 + 61
    assert history.flush() == 5
    keys = shards.keys(0)
    assert [k.key.split("/")[2] for k in keys] == ["hour=09", "hour=09", "hour=10"]
    assert [len(shards.read(k.key)) for k in keys] == [10, 3, 2]
    assert all("acme" not in k.key and "job" not in k.key for k in keys)
    rows = _rows(shards)
    assert [r.job_id for r in rows] == [f"acme/job-{i}" for i in range(15)]
    assert {r.tenant for r in rows} == {"acme"}
    # by bytes: 2 items of 8 float16 + overhead cross 300 bytes
    small, small_shards = _writer(flush_rows=1000, flush_bytes=1024)
    small.record_many([_decided(i) for i in range(6)])
    assert (
        sum(len(b) for _, b in small_shards.read_many([k.key for k in small_shards.keys(0)])) == 6
    )


def test_a_down_store_keeps_the_buffer_bounded_and_an_orderly_stop_flushes() -> None:
    blobs = MemoryBlobStore(down=True)  # S3 unreachable
    clock = Clock()
    history, shards = _writer(blobs, clock=clock, max_buffered_rows=25)
    dropped, failed = _count("dropped"), _count("failed")
    history.record_many([_decided(i) for i in range(20)])  # shards refused: kept
    assert history.buffered == 20 and blobs.objects == {}
    assert history.record_many([_decided(i) for i in range(20, 30)]) == 5  # 5 over the cap
    assert _count("dropped") == dropped + 5
    clock.now += 1
    assert history.flush(force=False) == 0  # waiting out the retry pause
    blobs.down = False
    clock.now += 10
    assert history.flush() == 25 and history.buffered == 0
    assert len(_rows(shards)) == 25 and _count("failed") == failed
    # an orderly stop (SIGTERM) writes what is buffered, whatever the thresholds
    history.record_many([_decided(i) for i in range(30, 33)])
    history.close()
    assert len(_rows(shards)) == 28


def test_the_background_writer_writes_on_its_own_thread() -> None:
    history, shards = _writer(flush_rows=5, flush_interval_s=3600.0)
    history.start()
    try:
        history.record_many([_decided(i) for i in range(5)])
        deadline = time.monotonic() + 30
        while not shards.keys(0) and time.monotonic() < deadline:  # woken by the size threshold
            time.sleep(0.05)
        assert [len(shards.read(k.key)) for k in shards.keys(0)] == [5]
        history.record_many([_decided(5)])
    finally:
        history.close()
    assert len(_rows(shards)) == 6


# --- shards in a folder and in S3 --------------------------------------------------------------


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    server = MotoServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _s3(server: MotoServer) -> S3BlobStore:
    bucket = f"history-{uuid.uuid4().hex[:12]}"
    server.client().create_bucket(Bucket=bucket)
    return S3BlobStore(
        S3Settings(
            endpoint_url=server.url,
            access_key_id="testing",  # type: ignore[arg-type]
            secret_access_key="testing",  # type: ignore[arg-type]
        ),
        BlobSettings(bucket=bucket, prefix="moderation/"),
    )


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "local":
        return LocalBlobStore(tmp_path / "blobs")
    return _s3(request.getfixturevalue("moto"))


def test_shards_list_in_time_order_read_with_prefetch_and_expire_by_whole_days(store: Any) -> None:
    day = 86400.0
    clock = Clock(T0 + 40 * day)
    shards = HistoryShards(store, ParquetHistory(), retention_s=60 * day, clock=clock)
    expiring = HistoryShards(store, ParquetHistory(), retention_s=30 * day, clock=clock)
    written = []
    for n, (when, writer) in enumerate(
        [(T0 - 3600, "b"), (T0 + 5, "a"), (T0 - 1800, "a"), (T0 + day, "b"), (T0 + 39 * day, "a")]
    ):
        items = [_item(100 * n + i, at=when) for i in range(3)]
        key = shard_key(items[0].at, items[-1].at, writer, n, suffix=".parquet")
        shards.write(key, HistoryBatch.from_items(items))
        written.append((when, key))
    store.put("embeddings/date=2026-12-07/hour=09/README", b"not a shard")  # ignored
    in_order = [key for _, key in sorted(written)]
    assert [k.key for k in shards.keys(0)] == in_order
    assert [k.key for k in shards.keys(T0, T0 + 2 * day)] == in_order[2:4]
    assert shards.keys(T0 + 41 * day) == []
    read = list(shards.read_many([k.key for k in shards.keys(0)], tenant="acme", prefetch=2))
    assert [key for key, _ in read] == in_order and all(len(b) == 3 for _, b in read)
    store.delete(in_order[1])  # gone meanwhile (the sweep): skipped
    assert [key for key, _ in shards.read_many(in_order)] == [in_order[0], *in_order[2:]]
    assert [u.shards for u in shards.usage(0)] == [2, 1, 1]
    # retention 30 days: 2026-12-07 and -08 are whole days past it (all their objects go: 3
    # shards and the stray file); 2027-01-15 is not
    assert expiring.sweep(lookback_days=60) == 4
    assert [k.key for k in shards.keys(0)] == in_order[-1:]
    assert list(store.list("embeddings/date=2026-12-07/")) == []


# --- the one-time import of an old Redis history -----------------------------------------------


def _old_entry(i: int, at_ms: int) -> dict[str, Any]:
    meta = {
        "j": f"acme/old-{i}" if i % 2 else f"old-{i}",
        "m": "test-model",
        "n": 1,
        "p": ["testworld"] if i % 3 == 0 else [],
        "d": "review",
        "k": "testworld/contraband_symbol",
        "v": {"testworld": 1},
        "h": f"{i:064x}",
        "i": f"inline:old-{i}",
    }
    return {"x": json.dumps(meta), "e": (np.ones(8, np.float16) / 3).tobytes()}


def test_import_redis_copies_an_old_history_once(redis_url: str, settings: Settings) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    client.xadd("mod:embeddings", _old_entry(99, 1000), id="1000-0")  # long past retention
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    hour_ms = 3_600_000
    base = (now_ms // hour_ms - 3) * hour_ms  # three hours ago, on the hour
    for i in range(25):
        at = base + (0 if i < 15 else hour_ms) + i
        client.xadd("mod:embeddings", _old_entry(i, at), id=f"{at}-0")  # type: ignore[arg-type]
    client.xadd("mod:embeddings", {"x": "{broken", "e": b""}, id=f"{base + hour_ms + 99}-0")
    cfg = settings.model_copy(update={"redis_url": redis_url})
    env = {**cfg.to_env({}), "COLUMNS": "200"}
    runner = CliRunner()
    args = ["history", "import-redis", "--rows-per-shard", "10", "--json"]
    done = runner.invoke(app, args, env=env, catch_exceptions=False)
    assert done.exit_code == 0, done.output
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {
        "read": 27,
        "copied": 25,
        "unreadable": 1,
        "expired": 1,
        "shards": 3,
        "hours": 2,
        "replaced": 0,
    }
    history = HistoryShards(LocalBlobStore(cfg.blobs.local_dir), ParquetHistory())
    rows = [r for _, b in history.read_many([k.key for k in history.keys(0)]) for r in b.items()]
    assert len(rows) == 25 and {r.tenant for r in rows} == {"acme", "default"}
    assert {r.job_id: r.tenant for r in rows}["acme/old-1"] == "acme"
    assert all(r.decision == "review" and r.versions == {"testworld": 1} for r in rows)
    # again, after more entries came: the hours are replaced, nothing counted twice
    later = base + hour_ms + 500
    client.xadd("mod:embeddings", _old_entry(200, later), id=f"{later}-0")  # type: ignore[arg-type]
    again = json.loads(runner.invoke(app, args, env=env).stdout.strip().splitlines()[-1])
    assert again["copied"] == 26 and again["replaced"] == 0  # same keys, rewritten
    rows = [r for _, b in history.read_many([k.key for k in history.keys(0)]) for r in b.items()]
    assert len(rows) == 26 and len({r.job_id for r in rows}) == 26
    stats = json.loads(runner.invoke(app, ["history", "stats", "--json"], env=env).stdout)
    assert sum(day["shards"] for day in stats["days"]) == 4
    pruned = runner.invoke(app, ["history", "prune"], env=env)
    assert pruned.exit_code == 0 and "deleted 0 shards" in pruned.stdout


def test_import_replaces_the_shards_of_an_earlier_import() -> None:
    clock = Clock(T0 + 3600)
    shards = HistoryShards(MemoryBlobStore(), MemoryHistoryFormat(), clock=clock)
    first = [_item(i, at=T0 - 1000) for i in range(30)]
    assert import_history([(first, 0)], shards, rows_per_shard=7).shards == 5
    # the stream was trimmed in between: fewer, later rows for the same hour
    second = import_history([(first[10:], 0)], shards, rows_per_shard=7)
    assert (second.shards, second.replaced) == (3, 5)
    assert sorted(r.job_id for r in _rows(shards)) == sorted(i.job_id for i in first[10:])


# --- settings ----------------------------------------------------------------------------------


def test_the_old_redis_settings_still_parse_and_warn(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in Settings().to_env({}).items():  # a child process's environment
        if name.startswith("MODERATION_"):
            monkeypatch.setenv(name, value)
    assert Settings().embeddings.deprecations() == []
    monkeypatch.delenv("MODERATION_EMBEDDINGS")
    monkeypatch.setenv("MODERATION_EMBEDDINGS__REDIS_URL", "redis://history:6379/0")
    monkeypatch.setenv("MODERATION_EMBEDDINGS__MAX_ITEMS", "1000")
    warnings = Settings().embeddings.deprecations()
    assert len(warnings) == 2 and "import-redis" in warnings[0] and "MAX_ITEMS" in warnings[1]


# --- merging a backtest's group counts ---------------------------------------------------------


def test_group_counts_merge_to_the_same_report_in_any_order() -> None:
    def change(i: int) -> BacktestChange:
        at = datetime.fromtimestamp(T0 + i, UTC).isoformat(timespec="milliseconds")
        return BacktestChange(
            job_id=f"j{i}",
            image=None,
            at=at,
            recorded="allow",
            before=Outcome("allow", None, 0.1),
            after=Outcome("block", "p/c", 0.9),
        )

    parts = [
        BacktestPartial(
            shards=1,
            read=10 + i,
            scored=9,
            changed=2,
            refused={"other": i},
            transitions={"allow -> block": 2},
            by_category={"p/c": 1, f"p/{i}": 1},
            examples=[change(3 * i + 2), change(3 * i)],
        )
        for i in range(6)
    ]
    merged = merge_partials(parts, examples=4)
    rng = random.Random(4)
    for _ in range(5):
        shuffled = parts[:]
        rng.shuffle(shuffled)
        assert merge_partials(shuffled, examples=4) == merged
    assert (merged.read, merged.scored, merged.changed, merged.shards) == (75, 54, 12, 6)
    assert [c.job_id for c in merged.examples] == ["j0", "j2", "j3", "j5"]
    assert next(iter(merged.by_category)) == "p/c" and merged.refused == {"other": 15}
    assert BacktestPartial.from_dict(json.loads(json.dumps(merged.to_dict()))) == merged


# --- where a backtest is scored ----------------------------------------------------------------


def test_auto_scores_here_unless_the_workers_can_share_the_work(settings: Settings) -> None:
    from moderation.compose.backtest import backtest_runner
    from moderation.exceptions import BacktestWorkersUnavailable, QualityError
    from moderation.pipeline.backtest import LocalBacktests

    scoring: Any = object()  # not used to choose

    def runner(cfg: Settings, on: Any, *, exemplars: bool = False) -> Any:
        return backtest_runner(
            cfg, on=on, parallel=None, timeout_s=1.0, candidate_has_exemplars=exemplars
        )

    in_s3 = settings.model_copy(
        update={"blobs": settings.blobs.model_copy(update={"bucket": "history"})}
    )
    assert isinstance(runner(in_s3, "local")(scoring, 10), LocalBacktests)
    assert isinstance(runner(in_s3, "auto")(scoring, 1), LocalBacktests)  # one group
    assert isinstance(runner(settings, "auto")(scoring, 10), LocalBacktests)  # a local folder
    assert isinstance(runner(in_s3, "auto")(scoring, 10), LocalBacktests)  # no worker alive
    assert isinstance(runner(in_s3, "auto", exemplars=True)(scoring, 10), LocalBacktests)
    with pytest.raises(BacktestWorkersUnavailable, match="no live worker"):
        runner(in_s3, "workers")(scoring, 10)
    with pytest.raises(QualityError, match="exemplar images"):
        runner(in_s3, "workers", exemplars=True)(scoring, 10)
