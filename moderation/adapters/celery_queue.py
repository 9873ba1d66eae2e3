"""The Celery/Redis queue behind the :class:`~moderation.ports.TaskPublisher`,
:class:`~moderation.ports.CallbackSender` and :class:`~moderation.ports.BacktestRunner` ports, and
the Celery configuration workers share.

Task names are defined here, once: the API and the workers' lost-message sweep publish
:data:`MODERATE_TASK` with a batch of job ids (a submitted batch becomes one message per
``queue.jobs_per_message`` jobs; videos go to the video lanes, ``queue.video_jobs_per_message``
per message), callbacks go out as :data:`CALLBACK_TASK` on their own queue.
A fanned-out backtest sends one :data:`BACKTEST_TASK` per group of history shards on its own
queue (``embeddings.backtest_queue``) and reads each group's counts from the result backend (the
same Redis; results expire after an hour and are deleted once read). The task functions
themselves live in ``workers/tasks.py``; this module never imports them (messages are sent by
name).

Delivery guarantees: ``acks_late`` + ``reject_on_worker_lost`` (a message is acknowledged only
after its task ran), a broker visibility timeout longer than any task, and a fast sweep of
unacknowledged messages (``unacked_restore_interval``/``_throttle``) so the messages of a
``kill -9``'d worker are redelivered within about ``visibility_timeout_s`` + a few seconds.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from celery import Celery
from kombu import Queue  # type: ignore[attr-defined]

from moderation.adapters.support.fair_lanes import FAIR_CYCLE, declare_lanes, declare_video_cap
from moderation.adapters.support.redis import connect, redis_errors
from moderation.core.backtest import BacktestPartial, BacktestTask
from moderation.core.fairness import Lane, lane_for, lanes
from moderation.core.jobs import tenant_of
from moderation.exceptions import (
    BacktestMismatch,
    BacktestWorkersUnavailable,
    EmbeddingModelMismatch,
    HistoryShardUnreadable,
    ModerationError,
    PolicyError,
    QualityError,
    QueueUnavailable,
)
from moderation.settings import QueueSettings, Settings

__all__ = [
    "BACKTEST_TASK",
    "CALLBACK_TASK",
    "MODERATE_TASK",
    "CeleryBacktests",
    "CeleryQueue",
    "celery_config",
    "consumed_queues",
    "job_lanes",
    "message_job_ids",
    "video_cap",
    "worker_concurrency",
]

#: Processes a batch of jobs: ``moderate(job_ids, retries=0)``. A one-job message's id is the
#: job id.
MODERATE_TASK = "moderation.moderate"
#: Delivers one signed callback: ``deliver_callback(job_id, url, body)``.
CALLBACK_TASK = "moderation.deliver_callback"
#: Scores one group of history shards for a backtest: ``backtest_shards(task, keys)`` returns
#: ``{"partial": BacktestPartial}`` or ``{"error": {"code", "message", "transient"}}``.
BACKTEST_TASK = "moderation.backtest_shards"

log = logging.getLogger(__name__)


def worker_concurrency(q: QueueSettings) -> int:
    """Messages a worker handles at once: for a video worker (``worker_lanes=videos``)
    ``queue.video_concurrency``, else ``queue.concurrency``, by default twice the batch size
    (a deep queue keeps the micro-batcher fed while earlier messages are written back)."""
    if q.worker_lanes == "videos" and q.video_queue_name:
        return q.video_concurrency
    return q.concurrency or 2 * q.batch_size


def video_cap(q: QueueSettings) -> int | None:
    """Video messages a worker of both kinds (``worker_lanes=all``) holds at once:
    ``queue.video_concurrency``, less than its concurrency so that a thread is always left to
    photos; None (no cap) for photo-only and video-only workers and without video lanes."""
    if q.worker_lanes != "all" or not q.video_queue_name:
        return None
    return max(1, min(q.video_concurrency, worker_concurrency(q) - 1))


def job_lanes(settings: Settings) -> list[Lane]:
    """Every lane of job messages: the photo lanes of the configured tenants (normal and
    priority, :func:`~moderation.core.fairness.lanes`), then their video lanes (when
    ``queue.video_queue_name`` is set)."""
    q = settings.queue
    weights = settings.tenant_weights()
    out = lanes(q.queue_name, weights)
    if q.video_queue_name:
        out += lanes(q.video_queue_name, weights, video=True)
    return out


def consumed_queues(settings: Settings) -> list[str]:
    """Every queue a worker consumes (``queue.worker_lanes``): ``all`` and ``photos``: the
    photo lanes, callbacks and backtests; ``all`` and ``videos``: the video lanes (a video
    worker takes nothing else, so its slots stay free for videos)."""
    kind = settings.queue.worker_lanes
    if not settings.queue.video_queue_name:
        kind = "all"
    wanted = [
        lane.name
        for lane in job_lanes(settings)
        if kind == "all" or lane.video == (kind == "videos")
    ]
    if kind == "videos":
        return wanted
    return [*wanted, settings.queue.callback_queue_name, settings.embeddings.backtest_queue]


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery configuration for ``settings`` (producers and workers alike).

    Raises:
        QueueUnavailable: no Redis URL is configured (the embedded server is started by the
            ``moderation demo`` command, never by a worker).
    """
    if not settings.redis_url:
        raise QueueUnavailable(
            "no Redis URL configured: set MODERATION_REDIS_URL (or run `moderation demo`, which "
            "starts an embedded server)"
        )
    q = settings.queue
    concurrency = worker_concurrency(q)
    backtests = settings.embeddings.backtest_queue
    every_lane = job_lanes(settings)
    declare_lanes(every_lane)
    declare_video_cap(video_cap(q))
    return {
        "broker_url": settings.redis_url,
        # Only backtest tasks keep a result (their counts): every other task ignores it.
        "result_backend": settings.redis_url,
        "result_expires": 3600,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {
            "visibility_timeout": q.visibility_timeout_s,
            "unacked_restore_interval": q.unacked_restore_interval_s,
            "unacked_restore_throttle": max(1, round(q.unacked_restore_throttle_s)),
            # Which queue a worker takes its next message from: the tenants' lanes in
            # weighted turns, priority lanes first (moderation.core.fairness).
            "queue_order_strategy": FAIR_CYCLE,
        },
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,  # results live in the job store
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "task_track_started": False,
        "task_default_queue": q.queue_name,
        "task_queues": [
            *(Queue(lane.name) for lane in every_lane),  # type: ignore[no-untyped-call]
            Queue(q.callback_queue_name),  # type: ignore[no-untyped-call]
            Queue(backtests),  # type: ignore[no-untyped-call]
        ],
        "task_routes": {
            CALLBACK_TASK: {"queue": q.callback_queue_name},
            BACKTEST_TASK: {"queue": backtests},
        },
        "worker_pool": "threads",
        "worker_concurrency": concurrency,
        "worker_prefetch_multiplier": q.prefetch_multiplier,
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "broker_heartbeat": 0,
    }


