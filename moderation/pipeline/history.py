"""Keeping decided items' image embeddings for policy backtests (``embeddings.store``).

After a job ends with a verdict, the worker hands its frames' embeddings, the model identity,
the tenant and the live decision to :class:`EmbeddingHistory`, which *buffers* them and writes
them as one columnar shard (:class:`~moderation.pipeline.history_shards.HistoryShards`) when the
buffer reaches ``embeddings.flush_rows`` items or ``flush_bytes`` bytes, or when its oldest item
has waited ``flush_interval_s``. Writing happens on the history's own thread (never on a job's),
split at UTC hour boundaries so that every shard lies in the hour its key names.

Best effort by design: the history is for measuring policy versions, not for deciding, so
nothing here ever fails or slows a job.

* A **crash** (kill -9, OOM) loses the buffer: at most ``flush_interval_s`` of this worker's
  decided items (or ``flush_rows``). ``moderation_embeddings_buffered`` shows what is at stake
  now; ``moderation_embeddings_stored_total{result="buffered"}`` minus ``written``, ``dropped``
  and ``failed`` is what crashes lost.
* **SIGTERM** (and every orderly stop) flushes the buffer: :meth:`close`.
* The **object store down**: a shard that cannot be written goes back to the buffer and is
  tried again after a pause; the buffer holds at most ``max_buffered_rows`` items, beyond which
  new items are dropped (``result="dropped"``) rather than growing the worker's memory.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from itertools import count

import numpy as np
from numpy.typing import NDArray

from moderation.core.decision import Verdict
from moderation.core.embeddings import HistoryBatch, StoredEmbedding
from moderation.core.history_keys import hour_start, shard_key
from moderation.core.jobs import Job
from moderation.exceptions import ModerationError, TransientError
from moderation.metrics import metrics
from moderation.pipeline.history_shards import HistoryShards
from moderation.settings import EmbeddingSettings

__all__ = ["EmbeddingHistory"]

log = logging.getLogger(__name__)

#: Seconds between tries while the object store refuses shards.
RETRY_S = 5.0


class EmbeddingHistory:
    """A worker's buffer of decided items, written as shards. Thread-safe."""

    def __init__(
        self,
        shards: HistoryShards,
        *,
        writer: str,
        settings: EmbeddingSettings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.shards = shards
        self.settings = settings
        self.writer = writer
        self.clock = clock
        self._seq = count(1)
        self._lock = threading.Lock()
        self._flushing = threading.Lock()  # one writer of shards at a time
        self._buffer: list[StoredEmbedding] = []
        self._bytes = 0
        self._retry_at = 0.0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- the job side -------------------------------------------------------------------------

    def record(
        self,
        job: Job,
        verdict: Verdict,
        embeddings: NDArray[np.float32],
        *,
        content_sha256: str | None,
    ) -> bool:
        """Keep one decided job's frame embeddings. Never raises; returns whether it was
        taken."""
        return self.record_many([(job, verdict, embeddings, content_sha256)]) == 1

    def record_many(
        self, decided: Sequence[tuple[Job, Verdict, NDArray[np.float32], str | None]]
    ) -> int:
        """Buffer decided jobs' frame embeddings (job, verdict, embeddings, content sha256).
        Never raises and never writes on the caller's thread (unless no thread was started);
        returns how many were taken."""
        if not decided:
            return 0
        now = self.clock()
        items = [_stored(job, verdict, x, digest, now) for job, verdict, x, digest in decided]
        m = metrics()
        with self._lock:
            room = max(0, self.settings.max_buffered_rows - len(self._buffer))
            taken, dropped = items[:room], items[room:]
            self._buffer.extend(taken)
            self._bytes += sum(item.nbytes for item in taken)
            full = self._due_by_size()
        if taken:
            m.embeddings_stored.labels("buffered").inc(len(taken))
            m.embeddings_buffered.inc(len(taken))
        if dropped:
            m.embeddings_stored.labels("dropped").inc(len(dropped))
            log.warning(
                "history buffer full (%d items: the object store is down or slow): %d "
                "embeddings dropped",
                self.settings.max_buffered_rows,
                len(dropped),
            )
        if full:
            if self._thread is not None:
                self._wake.set()
            else:
                self.flush()
        return len(taken)

    @property
    def buffered(self) -> int:
        with self._lock:
            return len(self._buffer)

    # --- writing shards -----------------------------------------------------------------------

    def _due_by_size(self) -> bool:
        s = self.settings
        return len(self._buffer) >= s.flush_rows or self._bytes >= s.flush_bytes

    def _due(self, now: float) -> bool:
        if not self._buffer or now < self._retry_at:
            return False
        oldest = self._buffer[0].at
        return self._due_by_size() or now - oldest >= self.settings.flush_interval_s

    def flush(self, *, force: bool = False) -> int:
        """Write the buffer as shards when a threshold is reached (``force``: now, whatever
        it holds). Never raises; returns how many items were written."""
        with self._flushing:
            with self._lock:
                if not self._buffer or not (force or self._due(self.clock())):
                    return 0
                items, self._buffer, self._bytes = self._buffer, [], 0
            written, unwritten = self._write(items)
            if unwritten:
                self._give_back(unwritten)
            return written

    def _write(self, items: list[StoredEmbedding]) -> tuple[int, list[StoredEmbedding]]:
        """Write ``items`` as shards (one or more per hour); returns (written, those a
        transient failure left unwritten)."""
        m = metrics()
        written = 0
        groups = _by_hour_and_size(items, self.settings.flush_rows, self.settings.flush_bytes)
        for position, group in enumerate(groups):
            suffix = self.shards.format.suffix
            key = shard_key(group[0].at, group[-1].at, self.writer, next(self._seq), suffix=suffix)
            try:
                self.shards.write(key, HistoryBatch.from_items(group))
            except TransientError as exc:
                rest = [item for later in groups[position:] for item in later]
                log.warning(
                    "history: %d embeddings not written yet (%s); trying again in %.0f s",
                    len(rest),
                    exc,
                    RETRY_S,
                )
                return written, rest
            except (ModerationError, ValueError) as exc:
                log.error("history: a shard of %d embeddings given up: %s", len(group), exc)
                m.embeddings_stored.labels("failed").inc(len(group))
                m.embeddings_buffered.dec(len(group))
                continue
            written += len(group)
            m.embeddings_stored.labels("written").inc(len(group))
            m.embeddings_buffered.dec(len(group))
        return written, []

    def _give_back(self, items: list[StoredEmbedding]) -> None:
        """Put unwritten ``items`` back in front of the buffer (oldest first), as far as
        ``max_buffered_rows`` allows; count the rest as failed."""
        with self._lock:
            merged = items + self._buffer
            keep = self.settings.max_buffered_rows
            lost = merged[: max(0, len(merged) - keep)]
            self._buffer = merged[len(lost) :]
            self._bytes = sum(item.nbytes for item in self._buffer)
            self._retry_at = self.clock() + RETRY_S
        if lost:
            metrics().embeddings_stored.labels("failed").inc(len(lost))
            metrics().embeddings_buffered.dec(len(lost))

    # --- the background writer ----------------------------------------------------------------

    def start(self) -> None:
        """Write shards on a daemon thread from now on (a worker process)."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="history", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        tick = max(0.05, min(1.0, self.settings.flush_interval_s / 2))
        while not self._stop.is_set():
            self._wake.wait(tick)
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # the writer thread must survive anything
                log.exception("history flush failed")

    def close(self, timeout: float = 10.0) -> None:
        """Stop the thread and write what the buffer holds (an orderly stop: SIGTERM). What
        cannot be written now is counted as failed."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        with self._lock:
            self._retry_at = 0.0
        self.flush(force=True)
        with self._lock:
            left, self._buffer, self._bytes = self._buffer, [], 0
        if left:
            log.error("history: %d embeddings could not be written before stopping", len(left))
            metrics().embeddings_stored.labels("failed").inc(len(left))
            metrics().embeddings_buffered.dec(len(left))


def _by_hour_and_size(
    items: list[StoredEmbedding], max_rows: int, max_bytes: int
) -> list[list[StoredEmbedding]]:
    """``items`` (in time order) cut at UTC hour boundaries and at the size limits."""
    groups: list[list[StoredEmbedding]] = []
    current: list[StoredEmbedding] = []
    size = 0
    hour = None
    for item in sorted(items, key=lambda i: i.at):  # the clock may have stepped back
        item_hour = hour_start(item.at)
        if current and (item_hour != hour or len(current) >= max_rows or size >= max_bytes):
            groups.append(current)
            current, size = [], 0
        current.append(item)
        size += item.nbytes
        hour = item_hour
    if current:
        groups.append(current)
    return groups


def _stored(
    job: Job,
    verdict: Verdict,
    embeddings: NDArray[np.float32],
    content_sha256: str | None,
    at: float,
) -> StoredEmbedding:
    deciding = verdict.deciding
    return StoredEmbedding(
        job_id=job.id,
        model_id=verdict.model,
        embeddings=StoredEmbedding.quantize(embeddings),
        tenant=job.tenant,
        policies=tuple(job.policies or ()),
        decision=verdict.decision.value,
        deciding=deciding.key if deciding is not None and verdict.decision.rank else None,
        versions={p.id: p.version for p in verdict.policies},
        content_sha256=content_sha256,
        image=job.image.uri,
        at=at,
    )
