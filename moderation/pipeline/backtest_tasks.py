"""A worker's side of a fanned-out backtest (the ``moderation.backtest_shards`` task): score one
group of history shards of a :class:`~moderation.core.backtest.BacktestTask` against the
policies this worker serves and the candidate the task carries, and return the group's counts.

The worker checks before it counts: same model, same live policy contents as the backtest was
planned with (else ``BacktestMismatch``: it would count against other policies), and a candidate
text that compiles to the hash the task names. The candidate is compiled once per process
through the compile cache (a text seen before is never encoded again).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from moderation.core.backtest import BacktestPartial, BacktestTask
from moderation.core.compiled import CompiledPolicy
from moderation.exceptions import BacktestMismatch
from moderation.pipeline.backtest import ShardScoring, live_hashes
from moderation.pipeline.history_shards import HistoryShards
from moderation.pipeline.policies import CompiledSet

__all__ = ["WorkerBacktests"]


class WorkerBacktests:
    """A worker's side of a fanned-out backtest: scores one shard group of a
    :class:`BacktestTask` against the policies this worker serves and the candidate the task
    carries (compiled here, through the compile cache).

    ``compile_candidate(text)`` loads and compiles a policy text for this worker's model.
    """

    def __init__(
        self,
        shards: HistoryShards,
        *,
        live: Callable[[], CompiledSet],
        compile_candidate: Callable[[str], CompiledPolicy],
    ) -> None:
        self.shards = shards
        self.live = live
        self.compile_candidate = compile_candidate
        self._candidate: tuple[tuple[str, str], CompiledPolicy] | None = None

    def score(self, task: BacktestTask, keys: Sequence[str]) -> BacktestPartial:
        """The counts of the shards ``keys``.

        Raises:
            BacktestMismatch: this worker serves other live policies or another model than the
                task was planned with, or the candidate text does not match its hash.
            PolicyError: the candidate text does not load.
            HistoryShardUnreadable, BlobStoreUnavailable, BlobError, QualityError: as
                :meth:`ShardScoring.score`.
        """
        live = self.live()
        if live.model.id != task.model:
            raise BacktestMismatch(
                f"this worker's model is {live.model.id}, the backtest's {task.model}"
            )
        serving = live_hashes(live)
        if serving != task.live:
            differ = sorted(
                pid
                for pid in set(serving) | set(task.live)
                if serving.get(pid) != task.live.get(pid)
            )
            raise BacktestMismatch(
                f"this worker serves other live policies than the backtest was planned with "
                f"({', '.join(differ)} differ): deploy the same policy files to both, or wait "
                "for the workers' policy reload, or run the backtest with --on local"
            )
        marker = (task.candidate_hash, task.model)
        if self._candidate is not None and self._candidate[0] == marker:
            candidate = self._candidate[1]
        else:
            candidate = self.compile_candidate(task.candidate_text)
            if candidate.policy_hash != task.candidate_hash or candidate.id != task.policy_id:
                raise BacktestMismatch(
                    f"the candidate received compiles to {candidate.id} "
                    f"{candidate.policy_hash[:12]}, not {task.policy_id} "
                    f"{task.candidate_hash[:12]}"
                )
            self._candidate = (marker, candidate)
        scoring = ShardScoring(self.shards, live=live, candidate=candidate, task=task)
        return scoring.score(keys)
