"""Gathering single submissions into batch messages.

Upstream services often submit one image per request. Published one message each, every job
would be its own fetch/decode/forward round in the worker. :class:`CoalescingPublisher` holds
small publications for up to ``queue.publish_wait_ms`` and publishes what arrived meanwhile as
one message (at most ``queue.jobs_per_message`` jobs). ``publish`` still returns only once the
message is with the broker (or raises), so the submit use case can roll back a job whose message
was refused; large batches go straight through.
"""

from __future__ import annotations

from collections.abc import Sequence

from moderation.pipeline.batching import MicroBatcher
from moderation.ports import TaskPublisher

__all__ = ["CoalescingPublisher"]


class CoalescingPublisher:
    """A :class:`~moderation.ports.TaskPublisher` that gathers small publications."""

    def __init__(self, inner: TaskPublisher, *, max_jobs: int, max_wait_s: float) -> None:
        self.inner = inner
        self.max_jobs = max_jobs

        def publish(job_ids: list[str]) -> list[None]:
            inner.publish(job_ids)
            return [None] * len(job_ids)

        self._batcher: MicroBatcher[str, None] = MicroBatcher(
            publish, max_batch=max_jobs, max_wait_s=max_wait_s, name="publish-coalescer"
        )

    def publish(
        self,
        job_ids: Sequence[str],
        *,
        retries: int = 0,
        countdown: float = 0.0,
        high: bool = False,
        video: bool = False,
    ) -> None:
        """Publish ``job_ids``; returns once their message is with the broker. Priority jobs
        and videos go at once; the gathered ones are split by tenant lane by the inner
        publisher.

        Raises:
            QueueUnavailable: the broker refused the message.
        """
        if high or video or retries or countdown or len(job_ids) * 2 >= self.max_jobs:
            self.inner.publish(
                job_ids, retries=retries, countdown=countdown, high=high, video=video
            )
            return
        for future in [self._batcher.submit(job_id) for job_id in job_ids]:
            future.result()

    def in_flight(self, max_scan: int = 20_000) -> set[str] | None:
        return self.inner.in_flight(max_scan)

    def queue_depth(self) -> int:
        return self.inner.queue_depth()

    def close(self) -> None:
        self._batcher.close()
