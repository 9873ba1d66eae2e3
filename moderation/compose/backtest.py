"""Where ``moderation policy backtest`` scores its shard groups: here, or fanned out to the
running workers as Celery tasks (:class:`~moderation.adapters.celery_queue.CeleryBacktests`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal

from moderation.adapters.celery_queue import CeleryBacktests
from moderation.compose.stores import open_worker_registry
from moderation.exceptions import BacktestWorkersUnavailable, ModerationError, QualityError
from moderation.pipeline.backtest import LocalBacktests, ShardScoring
from moderation.ports import BacktestRunner
from moderation.settings import Settings

__all__ = ["Where", "backtest_runner"]

log = logging.getLogger(__name__)

#: ``auto``: the workers when there is more than one shard group, the history is in S3 (a store
#: every worker reads the same) and a worker is alive.
Where = Literal["auto", "local", "workers"]


def backtest_runner(
    settings: Settings,
    *,
    on: Where,
    parallel: int | None,
    timeout_s: float,
    candidate_has_exemplars: bool,
) -> Callable[[ShardScoring, int], BacktestRunner]:
    """What :func:`moderation.pipeline.backtest.backtest` takes as ``runner``.

    The runner it gives raises (when called) ``QualityError`` for ``workers`` with a candidate
    whose exemplar images the workers cannot read, and ``BacktestWorkersUnavailable`` for
    ``workers`` when no worker is alive.
    """

    def choose(scoring: ShardScoring, groups: int) -> BacktestRunner:
        if on == "local" or (on == "auto" and (groups <= 1 or not settings.blobs.bucket)):
            return LocalBacktests(scoring)
        if candidate_has_exemplars:
            if on == "workers":
                raise QualityError(
                    "the candidate has exemplar images, which the workers cannot read (its text "
                    "travels to them, not its files): run it with --on local"
                )
            return LocalBacktests(scoring)
        alive = _live_workers(settings) if settings.redis_url else 0
        if not alive:
            if on == "workers":
                raise BacktestWorkersUnavailable(
                    "no live worker to fan the backtest out to (none sends heartbeats): start "
                    "workers, or run it with --on local"
                )
            return LocalBacktests(scoring)
        return CeleryBacktests(
            settings, parallel=parallel or min(64, 2 * alive), timeout_s=timeout_s
        )

    return choose


def _live_workers(settings: Settings) -> int:
    try:
        return len(open_worker_registry(settings).workers())
    except ModerationError as exc:
        log.warning("cannot count the live workers (%s): backtesting here", exc)
        return 0
