"""Prometheus metrics of the pipeline, on an explicit registry, with bounded labels only.

Labels are policy ids, category ids, decisions, outcome kinds, stages, error codes, tenant names,
route templates, HTTP methods and status classes: all come from configuration, the route table
or the exception tree, never from a job, URL, image or client.

Multiprocess mode (API + several worker processes): set ``PROMETHEUS_MULTIPROC_DIR`` to an empty
directory shared by every process *before* the first call to :func:`metrics` in each process; the
API's ``/metrics`` then aggregates every process's values (:func:`render`). Nothing is created at
import time.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

__all__ = [
    "PipelineMetrics",
    "ReviewQueueGauges",
    "TenantBacklogGauges",
    "metrics",
    "multiprocess_dir",
    "render",
    "render_appeal_gauges",
    "render_exchange_gauges",
    "render_review_gauges",
    "render_tenant_backlog",
    "status_class",
]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 256)
_REVIEW_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class PipelineMetrics:
    """Every pipeline metric. One instance per process (see :func:`metrics`)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.jobs = Counter(
            "moderation_jobs_total",
            "Jobs that ended, by outcome (verdict / error / dead_letter).",
            ["outcome"],
            registry=registry,
        )
        self.submitted = Counter(
            "moderation_jobs_submitted_total",
            "Jobs accepted by the API (new, not duplicates), per tenant.",
            ["tenant"],
            registry=registry,
        )
        self.rejected = Counter(
            "moderation_jobs_rejected_total",
            "Submissions refused by the API, per tenant and error code (rate_limited, "
            "quota_exceeded, queue_full, id_conflict, inline_too_large, ...).",
            ["tenant", "code"],
            registry=registry,
        )
        self.tenant_jobs = Counter(
            "moderation_tenant_jobs_total",
            "Jobs that ended, per tenant and outcome (verdict / error / dead_letter).",
            ["tenant", "outcome"],
            registry=registry,
        )
        # --- hash lists that do not flood ------------------------------------------------------
        self.bank_entries_quarantined = Counter(
            "moderation_bank_entries_quarantined_total",
            "Bank entries the flood rule quarantined (their matches go to review), per bank.",
            ["bank"],
            registry=registry,
        )
        self.bank_entry_states = Counter(
            "moderation_bank_entry_state_changes_total",
            "People's acts on bank entries (confirmed, disabled, quarantined), per bank.",
            ["bank", "state"],
            registry=registry,
        )
        # --- the HTTP edge --------------------------------------------------------------------
        self.http_requests = Counter(
            "moderation_http_requests_total",
            "HTTP requests per route template, method and status class (2xx, 4xx, 5xx).",
            ["route", "method", "status"],
            registry=registry,
        )
        self.http_seconds = Histogram(
            "moderation_http_request_seconds",
            "HTTP request duration per route template and method.",
            ["route", "method"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.login_failures = Counter(
            "moderation_login_failures_total",
            "Failed reviewer sign-ins by reason (bad_credentials; throttled: refused without "
            "checking the password during a delay or lockout; busy: refused unchecked because "
            "every password-check slot was taken).",
            ["reason"],
            registry=registry,
        )
        self.login_lockouts = Counter(
            "moderation_login_lockouts_total",
            "Sign-in lockouts started, by scope (pair: one account from one address / address).",
            ["scope"],
            registry=registry,
        )
        self.decisions = Counter(
            "moderation_decisions_total",
            "Verdicts by deciding policy, category and decision.",
            ["policy", "category", "decision"],
            registry=registry,
        )
        self.signal_skips = Counter(
            "moderation_signal_skips_total",
            "Images a signal did not run on, by signal and reason (settled: a cheaper signal's "
            "category had already blocked; cost order, docs/signals.md).",
            ["signal", "reason"],
            registry=registry,
        )
        self.errors = Counter(
            "moderation_errors_total",
            "Errors by stable error code.",
            ["code"],
            registry=registry,
        )
        self.retries = Counter(
            "moderation_retries_total",
            "Transient-error retries, by error code.",
            ["code"],
            registry=registry,
        )
        self.latency = Histogram(
            "moderation_stage_seconds",
            "Latency per pipeline stage; 'total' is end to end (submit to result).",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "moderation_batch_size",
            "Images per forward pass of the image encoder.",
            buckets=_BATCH_BUCKETS,
            registry=registry,
        )
        self.callbacks = Counter(
            "moderation_callbacks_total",
            "Callback deliveries by result (ok / retry / failed).",
            ["result"],
            registry=registry,
        )
        self.callbacks_delivering = Gauge(
            "moderation_callbacks_delivering",
            "Callback attempts running now, by tenant (each worker process runs at most "
            "queue.callback_tenant_slots per tenant).",
            ["tenant"],
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.callback_outbox_waiting = Gauge(
            "moderation_callback_outbox_waiting",
            "Callbacks in the outbox (due, waiting for a retry, or being delivered), all tenants.",
            multiprocess_mode="livemax",
            registry=registry,
        )
        self.policy_reloads = Counter(
            "moderation_policy_reloads_total",
            "Hot reloads of the compiled policy set.",
            registry=registry,
        )
        # --- the audit spool (per process: livemax over the live processes of a host) ------------
        self.audit_spool_age = Gauge(
            "moderation_audit_spool_oldest_age_seconds",
            "Seconds the oldest audit record not yet uploaded to the audit store has waited in "
            "this process's spool (0: drained). Growing: the store (S3) is unreachable.",
            multiprocess_mode="livemax",
            registry=registry,
        )
        self.audit_spool_bytes = Gauge(
            "moderation_audit_spool_bytes",
            "Bytes of audit records spooled on local disk and not uploaded yet.",
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.audit_upload_failing = Gauge(
            "moderation_audit_upload_failing",
            "1 while the last upload of an audit segment failed (records stay in the spool).",
            multiprocess_mode="livemax",
            registry=registry,
        )
        # --- policy quality ---------------------------------------------------------------------
        self.shadow_decisions = Counter(
            "moderation_shadow_decisions_total",
            "Shadow policy verdicts (never acted on) by policy, shadow version, the live "
            "version's decision for that policy and the shadow's ('none': not live yet).",
            ["policy", "version", "live", "shadow"],
            registry=registry,
        )
        # --- embedding history (history, issue 18) ---------------------------------------------
        self.embeddings_stored = Counter(
            "moderation_embeddings_stored_total",
            "Decided items' embeddings for policy backtests, by what became of them: buffered "
            "(taken into the worker's buffer), written (in a shard in the object store), "
            "dropped (the buffer was full: the store is down or slow), failed (a shard could "
            "not be written and was given up, or was still buffered at shutdown). A worker "
            "crash loses what was buffered and not written.",
            ["result"],
            registry=registry,
        )
        self.embeddings_buffered = Gauge(
            "moderation_embeddings_buffered",
            "Embeddings held in workers' buffers, not yet in a shard (what a crash would lose).",
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.history_shards_written = Counter(
            "moderation_history_shards_written_total",
            "Embedding-history shards written to the object store.",
            registry=registry,
        )
        self.history_shard_bytes = Counter(
            "moderation_history_shard_bytes_total",
            "Bytes of embedding-history shards written to the object store.",
            registry=registry,
        )
        self.history_days_dropped = Counter(
            "moderation_history_days_dropped_total",
            "Days of embedding history deleted by the retention sweep.",
            registry=registry,
        )
        # --- human review ---------------------------------------------------------------------
        self.review_decisions = Counter(
            "moderation_review_decisions_total",
            "Human review decisions by policy and decision (allow / remove / escalate final; "
            "pending_second: a critical removal waiting for its second reviewer; escalated: "
            "moved to the escalation queue; undone: taken back).",
            ["policy", "decision"],
            registry=registry,
        )
        self.appeals_filed = Counter(
            "moderation_appeals_filed_total",
            "Appeals filed against decisions that restricted content, per policy.",
            ["policy"],
            registry=registry,
        )
        self.appeal_outcomes = Counter(
            "moderation_appeal_outcomes_total",
            "Appeals decided, per policy and outcome (uphold / overturn).",
            ["policy", "outcome"],
            registry=registry,
        )
        self.strikes = Counter(
            "moderation_strikes_total",
            "Strikes recorded against uploaders, per policy and source (automated / human).",
            ["policy", "source"],
            registry=registry,
        )
        self.uploader_actions = Counter(
            "moderation_uploader_actions_total",
            "Uploader action changes, per new action (none / warn / restrict / suspend) and "
            "reason (strike / overturn).",
            ["action", "reason"],
            registry=registry,
        )
        self.review_handling = Histogram(
            "moderation_review_handling_seconds",
            "Seconds from claiming a review item to deciding it (reviewer throughput).",
            ["policy"],
            buckets=_REVIEW_BUCKETS,
            registry=registry,
        )
        self.review_handoffs = Counter(
            "moderation_review_handoffs_total",
            "Attempts to hand a final human decision on (job result, audit, callback) by outcome: "
            "delivered, or failed (kept in the outbox and tried again with backoff).",
            ["outcome"],
            registry=registry,
        )
        self.review_breaks = Counter(
            "moderation_review_break_prompts_total",
            "Break prompts answered by reviewers, per trigger (critical / time) and answer "
            "(taken / dismissed).",
            ["trigger", "answer"],
            registry=registry,
        )
        self.review_admin_actions = Counter(
            "moderation_review_admin_actions_total",
            "Admin actions on the review queue (review_requeued / review_released / "
            "review_reassigned / outbox_redelivered), each also audited.",
            ["action"],
            registry=registry,
        )


_lock = threading.Lock()
_instance: PipelineMetrics | None = None


def metrics() -> PipelineMetrics:
    """This process's metrics, created on first use (multiprocess mode if the env says so)."""
    global _instance
    with _lock:
        if _instance is None:
            _instance = PipelineMetrics(CollectorRegistry(auto_describe=True))
        return _instance


def status_class(status: int) -> str:
    """``2xx``, ``4xx``, ... (a bounded label)."""
    return f"{status // 100}xx" if 100 <= status < 600 else "other"


class _ScrapeGauges(Collector):
    """Gauges read at scrape time from Redis (None: unknown, not exported)."""

    def __init__(self, values: dict[str, tuple[str, float | None]]) -> None:
        self.values = values

    def collect(self) -> Iterator[Metric]:
        for name, (doc, value) in self.values.items():
            if value is not None:
                family = GaugeMetricFamily(name, doc)
                family.add_metric([], float(value))
                yield family


def _host_registry(path: str | None) -> CollectorRegistry:
    """Every process of this host in multiprocess mode (``path`` or PROMETHEUS_MULTIPROC_DIR),
    else this process's own registry."""
    path = path or multiprocess_dir()
    if not path:
        return metrics().registry
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
    return registry


def serve(port: int, addr: str = "0.0.0.0") -> None:  # noqa: S104 - scraped from other hosts
    """Serve this host's metrics (all processes in multiprocess mode) on ``addr:port`` from a
    daemon thread: how a worker on another host than the API is scraped."""
    from prometheus_client import start_http_server

    start_http_server(port, addr=addr, registry=_host_registry(None))


def render(
    *,
    queue_depth: int | None = None,
    workers_alive: int | None = None,
    queued_bytes: int | None = None,
    oldest_pending_age_s: float | None = None,
    dead_letters: int | None = None,
    path: str | None = None,
) -> tuple[bytes, str]:
    """The exposition text (aggregated over processes in multiprocess mode) and content type,
    plus the gauges read from Redis at scrape time: ``moderation_queue_depth``,
    ``moderation_workers_alive`` (workers with a live heartbeat: alert when it is 0),
    ``moderation_queued_bytes``, ``moderation_queue_oldest_age_seconds`` (the backlog's age) and
    ``moderation_dead_letters``.

    ``path``: a multiprocess directory to aggregate (default: ``PROMETHEUS_MULTIPROC_DIR``).
    """
    body = generate_latest(_host_registry(path))
    gauges = {
        "moderation_queue_depth": ("Messages waiting in the moderation queue.", queue_depth),
        "moderation_workers_alive": (
            "Workers with a live heartbeat (seen by Redis within its TTL). Alert when 0.",
            workers_alive,
        ),
        "moderation_queued_bytes": (
            "Bytes of jobs waiting for a worker (inline images + records); new jobs are "
            "refused (503 queue_full) at queue.max_queued_bytes.",
            queued_bytes,
        ),
        "moderation_queue_oldest_age_seconds": (
            "Seconds since the oldest job that has not ended was published (0: none waiting). "
            "The backlog's age: alert when it grows.",
            0.0
            if oldest_pending_age_s is None and queue_depth is not None
            else oldest_pending_age_s,
        ),
        "moderation_dead_letters": (
            "Jobs on the dead-letter list (they crashed workers; `moderation dlq`).",
            dead_letters,
        ),
    }
    if any(v is not None for _, v in gauges.values()):
        extra = CollectorRegistry()
        extra.register(
            _ScrapeGauges({k: (d, None if v is None else float(v)) for k, (d, v) in gauges.items()})
        )
        body += generate_latest(extra)
    return body, CONTENT_TYPE_LATEST


# --- review queue gauges ---------------------------------------------


class ReviewQueueGauges(Collector):
    """Review queue depth and oldest open item age per policy, read at scrape time.

    ``read`` returns ``(policy, waiting, in_review, oldest_age_s)`` per policy, e.g. from
    ``RedisReviewQueue.stats()``; the oldest age is the SLA signal.
    """

    def __init__(self, read: Callable[[], Iterable[tuple[str, int, int, float | None]]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "moderation_review_queue_depth",
            "Review items waiting or in review, per policy.",
            labels=["policy", "state"],
        )
        oldest = GaugeMetricFamily(
            "moderation_review_oldest_age_seconds",
            "Age of the oldest review item not yet decided, per policy (SLA signal).",
            labels=["policy"],
        )
        for policy, waiting, in_review, oldest_age in self._read():
            depth.add_metric([policy, "waiting"], float(waiting))
            depth.add_metric([policy, "in_review"], float(in_review))
            oldest.add_metric([policy], float(oldest_age or 0.0))
        yield depth
        yield oldest


def render_review_gauges(
    read: Callable[[], Iterable[tuple[str, int, int, float | None]]],
) -> bytes:
    """Exposition text of :class:`ReviewQueueGauges` (append it to :func:`render`'s body)."""
    registry = CollectorRegistry()
    registry.register(ReviewQueueGauges(read))
    return generate_latest(registry)


def render_appeal_gauges(open_appeals: int, oldest_age_s: float | None) -> bytes:
    """Exposition text of the appeal backlog, read at scrape time (append it to
    :func:`render`'s body): open appeals and the oldest one's age (0: none open)."""
    registry = CollectorRegistry()
    Gauge(
        "moderation_appeals_open",
        "Appeals waiting for their reviewer.",
        registry=registry,
    ).set(open_appeals)
    Gauge(
        "moderation_appeal_oldest_age_seconds",
        "Age of the oldest appeal not yet decided (the complaint-handling SLA signal).",
        registry=registry,
    ).set(oldest_age_s or 0.0)
    return generate_latest(registry)


def render_exchange_gauges(rows: Iterable[tuple[str, float | None, int, int, float]]) -> bytes:
    """Exposition text of the synced banks' health, read at scrape time (append it to
    :func:`render`'s body). ``rows``: (exchange: its ``banks.exchanges`` name, seconds since its
    last successful sync or None when it never succeeded (reported as +Inf, so a stale-sync
    alert covers it), failed syncs since then, failed syncs ever, its sync interval)."""
    registry = CollectorRegistry()
    age = Gauge(
        "moderation_exchange_sync_last_success_age_seconds",
        "Seconds since the synced bank's last successful sync from its exchange (+Inf: never).",
        ["exchange"],
        registry=registry,
    )
    failures = Gauge(
        "moderation_exchange_sync_failures",
        "Failed syncs of the bank since its last successful one (fetch or apply errors).",
        ["exchange"],
        registry=registry,
    )
    errors = Gauge(
        "moderation_exchange_sync_errors",
        "Failed syncs of the bank, ever (kept in the database: it only grows).",
        ["exchange"],
        registry=registry,
    )
    interval = Gauge(
        "moderation_exchange_sync_interval_seconds",
        "The bank's configured sync interval (banks.exchanges.<name>.interval_s).",
        ["exchange"],
        registry=registry,
    )
    for name, age_s, failed, total, every_s in rows:
        age.labels(exchange=name).set(float("inf") if age_s is None else age_s)
        failures.labels(exchange=name).set(failed)
        errors.labels(exchange=name).set(total)
        interval.labels(exchange=name).set(every_s)
    return generate_latest(registry)


# --- per-tenant backlog gauges ---------------------------------------


class TenantBacklogGauges(Collector):
    """Per-tenant backlog, read at scrape time: jobs that have not ended, the oldest one's age
    and the bytes they hold. Labels: only the configured tenants (``Settings.tenant_names``).

    ``read`` returns ``(tenant, depth, oldest_age_s, queued_bytes)`` per tenant.
    """

    def __init__(self, read: Callable[[], Iterable[tuple[str, int, float, int]]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "moderation_tenant_backlog_jobs",
            "Jobs of a tenant that have not ended (queued or running).",
            labels=["tenant"],
        )
        oldest = GaugeMetricFamily(
            "moderation_tenant_backlog_oldest_age_seconds",
            "Seconds since the oldest job of a tenant that has not ended was created (0: "
            "none). Fair scheduling keeps this low for every tenant while one has a burst.",
            labels=["tenant"],
        )
        queued = GaugeMetricFamily(
            "moderation_tenant_queued_bytes",
            "Bytes a tenant's jobs that have not ended hold; over its share new jobs get 429 "
            "tenant_queue_full.",
            labels=["tenant"],
        )
        for tenant, jobs, age, size in self._read():
            depth.add_metric([tenant], float(jobs))
            oldest.add_metric([tenant], float(age))
            queued.add_metric([tenant], float(size))
        yield depth
        yield oldest
        yield queued


def render_tenant_backlog(read: Callable[[], Iterable[tuple[str, int, float, int]]]) -> bytes:
    """Exposition text of :class:`TenantBacklogGauges` (append it to :func:`render`'s body)."""
    registry = CollectorRegistry()
    registry.register(TenantBacklogGauges(read))
    return generate_latest(registry)
