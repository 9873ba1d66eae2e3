"""Job records and results in PostgreSQL (:class:`~moderation.ports.JobStore`), with what a
running job keeps in Redis (inline bytes, queued bytes, the pending index) behind the
:class:`~moderation.ports.JobTransients` port.

Table ``jobs`` (``migrations/0001_jobs.sql``): one row per job, in daily partitions by the UTC
day it was created; the record (``job``) as JSONB; the result of a job not ended as the JSON
text the API answers (``result_text``, read back as is by every status poll:
``migrations/0140_job_result_text.sql``), the final result as JSONB to query (``result``: the
image history, the reviewers' and auditors' queries), with ``status``, ``decision``, ``tenant``
and timestamps as columns to query. Retention drops whole partitions
(:meth:`PostgresJobStore.maintain`, run by the workers' maintenance), never deletes rows.

Every hot-path call is one statement for the whole batch: ``create_many`` one INSERT ... SELECT
FROM unnest(...), ``finish_many`` one UPDATE ... FROM unnest(...); a read of one job is one
statement, of several jobs two (their days, then their rows). Arrays go as binary parameters
(``%(ids)b``): in text format psycopg quotes and escapes every element in Python (an array of
100 job records took 50 ms to dump, against 0.25 ms in binary, on the busy 2-vCPU build
machine; docs/performance.md); in binary it copies their bytes.

Lookups by id. Ids are the callers' (idempotency keys), so the day of a job's partition is
kept beside its id in the unpartitioned table ``job_days`` (``migrations/0030_job_days.sql``),
and every statement that names jobs by id names their partitions too: a lookup is one read of
``job_days``'s primary key and one of the job's partition's, whatever the number of live
partitions (``finish_many`` takes the days from the results' creation times and skips
``job_days``). A create claims the id in ``job_days`` first (``ON CONFLICT (id) DO
NOTHING``): an id is unique across partitions, even
for concurrent creates on either side of midnight.

Crash ordering. ``create_many`` commits the records first, then holds their bytes in Redis; if
that fails (Redis down, the queued-bytes cap) the new records are deleted again and the error
propagates. ``finish_many`` commits the final results first (a result is final once: ``WHERE
finished_at IS NULL``), then releases the jobs' Redis state; a crash in between leaves a
pending entry that the lost-message sweep republishes, and the redelivered task finds the job
ended and releases it (release is idempotent).

Errors: transient psycopg errors become
:class:`~moderation.exceptions.DatabaseUnavailable`; Redis errors ``QueueUnavailable``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
import psycopg.errors
from psycopg import sql
from psycopg_pool import ConnectionPool

from moderation.adapters.postgres.errors import database_errors
from moderation.core.fairness import TenantBacklog
from moderation.core.jobs import Job, JobResult, final_decision, keeps_inline
from moderation.core.review import HumanDecision
from moderation.core.sources import DecisionSource
from moderation.exceptions import DatabaseUnavailable
from moderation.ports import JobTransients, SingleJobOps

__all__ = ["PARTITION_LOCK", "PostgresJobStore"]

log = logging.getLogger(__name__)

#: The advisory lock of partition maintenance (one process at a time makes and drops them).
PARTITION_LOCK = 7_461_032_118_520_418

_CREATE = """
WITH input AS (
    SELECT * FROM unnest(
        %(ids)b::text[], %(days)b::date[], %(tenants)b::text[], %(created)b::timestamptz[],
        %(fingerprints)b::text[], %(jobs)b::text[], %(results)b::text[]
    ) WITH ORDINALITY AS u(id, day, tenant, created_at, fingerprint, job, result_text, n)
),
fresh AS (
    SELECT DISTINCT ON (id) * FROM input ORDER BY id, n
),
claimed AS (
    INSERT INTO job_days (id, day) SELECT id, day FROM fresh
    ON CONFLICT (id) DO NOTHING
    RETURNING id
)
INSERT INTO jobs (id, day, tenant, created_at, fingerprint, job, result_text)
SELECT f.id, f.day, f.tenant, f.created_at, f.fingerprint, f.job::jsonb, f.result_text
FROM fresh f JOIN claimed USING (id)
RETURNING id
"""

# Statements by id name their partitions, so PostgreSQL reads one partition's primary key
# instead of every live partition's. Where the days are parameters (``day = ANY(%(days)s)``:
# the caller knows them, or read them from ``job_days`` just before) the planner prunes the
# other partitions; for one job, ``day = (SELECT ... FROM job_days ...)`` is an init plan whose
# value prunes them when the statement starts. (An array from a sub-select,
# ``day = ANY(ARRAY(SELECT ...))``, prunes nothing: PostgreSQL 16 prunes on a scalar
# parameter or a constant array only.)

_FINISH = """
UPDATE jobs AS j
SET status = u.status, decision = u.decision, result = u.result::jsonb, result_text = NULL,
    finished_at = now()
