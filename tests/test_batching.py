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
