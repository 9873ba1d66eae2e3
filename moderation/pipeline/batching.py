"""An in-process micro-batcher: many threads submit single items, one thread runs them in batches.

Worker threads fetch, decode and preprocess images in parallel, then ``submit`` the prepared
tensor and wait on the returned future; the batcher's own thread collects up to ``max_batch``
items, waiting at most ``max_wait_s`` after the first one, and runs ``fn`` once on the batch (one
forward pass). While it runs, the next batch fills up, so decoding overlaps with inference.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["BatchStats", "BatcherClosed", "MicroBatcher"]

T = TypeVar("T")
R = TypeVar("R")


class BatcherClosed(Exception):
    """``submit`` after ``close``."""


@dataclass(frozen=True)
class BatchStats:
    size: int
    waited_s: float  # from the first item's arrival to the start of the run
    run_s: float


@dataclass
class _Item(Generic[T, R]):
    value: T
    future: Future[R]
    at: float


_STOP = object()


class MicroBatcher(Generic[T, R]):
    """Runs ``fn(batch) -> results`` (same length, same order) on batches of submitted items."""

    def __init__(
        self,
        fn: Callable[[list[T]], Sequence[R]],
        *,
        max_batch: int,
        max_wait_s: float,
        on_batch: Callable[[BatchStats], None] | None = None,
        name: str = "micro-batcher",
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s}")
        self._fn = fn
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._on_batch = on_batch
        self._queue: queue.SimpleQueue[_Item[T, R] | object] = queue.SimpleQueue()
        self._closed = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, value: T) -> Future[R]:
        """Queue one item; the future resolves to its result or raises what ``fn`` raised.

        Raises:
            BatcherClosed: the batcher was closed.
        """
        future: Future[R] = Future()
        with self._lock:
            if self._closed:
                raise BatcherClosed("batcher is closed")
            self._queue.put(_Item(value, future, time.monotonic()))
        return future

    def __call__(self, value: T, timeout: float | None = None) -> R:
        """Submit and wait for the result."""
        return self.submit(value).result(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Finish queued items, then stop the batching thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        self._thread.join(timeout)

    def _collect(self, first: _Item[T, R]) -> tuple[list[_Item[T, R]], bool]:
        batch = [first]
        deadline = first.at + self.max_wait_s
        stop = False
        while len(batch) < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                item = (
                    self._queue.get_nowait()
                    if remaining <= 0
                    else self._queue.get(timeout=remaining)
                )
            except queue.Empty:
                break
            if item is _STOP:
                stop = True
                break
            batch.append(item)  # type: ignore[arg-type]
        return batch, stop

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is _STOP:
                break
            batch, stop = self._collect(first)  # type: ignore[arg-type]
            live = [i for i in batch if i.future.set_running_or_notify_cancel()]
            if not live:
                continue
            started = time.monotonic()
            try:
                results = self._fn([i.value for i in live])
                if len(results) != len(live):
                    raise ValueError(f"batch fn returned {len(results)} results for {len(live)}")
            except BaseException as exc:  # delivered to every waiter; the thread lives on
                for item in live:
                    item.future.set_exception(exc)
                continue
            for item, result in zip(live, results, strict=True):
                item.future.set_result(result)
            if self._on_batch is not None:
                self._on_batch(
                    BatchStats(
                        size=len(live),
                        waited_s=started - live[0].at,
                        run_s=time.monotonic() - started,
                    )
                )