FROM unnest(%(ids)b::text[], %(statuses)b::text[], %(decisions)b::text[], %(results)b::text[])
    AS u(id, status, decision, result)
WHERE j.id = u.id AND j.finished_at IS NULL
"""
_FINISH_DAYS = "AND j.day = ANY(%(days)b::date[])\n"

_DELETE = """
WITH gone AS (DELETE FROM job_days WHERE id = ANY(%b) RETURNING id, day)
DELETE FROM jobs j USING gone WHERE j.id = gone.id AND j.day = gone.day
"""

_ONE_DAY = "day = (SELECT d.day FROM job_days d WHERE d.id = %(id)s)"

_JOB_TEXT = sql.SQL("job::text")
#: The result as the API answers it: a job not ended, its text as written (``result_text``,
#: 0140); an ended job (or one written before 0140), its JSONB as text.
_RESULT_TEXT = sql.SQL("coalesce(result_text, result::text)")


def _day(moment: datetime) -> date:
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC).date()


class PostgresJobStore(SingleJobOps):
    """The :class:`~moderation.ports.JobStore` on PostgreSQL (records and results) and
    ``transients`` (bytes and pending index of running jobs). Thread-safe (the pool)."""

    def __init__(
        self,
        pool: ConnectionPool,
        transients: JobTransients,
        *,
        retention_days: int = 7,
        days_ahead: int = 3,
    ) -> None:
        self.pool = pool
        self.transients = transients
        self.retention_days = retention_days
        self.days_ahead = days_ahead

    # --- jobs --------------------------------------------------------------------------------

    def create_many(
        self, jobs: Sequence[tuple[Job, bytes | None]], *, tenant_cap: int | None = None
    ) -> list[tuple[Job, bool]]:
        """Store new jobs unless their ids exist (in any partition), in one statement, then
        hold their bytes in the transient store.

        Raises:
            TenantQueueFull: over the tenant's share of the queued bytes (``tenant_cap``; the
                new records are removed again).
            QueueFull: over the queued-bytes cap (likewise).
            QueueUnavailable: Redis is down (likewise).
            DatabaseUnavailable: PostgreSQL is down.
        """
        if not jobs:
            return []
        params: dict[str, list[Any]] = {
            "ids": [],
            "days": [],
            "tenants": [],
            "created": [],
            "fingerprints": [],
            "jobs": [],
            "results": [],
        }
        for job, _ in jobs:
            params["ids"].append(job.id)
            params["days"].append(_day(job.created_at))
            params["tenants"].append(job.tenant)
            params["created"].append(job.created_at)
            params["fingerprints"].append(job.fingerprint)
            params["jobs"].append(job.model_dump_json())
            params["results"].append(JobResult.queued(job).model_dump_json())
        created_ids = self._insert(params)
        out: list[tuple[Job, bool]] = []
        fresh: list[tuple[Job, bytes | None]] = []
        for job, inline in jobs:
            if job.id in created_ids:
                created_ids.discard(job.id)  # a second copy of the id in the batch: duplicate
                fresh.append((job, inline))
                out.append((job, True))
            else:
                out.append((job, False))
        try:
            self.transients.hold_many(fresh, tenant_cap=tenant_cap)
        except BaseException:
            self._delete([job.id for job, _ in fresh])
            raise
        duplicates = [job.id for job, created in out if not created]
        if duplicates:
            existing = dict(zip(duplicates, self.get_jobs(duplicates), strict=True))
            out = [(existing.get(job.id) or job, False) if not c else (job, c) for job, c in out]
        return out

    def _insert(self, params: dict[str, list[Any]]) -> set[str]:
        for attempt in (1, 2):
            try:
                with database_errors("job store"), self.pool.connection() as conn:
                    return {row[0] for row in conn.execute(_CREATE, params).fetchall()}
            except psycopg.errors.CheckViolation as exc:
                # No partition for a day (maintenance has not run since): make them, retry once.
                if attempt == 2 or "no partition" not in str(exc):
                    raise
                self.maintain()
        raise AssertionError("unreachable")

    def delete(self, job_id: str) -> None:
        """Remove every trace of a job (rollback when it could not be published)."""
        jobs = self.get_jobs([job_id])
        self._delete([job_id])
        job = jobs[0]
        inline_key = job.image.inline_key if job is not None and job.image.inline else None
        self.transients.drop(job_id, inline_key)

    def _delete(self, job_ids: Sequence[str]) -> None:
        if job_ids:
            with database_errors("job store"), self.pool.connection() as conn:
                conn.execute(_DELETE, (list(job_ids),))

    def _column(self, column: sql.SQL, job_ids: Sequence[str]) -> dict[str, str]:
        """``column`` (a text expression: :data:`_JOB_TEXT`, :data:`_RESULT_TEXT`) by job id:
        one job in one statement (its day an init plan); several in two, their days from
        ``job_days`` first, then their partitions only."""
        ids = list(dict.fromkeys(job_ids))
        if not ids:
            return {}
        name = column
        with database_errors("job store"), self.pool.connection() as conn:
            if len(ids) == 1:
                query = sql.SQL("SELECT id, {} FROM jobs WHERE id = %(id)s AND {}").format(
                    name, sql.SQL(_ONE_DAY)
                )
                rows = conn.execute(query, {"id": ids[0]}).fetchall()
            else:
                days = [
                    r[0]
                    for r in conn.execute(
                        "SELECT DISTINCT day FROM job_days WHERE id = ANY(%b)", (ids,)
                    ).fetchall()
                ]
                if not days:
                    return {}
                query = sql.SQL(
                    "SELECT id, {} FROM jobs WHERE id = ANY(%(ids)b) "
                    "AND day = ANY(%(days)b::date[])"
                ).format(name)
                rows = conn.execute(query, {"ids": ids, "days": days}).fetchall()
        return {str(i): str(v) for i, v in rows}

    def get_jobs(self, job_ids: Sequence[str]) -> list[Job | None]:
        found = self._column(_JOB_TEXT, job_ids)
        return [Job.model_validate_json(found[i]) if i in found else None for i in job_ids]

    def queued_bytes(self, tenant: str | None = None) -> int:
        return self.transients.queued_bytes(tenant)

    def backlog(self, tenants: Sequence[str]) -> dict[str, TenantBacklog]:
        """Per tenant: jobs that have not ended and the oldest one's creation time (kept beside
        the queued bytes in the transient store: what the per-tenant metrics read)."""
        return self.transients.backlog(tenants)

    def inline_bytes_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return self.transients.inline_bytes_many(keys)

    def keep_inline(self, key: str, ttl_s: int) -> None:
        self.transients.keep_inline(key, ttl_s)

    # --- results -----------------------------------------------------------------------------

    def get_results(self, job_ids: Sequence[str]) -> list[JobResult | None]:
        found = self._column(_RESULT_TEXT, job_ids)
        return [JobResult.model_validate_json(found[i]) if i in found else None for i in job_ids]

    def result_json(self, job_ids: Sequence[str]) -> list[bytes | None]:
        found = self._column(_RESULT_TEXT, job_ids)
        return [found[i].encode() if i in found else None for i in job_ids]

    def finish_many(self, results: Sequence[JobResult]) -> list[bool]:
        """Write final results unless their jobs already have one, in one statement, then
        release the jobs' transient state.

        Returns:
            Per result: True when this call ended the job; False when it had already ended
            (or is unknown).

        Raises:
            DatabaseUnavailable: PostgreSQL is down (nothing written).
            QueueUnavailable: Redis is down (the results are written; a retry releases).
        """
        if not results:
            return []
        params: dict[str, list[Any]] = {"ids": [], "statuses": [], "decisions": [], "results": []}
        for result in results:
            decision = final_decision(result)
            params["ids"].append(result.job_id)
            params["statuses"].append(result.status.value)
            params["decisions"].append(decision.value if decision is not None else None)
            params["results"].append(result.model_dump_json())
        # Every result made by JobResult.ended carries its job's creation time: the day of its
        # partition. (One without it, which no caller makes, is looked for in every partition.)
        days = {_day(r.created_at) for r in results if r.created_at is not None}
        query = _FINISH
        if len(days) and all(r.created_at is not None for r in results):
            query += _FINISH_DAYS
            params["days"] = sorted(days)
        with database_errors("job store"), self.pool.connection() as conn:
            won = {row[0] for row in conn.execute(query + "RETURNING j.id", params).fetchall()}
        out: list[bool] = []
        released: list[tuple[str, bool]] = []
        for result in results:
            if result.job_id in won:
                won.discard(result.job_id)
                out.append(True)
                released.append((result.job_id, not keeps_inline(result)))
            else:
                out.append(False)
                released.append((result.job_id, False))  # ended before: its bytes stay as were
        self.transients.release_many(released)
        return out

    def set_human(self, job_id: str, human: HumanDecision) -> JobResult | None:
        """Attach a human decision to a job's result (replacing an earlier one).

        Raises:
            DatabaseUnavailable: PostgreSQL is down.
        """
        with database_errors("job store"), self.pool.connection() as conn, conn.transaction():
            row = conn.execute(
                "SELECT coalesce(result_text, result::text) FROM jobs WHERE id = %(id)s "
                "AND day = (SELECT d.day FROM job_days d WHERE d.id = %(id)s) FOR UPDATE",
                {"id": job_id},
            ).fetchone()
            if row is None:
                return None
            updated = JobResult.model_validate_json(row[0]).model_copy(update={"human": human})
            decision = final_decision(updated)
            conn.execute(
                "UPDATE jobs SET result = %(result)s::jsonb, result_text = NULL, "
                "decision = %(decision)s "
                "WHERE id = %(id)s AND day = (SELECT d.day FROM job_days d WHERE d.id = %(id)s)",
                {
                    "result": updated.model_dump_json(),
                    "decision": decision.value if decision is not None else None,
                    "id": job_id,
                },
            )
        return updated

    def reopen(self, job_id: str) -> Job | None:
        """Make an ended job runnable again (a dead letter taken back): its result back to
        queued, back in the pending index. None for an unknown job."""
        with database_errors("job store"), self.pool.connection() as conn:
            row = conn.execute(
                "SELECT job::text FROM jobs "
                "WHERE id = %(id)s AND day = (SELECT d.day FROM job_days d WHERE d.id = %(id)s)",
                {"id": job_id},
            ).fetchone()
            if row is None:
                return None
            job = Job.model_validate_json(row[0])
            conn.execute(
                "UPDATE jobs SET status = 'queued', decision = NULL, finished_at = NULL, "
                "published_at = now(), result = NULL, result_text = %(result)s WHERE id = %(id)s "
                "AND day = (SELECT d.day FROM job_days d WHERE d.id = %(id)s)",
                {"result": JobResult.queued(job).model_dump_json(), "id": job_id},
            )
        self.transients.hold_many([(job, None)])
        return job

    def rescore(self, job_id: str, *, reported: DecisionSource) -> Job | None:
        """Run the ended job ``job_id`` again, marked ``reported`` (see
        :class:`~moderation.ports.JobRescorer`): the job's record says so, its result is back to
        queued and it is back in the pending index (the lost-message sweep republishes it if
        the caller dies before publishing). None for an unknown job."""
        with database_errors("job store"), self.pool.connection() as conn:
            row = conn.execute(
                "SELECT job::text FROM jobs "
                "WHERE id = %(id)s AND day = (SELECT d.day FROM job_days d WHERE d.id = %(id)s)",
                {"id": job_id},
            ).fetchone()
            if row is None:
                return None
            job = Job.model_validate_json(row[0])
            job = job.model_copy(update={"reported": reported, "rescores": job.rescores + 1})
            conn.execute(
                "UPDATE jobs SET job = %(job)s::jsonb, status = 'queued', decision = NULL, "
                "finished_at = NULL, published_at = now(), result = NULL, result_text = %(result)s "
                "WHERE id = %(id)s AND day = (SELECT d.day FROM job_days d WHERE d.id = %(id)s)",
                {
                    "job": job.model_dump_json(),
                    "result": JobResult.queued(job).model_dump_json(),
                    "id": job_id,
                },
            )
        self.transients.hold_many([(job, None)])
        return job

    def outcomes(self, count: int = 100_000) -> list[tuple[str, str]]:
        """(job id, status) per ended job, in the order they ended."""
        with database_errors("job store"), self.pool.connection() as conn:
            rows = conn.execute(
                "SELECT id, status FROM jobs WHERE finished_at IS NOT NULL "
                "ORDER BY finished_at, id LIMIT %s",
                (count,),
            ).fetchall()
        return [(str(i), str(s)) for i, s in rows]

    # --- the pending index (jobs not ended, by last publish) -------------------------------

    def stale_pending(self, older_than_s: float, limit: int = 1000) -> list[str]:
        """Jobs published more than ``older_than_s`` ago (the server's clock) that have not
        ended, oldest first (the partial index ``jobs_unfinished``)."""
        with database_errors("job store"), self.pool.connection() as conn:
            rows = conn.execute(
                "SELECT id FROM jobs WHERE finished_at IS NULL "
                "AND published_at < now() - make_interval(secs => %s) "
                "ORDER BY published_at LIMIT %s",
                (older_than_s, limit),
            ).fetchall()
        return [str(r[0]) for r in rows]

    def oldest_pending_age(self) -> float | None:
        with database_errors("job store"), self.pool.connection() as conn:
            row = conn.execute(
                "SELECT extract(epoch FROM now() - min(published_at))::float8 FROM jobs "
                "WHERE finished_at IS NULL"
            ).fetchone()
        return max(0.0, float(row[0])) if row and row[0] is not None else None

    def mark_republished(self, job_id: str) -> None:
        with database_errors("job store"), self.pool.connection() as conn:
            conn.execute(
                "UPDATE jobs SET published_at = now() "
                "WHERE id = %(id)s AND finished_at IS NULL "
                "AND day = (SELECT d.day FROM job_days d WHERE d.id = %(id)s)",
                {"id": job_id},
            )

    def forget_pending(self, job_id: str) -> None:
        """Nothing to forget: a job is pending exactly while its record has not ended."""

    def ping(self) -> bool:
        try:
            with database_errors("job store"), self.pool.connection() as conn:
                conn.execute("SELECT 1")
        except DatabaseUnavailable:
            return False
        return self.transients.ping()

    # --- partitions --------------------------------------------------------------------------

    def maintain(self, today: date | None = None) -> tuple[int, list[str]]:
        """Make the daily partitions from yesterday to ``days_ahead`` days ahead, and drop
        those older than ``retention_days`` (whole tables: no row-by-row delete, no bloat).
        One process at a time (an advisory lock). A table too busy to drop a partition within
        ``lock_timeout`` (5 s) raises ``DatabaseUnavailable``; the next run drops it.

        Returns:
            How many partitions were made, and the names of those dropped.

        Raises:
            DatabaseUnavailable: PostgreSQL is down.
        """
        today = today or datetime.now(UTC).date()
        with database_errors("job store"), self.pool.connection() as conn, conn.transaction():
            conn.execute("SET LOCAL lock_timeout = '5s'")
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (PARTITION_LOCK,))
            made_row = conn.execute(
                "SELECT moderation_make_job_partitions(%s, %s)",
                (today - timedelta(days=1), today + timedelta(days=self.days_ahead)),
            ).fetchone()
            dropped = [
                str(r[0])
                for r in conn.execute(
                    "SELECT * FROM moderation_drop_job_partitions(%s)",
                    (today - timedelta(days=self.retention_days),),
                ).fetchall()
            ]
        if dropped:
            log.info("job records: dropped partitions %s (retention)", ", ".join(dropped))
        return (int(made_row[0]) if made_row else 0), dropped
