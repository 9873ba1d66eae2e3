"""Job records and results in PostgreSQL (:class:`PostgresJobStore`) on a real server: the
JobStore contract (idempotent create, a final result written once, human decisions, dead
letters reopened), hot-path batches as one statement each, lookups by id across daily
partitions, and retention by dropping whole partitions."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from moderation.adapters.memory import MemoryJobTransients
from moderation.adapters.postgres.jobs import PostgresJobStore
from moderation.adapters.postgres.pool import open_pool
from moderation.core.decision import Action, Decision, PolicyRef, Verdict
from moderation.core.image_ref import ImageRef
from moderation.core.jobs import Job, JobError, JobResult, JobStatus
from moderation.core.review import HumanDecision, ReviewDecision
from moderation.exceptions import QueueFull
from moderation.settings import DatabaseSettings
from tests.conftest import PG_TEMPLATE
from tests.servers import PostgresServer, database_name

pytestmark = pytest.mark.xdist_group("postgres")


class CountingCursor(psycopg.Cursor[Any]):
    """Counts the statements sent (what "one statement per batch" is checked with)."""

    sent: list[str] = []  # noqa: RUF012 - shared on purpose: one test at a time reads it

    def execute(self, query: Any, params: Any = None, **kw: Any) -> Any:
        CountingCursor.sent.append(str(query)[:60])
        return super().execute(query, params, **kw)


@pytest.fixture(scope="module")
def pool(pg_url: str) -> Iterator[ConnectionPool]:
    def configure(conn: psycopg.Connection[Any]) -> None:
        conn.cursor_factory = CountingCursor

    pool = ConnectionPool(pg_url, min_size=1, max_size=8, configure=configure, open=True)
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture
def transients() -> MemoryJobTransients:
    return MemoryJobTransients(max_queued_bytes=1 << 20)


@pytest.fixture
def store(pool: ConnectionPool, transients: MemoryJobTransients) -> PostgresJobStore:
    return PostgresJobStore(pool, transients, retention_days=7)


def job(job_id: str, tenant: str = "acme", **kw: Any) -> Job:
    return Job(
        id=f"{tenant}/{job_id}",
        image=ImageRef.for_inline(f"{tenant}/{job_id}"),
        tenant=tenant,
        **kw,
    )


def verdict(decision: Decision) -> Verdict:
    return Verdict(
        decision=decision,
        action=Action.NONE,
        reason_code=None,
        policy_id=None,
        category_id=None,
        severity=None,
        score=0.9,
        categories=[],
        scores={},
        policies=[PolicyRef("testworld", 1, "p" * 64, "c" * 64)],
        model="test-model",
    )


def test_create_many_is_one_statement_and_idempotent(
    store: PostgresJobStore, transients: MemoryJobTransients
) -> None:
    jobs = [(job(f"c{i}", tenant="t1"), b"img" * i) for i in range(100)]
    CountingCursor.sent.clear()
    created = store.create_many(jobs)
    assert CountingCursor.sent and len(CountingCursor.sent) == 1  # the whole batch, one INSERT
    assert all(was_new for _, was_new in created)
    assert transients.queued_bytes() > 0 and len(transients.pending) == 100
    # Again, plus a new one and the new one twice in the same batch.
    again = store.create_many([jobs[0], jobs[1], (job("c-new", tenant="t1"), None)] * 2)
    assert [was_new for _, was_new in again] == [False, False, True, False, False, False]
    assert again[0][0] == jobs[0][0]
    stored = store.get_jobs([f"t1/c{i}" for i in range(100)] + ["t1/none"])
    assert stored == [j for j, _ in jobs] + [None]
    results = store.get_results(["t1/c5"])
    assert results[0] is not None and results[0].status is JobStatus.QUEUED


def test_a_final_result_is_written_once_in_one_statement(
    store: PostgresJobStore, transients: MemoryJobTransients
) -> None:
    jobs = [job(f"f{i}", tenant="t2") for i in range(20)]
    store.create_many([(j, b"x" * 100) for j in jobs])
    ended = [
        JobResult.ended(j, verdict=verdict(Decision.REVIEW if i % 2 else Decision.ALLOW))
        for i, j in enumerate(jobs)
    ]
    CountingCursor.sent.clear()
    assert store.finish_many(ended) == [True] * 20
    assert len(CountingCursor.sent) == 1
    # A redelivered task's result never replaces the first.
    late = JobResult.ended(jobs[0], error=JobError(code="image_corrupt", message="x"))
    assert store.finish_many([late]) == [False]
    first = store.get_result(jobs[0].id)
    assert first is not None and first.status is JobStatus.DONE
    raw = store.result_json([jobs[1].id, "t2/none"])
    assert raw[1] is None and raw[0] is not None
    assert JobResult.model_validate_json(raw[0]) == ended[1]
    # Bytes: every ending drops them (a reviewer sees the evidence kept in the object store,
    # not these); nothing stays queued.
    assert transients.inline_bytes_many([jobs[0].id, jobs[1].id]) == [None, None]
    assert transients.pending == {} or all(not k.startswith("t2/") for k in transients.pending)
    outcome_ids = [i for i, _ in store.outcomes() if i.startswith("t2/")]
    assert sorted(outcome_ids) == sorted(j.id for j in jobs)  # one entry per job
    with psycopg.connect(str(store.pool.conninfo)) as conn:
        decisions = conn.execute(
            "SELECT decision, count(*) FROM jobs WHERE tenant = 't2' GROUP BY 1 ORDER BY 1"
        ).fetchall()
    assert decisions == [("allow", 10), ("review", 10)]


def test_a_queued_result_is_answered_as_written_and_a_final_one_is_queryable_jsonb(
    store: PostgresJobStore,
) -> None:
    """0140: a job not ended is answered from the JSON text its create stored (no JSONB
    conversion per poll); an ended job's result is JSONB to query, one copy per row; a row
    written before 0140 (JSONB only) reads the same."""
    queued, ending = job("x1", tenant="t10"), job("x2", tenant="t10")
    store.create_many([(queued, None), (ending, None)])
    ended = JobResult.ended(ending, verdict=verdict(Decision.BLOCK))
    store.finish(ended)
    as_text = store.result_json([queued.id, ending.id])
    assert as_text[0] == JobResult.queued(queued).model_dump_json().encode()  # as written
    assert as_text[1] is not None and JobResult.model_validate_json(as_text[1]) == ended
    with psycopg.connect(str(store.pool.conninfo), autocommit=True) as conn:
        rows = {
            str(i): (d, bool(t))
            for i, d, t in conn.execute(
                "SELECT id, result->'verdict'->>'decision', result_text IS NOT NULL FROM jobs "
                "WHERE tenant = 't10'"
            ).fetchall()
        }
        # Not ended: the text only (no JSONB); ended: the JSONB only.
        assert rows == {queued.id: (None, True), ending.id: ("block", False)}
        conn.execute(  # a queued job as a release before 0140 left it: JSONB only
            "UPDATE jobs SET result = result_text::jsonb, result_text = NULL WHERE id = %s",
            (queued.id,),
        )
    assert store.get_results([ending.id, queued.id]) == [ended, JobResult.queued(queued)]
    assert store.get_result(ending.id) == ended


def test_concurrent_finishers_end_each_job_once(store: PostgresJobStore) -> None:
    jobs = [job(f"r{i}", tenant="t3") for i in range(40)]
    store.create_many([(j, None) for j in jobs])
    wins: list[list[bool]] = []
    lock = threading.Lock()

    def finisher() -> None:
        won = store.finish_many([JobResult.ended(j, verdict=verdict(Decision.BLOCK)) for j in jobs])
        with lock:
            wins.append(won)

    threads = [threading.Thread(target=finisher) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Per job, exactly one of the four finishers ended it.
    assert [sum(w[i] for w in wins) for i in range(len(jobs))] == [1] * len(jobs)


def test_human_decision_and_dead_letter_reopen(
    store: PostgresJobStore, transients: MemoryJobTransients
) -> None:
    item = job("h1", tenant="t4")
    store.create(item, b"img")
    store.finish(JobResult.ended(item, verdict=verdict(Decision.REVIEW)))
    human = HumanDecision(
        job_id=item.id,
        review_id="rv-1",
        decision=ReviewDecision.REMOVE,
        reason_code="contraband",
        reviewers=["rv_alice"],
        category_id="contraband",
        policy_id="testworld",
        policy_version=1,
        decided_at=datetime.now(UTC),
    )
    updated = store.set_human(item.id, human)
    assert updated is not None and updated.human == human
    stored = store.get_result(item.id)
    assert stored is not None and stored.human == human
    assert store.set_human("t4/none", human) is None
    with psycopg.connect(str(store.pool.conninfo)) as conn:
        row = conn.execute("SELECT decision FROM jobs WHERE id = %s", (item.id,)).fetchone()
    assert row == ("block",)  # the human's decision stands

    poisoned = job("p1", tenant="t4")
    store.create(poisoned, b"img")
    store.finish(JobResult.ended(poisoned, error=JobError(code="poison_message", message="x")))
    assert poisoned.id not in transients.pending
    assert store.reopen(poisoned.id) == poisoned
    back = store.get_result(poisoned.id)
    assert back is not None and back.status is JobStatus.QUEUED
    assert poisoned.id in transients.pending
    assert store.finish(JobResult.ended(poisoned, verdict=verdict(Decision.ALLOW)))
    assert store.reopen("t4/none") is None


def test_queue_full_leaves_no_record(pool: ConnectionPool) -> None:
    small = PostgresJobStore(pool, MemoryJobTransients(max_queued_bytes=1000))
    with pytest.raises(QueueFull):
        small.create_many(
            [(job("q1", tenant="t5"), b"x" * 600), (job("q2", tenant="t5"), b"x" * 600)]
        )
    assert small.get_jobs(["t5/q1", "t5/q2"]) == [None, None]
    small.create(job("q3", tenant="t5"), b"x" * 10)
    small.delete("t5/q3")
    assert small.get_job("t5/q3") is None and small.queued_bytes() == 0


@pytest.fixture
def own_database(pg_server: PostgresServer) -> Iterator[str]:
    url = pg_server.create_database(template=PG_TEMPLATE)
    try:
        yield url
    finally:
        pg_server.drop_database(database_name(url))


def partitions(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'jobs'::regclass ORDER BY 1"
        ).fetchall()
    return [r[0] for r in rows]


def test_retention_drops_whole_partitions_and_lookups_span_the_rest(own_database: str) -> None:
    with open_pool(DatabaseSettings(), url=own_database) as pool:
        store = PostgresJobStore(pool, MemoryJobTransients(), retention_days=7, days_ahead=2)
        today = datetime.now(UTC).date()
        # Jobs created 9, 5 and 0 days ago (the partitions are made for them first).
        store.maintain(today - timedelta(days=9))
        store.maintain(today - timedelta(days=5))
        ages = {"old": 9, "mid": 5, "new": 0}
        for name, age in ages.items():
            created = datetime.now(UTC) - timedelta(days=age)
            store.create(job(name, tenant="t6", created_at=created))
        assert [j is not None for j in store.get_jobs(["t6/old", "t6/mid", "t6/new"])] == [
            True,
            True,
            True,
        ]
        made, dropped = store.maintain(today)
        first_kept = today - timedelta(days=7)
        assert dropped and all(
            date(int(n[5:9]), int(n[9:11]), int(n[11:13])) < first_kept for n in dropped
        )
        assert f"jobs_{today - timedelta(days=9):%Y%m%d}" in dropped
        assert f"jobs_{today + timedelta(days=2):%Y%m%d}" in partitions(own_database)
        assert made >= 0
        # The old job went with its partition; the others are one lookup away.
        assert [j is not None for j in store.get_jobs(["t6/old", "t6/mid", "t6/new"])] == [
            False,
            True,
            True,
        ]
        assert store.maintain(today)[1] == []  # nothing more to drop


def test_a_missing_partition_is_made_on_the_first_insert(own_database: str) -> None:
    today = datetime.now(UTC).date()
    with psycopg.connect(own_database, autocommit=True) as conn:
        conn.execute(f"DROP TABLE jobs_{today:%Y%m%d}".encode())
    with open_pool(DatabaseSettings(), url=own_database) as pool:
        store = PostgresJobStore(pool, MemoryJobTransients())
        assert store.create(job("m1", tenant="t7"))[1] is True
        assert store.get_job("t7/m1") is not None
    assert f"jobs_{today:%Y%m%d}" in partitions(own_database)


def test_the_pending_index_is_the_unfinished_records(store: PostgresJobStore) -> None:
    """What the lost-message sweep reads when Redis may have lost its own index."""
    jobs = [job(f"s{i}", tenant="t8") for i in range(3)]
    store.create_many([(j, None) for j in jobs])
    with psycopg.connect(str(store.pool.conninfo), autocommit=True) as conn:
        conn.execute(
            "UPDATE jobs SET published_at = now() - interval '1 hour' WHERE id = ANY(%s)",
            ([j.id for j in jobs[:2]],),
        )
    stale = store.stale_pending(60)
    # (the same publish time for both: their order between them is not defined)
    assert sorted(i for i in stale if i.startswith("t8/")) == [jobs[0].id, jobs[1].id]
    age = store.oldest_pending_age()
    assert age is not None and age >= 3600
    store.mark_republished(jobs[0].id)
    store.finish(JobResult.ended(jobs[1], verdict=verdict(Decision.ALLOW)))
    assert [i for i in store.stale_pending(60) if i.startswith("t8/")] == []
    assert jobs[2].id in store.stale_pending(0)


class RecordingCursor(psycopg.Cursor[Any]):
    """Keeps every statement sent with its parameters (to EXPLAIN them afterwards)."""

    sent: list[tuple[str, Any]] = []  # noqa: RUF012 - shared on purpose: one test reads it

    def execute(self, query: Any, params: Any = None, **kw: Any) -> Any:
        text = query if isinstance(query, str) else query.as_string(self.connection)
        RecordingCursor.sent.append((text, params))
        return super().execute(query, params, **kw)


def _scanned(plan: dict[str, Any]) -> list[str]:
    """The relations an executed plan read (scan nodes that ran at least once)."""
    found = []
    if plan.get("Relation Name") and plan.get("Actual Loops", 0) > 0:
        found.append(str(plan["Relation Name"]))
    for child in plan.get("Plans", []):
        found.extend(_scanned(child))
    return found


def test_a_lookup_by_id_reads_one_partition(own_database: str) -> None:
    """Ids are the callers' (no day in them): ``job_days`` names the partition, and every
    statement by id reads that partition's primary key only, whatever the number of live
    partitions (EXPLAIN ANALYZE of the statements the store sends)."""
    with open_pool(DatabaseSettings(), url=own_database) as pool:
        store = PostgresJobStore(pool, MemoryJobTransients(), retention_days=7, days_ahead=3)
        today = datetime.now(UTC).date()
        store.maintain(today - timedelta(days=5))
        store.maintain(today)
        for age in (5, 3, 0):
            store.create(
                job(f"d{age}", tenant="t9", created_at=datetime.now(UTC) - timedelta(days=age))
            )
        live = partitions(own_database)
        assert len(live) >= 8
        old = "t9/d3"
        old_partition = f"jobs_{today - timedelta(days=3):%Y%m%d}"

        def plans(call: Any) -> list[list[str]]:
            """Run ``call`` on a store whose statements are recorded; EXPLAIN ANALYZE each
            statement that names jobs (in a transaction rolled back: UPDATEs run)."""
            RecordingCursor.sent.clear()
            with psycopg.connect(own_database, cursor_factory=RecordingCursor) as rec:
                recording = PostgresJobStore(
                    _OneConnection(rec),
                    MemoryJobTransients(),
                    retention_days=7,  # type: ignore[arg-type]
                )
                call(recording)
                rec.rollback()
            out = []
            with psycopg.connect(own_database) as conn:
                for text, params in RecordingCursor.sent:
                    if "jobs" not in text or text.startswith("SELECT 1"):
                        continue
                    row = conn.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + text, params).fetchone()
                    assert row is not None
                    out.append(_scanned(row[0][0]["Plan"]))
                conn.rollback()
            return out

        for scans in (
            plans(lambda s: s.get_jobs([old])),
            plans(lambda s: s.get_results([old])),
            plans(
                lambda s: s.finish(
                    JobResult.ended(store.get_job(old) or job("x"), verdict=verdict(Decision.ALLOW))
                )
            ),
            plans(lambda s: s.mark_republished(old)),
        ):
            assert scans, "no statement recorded"
            touched = [r for scanned in scans for r in scanned if r.startswith("jobs_")]
            assert set(touched) == {old_partition}, scans
        # A batch over two days reads those two partitions, no other.
        two = plans(lambda s: s.get_jobs(["t9/d5", "t9/d0", "t9/none"]))
        touched = sorted({r for scanned in two for r in scanned if r.startswith("jobs_")})
        assert touched == [f"jobs_{today - timedelta(days=5):%Y%m%d}", f"jobs_{today:%Y%m%d}"]
        found = store.get_jobs(["t9/d5", "t9/d0", "t9/none", "t9/d5"])
        assert [j is not None for j in found] == [True, True, False, True]


class _OneConnection:
    """A pool stand-in that lends one connection (the recording one), without committing."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def connection(self) -> Any:
        import contextlib

        @contextlib.contextmanager
        def lend() -> Iterator[psycopg.Connection[Any]]:
            yield self.conn

        return lend()


def test_a_rescore_marks_the_job_reported_and_counts_its_runs(store: PostgresJobStore) -> None:
    from moderation.core.jobs import JobError, JobResult
    from moderation.core.sources import DecisionSource

    first = job("rescored")
    store.create_many([(first, None)])
    store.finish_many([JobResult.ended(first, error=JobError(code="not_found", message="404"))])
    again = store.rescore(first.id, reported=DecisionSource.USER_REPORT)
    assert again is not None and (again.reported, again.rescores) == (
        DecisionSource.USER_REPORT,
        1,
    )
    stored = store.get_job(first.id)
    assert stored is not None and stored.rescores == 1
    result = store.get_result(first.id)
    assert result is not None and result.status is JobStatus.QUEUED
    third = store.rescore(first.id, reported=DecisionSource.TRUSTED_FLAGGER)
    assert third is not None and third.rescores == 2
    assert store.rescore("acme/never", reported=DecisionSource.USER_REPORT) is None
