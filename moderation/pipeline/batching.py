"""An in-process micro-batcher: many threads submit single items, one thread runs them in batches.

Decode threads prepare images in parallel, then ``submit`` each prepared frame and wait on the
returned future; the batcher's own thread collects up to ``max_batch`` items, waiting at most
``max_wait_s`` after the first one, and runs one forward pass on the batch. While it runs, the
next batch fills up, so decoding overlaps with inference.

Two batches in flight: given a ``start`` function that *launches* a batch and returns a handle
(:class:`Pending`; on a GPU the copy and the forward pass are queued on the device and the call
returns at once), the batcher launches batch k+1 from whatever is already waiting before it
collects the results of batch k, so the accelerator never waits for the host between batches.
With a plain ``fn`` (computes and returns), batches run one after another. A result that is an
exception fails only its own item.
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

__all__ = ["BatchStats", "BatcherClosed", "Done", "MicroBatcher", "Pending"]

T = TypeVar("T")
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)


class BatcherClosed(Exception):
    """``submit`` after ``close``."""


class Pending(Protocol[R_co]):
    """A launched batch; ``result`` waits for it and returns one result per item, in order;
    ``ready`` says, without waiting, whether ``result`` would return at once."""

    def result(self) -> Sequence[R_co]: ...

    def ready(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class Done(Generic[R]):
    """A batch that was computed synchronously."""

    results: Sequence[R]

    def result(self) -> Sequence[R]:
        return self.results

    def ready(self) -> bool:
        return True


@dataclass(frozen=True)
class BatchStats:
    size: int
    waited_s: float  # from the first item's arrival to the launch
    run_s: float  # from the launch to the results


@dataclass
class _Item(Generic[T, R]):
    value: T
    future: Future[R]
    at: float


@dataclass
class _Launched(Generic[T, R]):
    items: list[_Item[T, R]]
    handle: Pending[R] | None
    error: BaseException | None
    started: float


_STOP = object()


class MicroBatcher(Generic[T, R]):
    """Runs batches of submitted items: ``fn(batch) -> results`` (same length, same order), or
    ``start(batch) -> Pending`` to keep two batches in flight."""

    def __init__(
        self,
        fn: Callable[[list[T]], Sequence[R]] | None = None,
        *,
        start: Callable[[list[T]], Pending[R]] | None = None,
        max_batch: int,
        max_wait_s: float,
        on_batch: Callable[[BatchStats], None] | None = None,
        name: str = "micro-batcher",
    ) -> None:
        if (fn is None) == (start is None):
            raise ValueError("give exactly one of fn and start")
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s}")
        if start is None:
            assert fn is not None
            compute = fn

            def start(batch: list[T]) -> Pending[R]:
                return Done(compute(batch))

        self._start = start
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._on_batch = on_batch
        self._queue: queue.SimpleQueue[_Item[T, R] | list[_Item[T, R]] | object] = (
            queue.SimpleQueue()
        )
        self._carry: collections.deque[_Item[T, R]] = collections.deque()
        self._closed = False
        self._stop = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, value: T) -> Future[R]:
        """Queue one item; the future resolves to its result or raises what the batch raised.

        Raises:
            BatcherClosed: the batcher was closed.
        """
        future: Future[R] = Future()
        with self._lock:
            if self._closed:
                raise BatcherClosed("batcher is closed")
            self._queue.put(_Item(value, future, time.monotonic()))
        return future

    def submit_many(self, values: Sequence[T]) -> list[Future[R]]:
        """Queue several items together: they go into the same batch when they fit.

        Raises:
            BatcherClosed: the batcher was closed.
        """
        now = time.monotonic()
        items: list[_Item[T, R]] = [_Item(value, Future(), now) for value in values]
        with self._lock:
            if self._closed:
                raise BatcherClosed("batcher is closed")
            if items:
                self._queue.put(items)
        return [item.future for item in items]

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

    def _unpack(self, got: object) -> _Item[T, R] | None:
        """An item from a queue entry (a group's first item; the rest wait in the carry)."""
        if got is _STOP:
            self._stop = True
            return None
        if isinstance(got, list):
            self._carry.extend(got[1:])
            return got[0]  # type: ignore[no-any-return]
        return got  # type: ignore[return-value]

    def _take(self, block: bool) -> _Item[T, R] | None:
        """The next item (None when none is waiting and ``block`` is False, or on stop)."""
        if self._carry:
            return self._carry.popleft()
        try:
            got = self._queue.get() if block else self._queue.get_nowait()
        except queue.Empty:
            return None
        return self._unpack(got)

    def _poll(self) -> _Item[T, R] | None:
        """An item arriving within half a millisecond, if any."""
        if self._carry:
            return self._carry.popleft()
        try:
            got = self._queue.get(timeout=0.0005)
        except queue.Empty:
            return None
        return self._unpack(got)

    def _collect(self, first: _Item[T, R], *, wait: bool) -> list[_Item[T, R]]:
        """A batch starting with ``first``: up to ``max_batch`` items, waiting until
        ``max_wait_s`` after the first one arrived (``wait``), else only what is there now."""
        batch = [first]
        deadline = first.at + self.max_wait_s
        while len(batch) < self.max_batch and not self._stop:
            remaining = deadline - time.monotonic()
            if self._carry or not wait or remaining <= 0:
                item = self._take(block=False)
            else:
                try:
                    item = self._unpack(self._queue.get(timeout=remaining))
                except queue.Empty:
                    break
            if item is None:
                break
            batch.append(item)
        return batch

    def _launch(self, batch: list[_Item[T, R]]) -> _Launched[T, R] | None:
        live = [i for i in batch if i.future.set_running_or_notify_cancel()]
        if not live:
            return None
        started = time.monotonic()
        try:
            return _Launched(live, self._start([i.value for i in live]), None, started)
        except BaseException as exc:  # delivered to every waiter; the thread lives on
            return _Launched(live, None, exc, started)

    def _finish(self, launched: _Launched[T, R]) -> None:
        items = launched.items
        try:
            if launched.error is not None:
                raise launched.error
            assert launched.handle is not None
            results = launched.handle.result()
            if len(results) != len(items):
                raise ValueError(f"batch fn returned {len(results)} results for {len(items)}")
        except BaseException as exc:
            for item in items:
                item.future.set_exception(exc)
            return
        for item, result in zip(items, results, strict=True):
            if isinstance(result, BaseException):  # this item failed, the others did not
                item.future.set_exception(result)
            else:
                item.future.set_result(result)
        if self._on_batch is not None:
            self._on_batch(
                BatchStats(
                    size=len(items),
                    waited_s=launched.started - items[0].at,
                    run_s=time.monotonic() - launched.started,
                )
            )

    def _run(self) -> None:
        pending: _Launched[T, R] | None = None
        while True:
            # With a batch in flight, launch the next one from what is already waiting, then
            # collect the first: the device has work queued while the host hands out results.
            first = self._take(block=pending is None and not self._stop)
            while (
                first is None
                and pending is not None
                and not self._stop
                and not (pending.handle is None or pending.handle.ready())
            ):
                first = self._poll()  # the device is busy: take what arrives meanwhile
            launched = None
            if first is not None:
                launched = self._launch(self._collect(first, wait=pending is None))
            if pending is not None:
                self._finish(pending)
            pending = launched
            if pending is None and self._stop:
                # Drain what was queued before the stop, then end.
                while (item := self._take(block=False)) is not None:
                    rest = self._launch(self._collect(item, wait=False))
                    if rest is not None:
                        self._finish(rest)
                return