def message_job_ids(raw: bytes | str) -> list[str]:
    """The job ids a stored broker message carries (kombu's JSON envelope around Celery's
    ``[args, kwargs, embed]`` body); empty for anything else."""
    try:
        payload = json.loads(raw)
        message = payload[0] if isinstance(payload, list) else payload
        if message.get("headers", {}).get("task") != MODERATE_TASK:
            return []
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        ids = args[0]
        return [str(i) for i in (ids if isinstance(ids, list) else [ids])]
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return []


class CeleryQueue:
    """Publishes job and callback messages by task name (a producer app: no task modules).

    Raises:
        QueueUnavailable: no Redis URL is configured.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._celery = Celery("moderation-producer", set_as_current=False)
        self._celery.conf.update(celery_config(settings))
        self._redis = connect(settings.redis_url or "")
        self._lock = threading.Lock()
        self._tenants = frozenset(settings.tenant_names())
        self._lanes = [lane.name for lane in job_lanes(settings)]

    # --- TaskPublisher -----------------------------------------------------------------------

    def publish(
        self,
        job_ids: Sequence[str],
        *,
        retries: int = 0,
        countdown: float = 0.0,
        high: bool = False,
        video: bool = False,
    ) -> None:
        """Publish ``job_ids`` as messages of at most ``queue.jobs_per_message`` jobs, each on
        its tenant's lane (:func:`~moderation.core.fairness.lane_for`; ``high``: the
        priority lane; ``video``: the video lanes, ``queue.video_jobs_per_message`` a message).

        Raises:
            QueueUnavailable: the broker refused a message.
        """
        if isinstance(job_ids, str):
            raise TypeError("publish takes a sequence of job ids, not one id")
        q = self.settings.queue
        video = video and bool(q.video_queue_name)
        queue = q.video_queue_name if video and q.video_queue_name else q.queue_name
        by_lane: dict[str, list[str]] = {}
        for job_id in job_ids:
            lane = lane_for(queue, tenant_of(job_id), high=high, known=self._tenants)
            by_lane.setdefault(lane, []).append(job_id)
        step = max(1, q.video_jobs_per_message if video else q.jobs_per_message)
        for lane, ids in by_lane.items():
            for start in range(0, len(ids), step):
                chunk = ids[start : start + step]
                try:
                    self._celery.send_task(
                        MODERATE_TASK,
                        args=[chunk],
                        kwargs={"retries": retries},
                        task_id=chunk[0] if len(chunk) == 1 else f"batch-{uuid.uuid4().hex}",
                        queue=lane,
                        ignore_result=True,
                        countdown=countdown if countdown > 0 else None,
                    )
                except Exception as exc:  # kombu/redis raise many types: "not enqueued"
                    raise QueueUnavailable(f"cannot enqueue jobs {chunk[:3]}...: {exc}") from exc

    def in_flight(self, max_scan: int = 20_000) -> set[str] | None:
        """Ids of the jobs whose messages wait in the queue or are unacknowledged (kombu's
        ``unacked`` hash, which also holds messages with a countdown); None when the queue is
        longer than ``max_scan``.

        Raises:
            QueueUnavailable: Redis is down.
        """
        self.ensure_routes()  # the sweep asks this first: a broker that lost its bindings
        with redis_errors("broker"):
            pipe = self._redis.pipeline(transaction=False)
            for lane in self._lanes:
                pipe.llen(lane)
            if sum(int(n) for n in pipe.execute()) > max_scan:
                return None
            pipe = self._redis.pipeline(transaction=False)
            for lane in self._lanes:
                pipe.lrange(lane, 0, max_scan)
            raw = [item for items in pipe.execute() for item in items]
            raw.extend(self._redis.hvals("unacked"))
        ids: set[str] = set()
        for item in raw:
            ids.update(message_job_ids(item))
        return ids

    def ensure_routes(self) -> bool:
        """Declare the queues again when the broker lost their bindings (a Redis that was
        flushed or replaced by an empty one: kombu routes a message through
        ``_kombu.binding.<exchange>``, and without it every publish is silently dropped, since
        producers declare each queue once per process). True when it had to.

        Raises:
            QueueUnavailable: Redis is down.
        """
        queues = list(self._celery.amqp.queues.values())
        keys = [f"_kombu.binding.{queue.exchange.name}" for queue in queues]
        with redis_errors("broker"):
            if int(self._redis.exists(*keys)) == len(keys):  # EXISTS counts repeats
                return False
            with self._celery.connection_for_write() as conn:
                channel = conn.default_channel
                for queue in queues:
                    queue.bind(channel).declare()
        log.warning("the broker had lost its queue bindings (Redis flushed?): declared again")
        return True

    def queue_depth(self) -> int:
        """Messages waiting in the moderation queue (every lane, photos and videos).

        Raises:
            QueueUnavailable: Redis is down.
        """
        with redis_errors("broker"):
            pipe = self._redis.pipeline(transaction=False)
            for lane in self._lanes:
                pipe.llen(lane)
            return sum(int(n) for n in pipe.execute())

    # --- CallbackSender ----------------------------------------------------------------------

    def send(self, job_id: str, url: str, body: bytes, *, tenant: str = "default") -> None:
        """Schedule delivery of a callback (a task on the callback queue, which the worker moves
        into the callback outbox; the processes send callbacks to the outbox directly).

        Raises:
            QueueUnavailable: the broker refused it.
        """
        try:
            self._celery.send_task(
                CALLBACK_TASK,
                args=[job_id, url, body.decode(), tenant],
                queue=self.settings.queue.callback_queue_name,
                ignore_result=True,
            )
        except Exception as exc:  # kombu/redis raise many types; all mean "not enqueued"
            raise QueueUnavailable(f"cannot schedule the callback of job {job_id}: {exc}") from exc


#: Error codes a backtest task may return, as the exceptions the use case documents.
_BACKTEST_ERRORS: dict[str, type[ModerationError]] = {
    BacktestMismatch.code: BacktestMismatch,
    HistoryShardUnreadable.code: HistoryShardUnreadable,
    EmbeddingModelMismatch.code: EmbeddingModelMismatch,
}


class CeleryBacktests:
    """A :class:`~moderation.ports.BacktestRunner` that fans a backtest's shard groups out to the
    workers as :data:`BACKTEST_TASK` messages, at most ``parallel`` in flight, and yields each
    group's counts as they come back.

    Raises (from the iterator): the error a task returned (``BacktestMismatch``,
    ``HistoryShardUnreadable``, ``PolicyError`` for a candidate the workers cannot
    load, ``QualityError``); ``BacktestWorkersUnavailable`` when a group's counts take longer
    than ``timeout_s`` or a transient error outlived the task's retries; ``QueueUnavailable``
    when the broker refuses a message. Tasks not finished when the iterator stops are revoked.
    """

    where = "workers"

    def __init__(self, settings: Settings, *, parallel: int, timeout_s: float = 300.0) -> None:
        self.settings = settings
        self.parallel = max(1, parallel)
        self.timeout_s = timeout_s
        self._celery = Celery("moderation-backtest", set_as_current=False)
        self._celery.conf.update(celery_config(settings))

    def run(
        self, task: BacktestTask, groups: Sequence[Sequence[str]]
    ) -> Iterator[tuple[int, BacktestPartial]]:
        run_id = uuid.uuid4().hex[:12]
        body = task.to_dict()
        pending: dict[int, Any] = {}
        sent_at: dict[int, float] = {}
        position = 0
        try:
            while position < len(groups) or pending:
                while position < len(groups) and len(pending) < self.parallel:
                    pending[position] = self._send(run_id, position, body, groups[position])
                    sent_at[position] = time.monotonic()
                    position += 1
                index, result = self._next_done(pending, sent_at)
                del pending[index]
                yield index, self._partial(index, result)
        finally:
            for result in pending.values():
                result.revoke()
                result.forget()

    def _send(self, run_id: str, index: int, body: dict[str, Any], keys: Sequence[str]) -> Any:
        try:
            return self._celery.send_task(
                BACKTEST_TASK,
                args=[body, list(keys)],
                task_id=f"backtest-{run_id}-{index}",
                queue=self.settings.embeddings.backtest_queue,
            )
        except Exception as exc:  # kombu/redis raise many types; all mean "not enqueued"
            raise QueueUnavailable(f"cannot send backtest task {index}: {exc}") from exc

    def _next_done(self, pending: dict[int, Any], sent_at: dict[int, float]) -> tuple[int, Any]:
        """The first pending group whose task has ended (polling their states)."""
        while True:
            now = time.monotonic()
            for index, result in pending.items():
                try:
                    ready = result.ready()
                except Exception as exc:  # the result backend (Redis) is unreachable
                    raise QueueUnavailable(f"cannot read backtest results: {exc}") from exc
                if ready:
                    return index, result
                if now - sent_at[index] > self.timeout_s:
                    raise BacktestWorkersUnavailable(
                        f"no worker returned the counts of shard group {index} within "
                        f"{self.timeout_s:.0f} s: are workers running and consuming the "
                        f"{self.settings.embeddings.backtest_queue!r} queue? (or run the "
                        "backtest with --on local)"
                    )
            time.sleep(0.1)

    def _partial(self, index: int, result: Any) -> BacktestPartial:
        try:
            answer = result.get(timeout=self.timeout_s, propagate=False)
        finally:
            result.forget()
        if not isinstance(answer, dict):
            raise QualityError(
                f"backtest task {index} failed: {type(answer).__name__}: {answer}",
                code="backtest_task_failed",
            )
        if "partial" in answer:
            return BacktestPartial.from_dict(answer["partial"])
        error = answer.get("error") or {}
        code = str(error.get("code", "backtest_task_failed"))
        message = f"shard group {index}: {error.get('message', 'failed')}"
        if error.get("transient"):
            raise BacktestWorkersUnavailable(message)
        if code.startswith("policy_"):  # the workers cannot load the candidate
            raise PolicyError(message, code=code)
        raise _BACKTEST_ERRORS.get(code, QualityError)(message, code=code)
