"""MicroBatcher: batches form under concurrency, results map back in order, errors propagate."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from moderation.pipeline.batching import BatcherClosed, BatchStats, MicroBatcher


def test_concurrent_submitters_share_batches() -> None:
    sizes: list[int] = []
    calls = threading.Event()

    def double(items: list[int]) -> list[int]:
        calls.set()
        time.sleep(0.01)  # a forward pass takes time: the next batch fills meanwhile
        return [2 * i for i in items]

    batcher: MicroBatcher[int, int] = MicroBatcher(
        double, max_batch=8, max_wait_s=0.05, on_batch=lambda s: sizes.append(s.size)
    )
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(batcher, range(200)))
    batcher.close()
    assert results == [2 * i for i in range(200)]
    assert sum(sizes) == 200
    assert max(sizes) == 8
    assert len(sizes) < 200 / 2  # real batching, not one item per call


def test_single_item_waits_at_most_max_wait() -> None:
    stats: list[BatchStats] = []
    batcher: MicroBatcher[str, str] = MicroBatcher(
        lambda xs: [x.upper() for x in xs],
        max_batch=32,
        max_wait_s=0.02,
        on_batch=stats.append,
    )
    assert batcher("a", timeout=5) == "A"
    batcher.close()
    assert stats[0].size == 1
    assert stats[0].waited_s < 1.0


def test_errors_reach_every_waiter_and_the_batcher_survives() -> None:
    def explode(items: list[int]) -> list[int]:
        if any(i < 0 for i in items):
            raise ValueError("negative")
        return items

    batcher: MicroBatcher[int, int] = MicroBatcher(explode, max_batch=4, max_wait_s=0.0)
    with pytest.raises(ValueError, match="negative"):
        batcher(-1, timeout=5)
    assert batcher(5, timeout=5) == 5


def test_wrong_result_count_is_an_error() -> None:
    batcher: MicroBatcher[int, int] = MicroBatcher(lambda xs: [], max_batch=4, max_wait_s=0.0)
    with pytest.raises(ValueError, match="0 results for 1"):
        batcher(1, timeout=5)
    batcher.close()


def test_submit_after_close_and_bad_options() -> None:
    batcher: MicroBatcher[int, int] = MicroBatcher(lambda xs: xs, max_batch=1, max_wait_s=0.0)
    batcher.close()
    with pytest.raises(BatcherClosed):
        batcher.submit(1)
    with pytest.raises(ValueError):
        MicroBatcher(lambda xs: xs, max_batch=0, max_wait_s=0.0)


def test_two_batches_in_flight_when_start_returns_before_the_result() -> None:
    """With ``start`` (a device queue), batch k+1 is launched before batch k's results are
    collected, from whatever was already waiting; results still map back in order."""
    events: list[str] = []
    release: dict[int, threading.Event] = {}

    class Launched:
        def __init__(self, items: list[int], number: int) -> None:
            self.items, self.number = items, number

        def ready(self) -> bool:
            return release[self.number].is_set()

        def result(self) -> list[int]:
            release[self.number].wait(5)
            events.append(f"result {self.number}")
            return [10 * i for i in self.items]

    launched: list[int] = []

    def start(items: list[int]) -> Launched:
        number = len(launched)
        launched.append(number)
        release[number] = threading.Event()
        events.append(f"start {number}")
        if number == 0:
            # While batch 0 is "on the device", more items arrive; let it finish only once
            # batch 1 could have been launched.
            threading.Timer(0.2, release[0].set).start()
        else:
            release[number].set()
        return Launched(items, number)

    batcher: MicroBatcher[int, int] = MicroBatcher(start=start, max_batch=4, max_wait_s=0.0)
    first = batcher.submit(1)
    time.sleep(0.05)
    rest = [batcher.submit(i) for i in (2, 3)]
    assert first.result(5) == 10 and [f.result(5) for f in rest] == [20, 30]
    batcher.close()
    assert events.index("start 1") < events.index("result 0")


def test_an_item_whose_result_is_an_exception_fails_alone() -> None:
    batcher: MicroBatcher[int, int] = MicroBatcher(
        lambda xs: [ValueError(f"bad {x}") if x < 0 else x for x in xs],  # type: ignore[misc]
        max_batch=8,
        max_wait_s=0.05,
    )
    futures = [batcher.submit(x) for x in (1, -2, 3)]
    assert futures[0].result(5) == 1 and futures[2].result(5) == 3
    with pytest.raises(ValueError, match="bad -2"):
        futures[1].result(5)
    batcher.close()
    with pytest.raises(ValueError, match="exactly one"):
        MicroBatcher(max_batch=1, max_wait_s=0.0)
