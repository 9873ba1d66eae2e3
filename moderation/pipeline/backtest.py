"""Backtesting a policy version on stored traffic: ``moderation policy backtest``.

The workers keep each decided item's image embedding as shards in the object store
(:mod:`moderation.pipeline.history`). A backtest lists the shards of a time range (oldest first),
cuts them into groups of ``shards_per_group``, and scores each group twice, with the live policy
set and with the set as it would be once the candidate version is promoted (the candidate in
place of its live version), through the same scorer and decision rule as live traffic
(:meth:`~moderation.core.scoring.Scorer.score`, :func:`~moderation.core.decision.decisions`); no
image is fetched, decoded or encoded. Each group gives counts (:class:`BacktestPartial`) and the
report is their sum (:func:`~moderation.core.backtest.merge_partials`): every item whose decision
changes, by transition and by category, and the earliest examples.

Where the groups are scored is a :class:`~moderation.ports.BacktestRunner`: here, one group after
the other (:class:`LocalBacktests`), or fanned out as tasks to the workers
(:class:`~moderation.adapters.celery_queue.CeleryBacktests`), each of which scores its group
with :class:`~moderation.pipeline.backtest_tasks.WorkerBacktests` and returns the counts. The
same groups and the same code give the same report either way. Memory is bounded on both sides:
a group is read shard by shard (one being scored, one being fetched), and its job ids are kept
only for the group.

Rules: a row of another model than the policies are compiled for is refused (counted, never
scored); a job stored twice in one group (a redelivery) counts once; a row whose request did not
apply the candidate's policy cannot change and is counted as unaffected; the live re-score is
compared with the decision recorded at the time (``drift``: the live policy changed since, or
float16 rounding moved a score across a threshold); ``--tenant`` reads only that tenant's rows.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime

import numpy as np
from numpy.typing import NDArray

from moderation.core.backtest import (
    COUNTS,
    BacktestChange,
    BacktestPartial,
    BacktestReport,
    BacktestTask,
    Outcome,
    merge_partials,
)
from moderation.core.compiled import CompiledPolicy
from moderation.core.decision import Decision, decisions
from moderation.core.embeddings import HistoryBatch, requested_policies
from moderation.core.history_keys import ShardKey
from moderation.core.scoring import FeatureBatch, Scorer
from moderation.exceptions import (
    EmbeddingModelMismatch,
    QualityError,
    UnknownPolicyError,
)
from moderation.pipeline.history_shards import HistoryShards
from moderation.pipeline.policies import CompiledSet
from moderation.ports import BacktestRunner

__all__ = [
    "BacktestChange",
    "BacktestPartial",
    "BacktestReport",
    "BacktestTask",
    "LocalBacktests",
    "Outcome",
    "ShardScoring",
    "backtest",
    "live_hashes",
    "plan_groups",
]

log = logging.getLogger(__name__)

_NAMES = tuple(d.value for d in Decision)  # index = rank
_RANK = {name: rank for rank, name in enumerate(_NAMES)}


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


def live_hashes(live: CompiledSet) -> dict[str, str]:
    """What a backtest is planned against: each live policy's content hash."""
    return {pid: p.policy_hash for pid, p in sorted(live.by_id.items())}


def plan_groups(shards: Sequence[ShardKey], shards_per_group: int) -> list[list[str]]:
    """The shard keys (in time order) cut into groups of ``shards_per_group``."""
    keys = [s.key for s in shards]
    step = max(1, shards_per_group)
    return [keys[i : i + step] for i in range(0, len(keys), step)]


def _check_signals(scorer: Scorer, compiled: CompiledSet) -> None:
    for slot in scorer.slots:
        signal = compiled.signals.get(slot.category.signal)
        if signal is not None and signal.needs_image:
            raise QualityError(
                f"category {slot.key} uses signal {signal.name!r}, which reads the image itself; "
                "a backtest re-scores stored embeddings only"
            )


class _Scoring:
    """Decides stored frames with one policy set, scorer cached per requested subset."""

    def __init__(self, compiled: CompiledSet) -> None:
        self.compiled = compiled
        self.checked: set[tuple[str, ...]] = set()

    def decide(
        self, ids: tuple[str, ...], embeddings: NDArray[np.float32]
    ) -> tuple[NDArray[np.int8], NDArray[np.intp], NDArray[np.float32], Scorer]:
        scorer = self.compiled.scorer(ids)
        if ids not in self.checked:
            _check_signals(scorer, self.compiled)
            self.checked.add(ids)
        rank, col, score = decisions(scorer.score(FeatureBatch(embeddings=embeddings)))
        return rank, col, score, scorer


def _per_item(
    frames: NDArray[np.int32],
    rank: NDArray[np.int8],
    col: NDArray[np.intp],
    score: NDArray[np.float32],
    scorer: Scorer,
) -> tuple[NDArray[np.int8], NDArray[np.intp], NDArray[np.float32]]:
    """Each item's decision over its frames: the most severe (decision, severity, score), like
    :func:`moderation.core.decision.most_severe`."""
    if bool((frames == 1).all()):
        return rank, col, score
    severity = np.array([s.category.category.severity.rank for s in scorer.slots])[col]
    starts = np.r_[0, np.cumsum(frames)[:-1]]
    pick = np.empty(len(frames), np.intp)
    for i, (start, count) in enumerate(zip(starts.tolist(), frames.tolist(), strict=True)):
        keys = [
            (int(rank[j]), int(severity[j]), float(score[j])) for j in range(start, start + count)
        ]
        pick[i] = start + max(range(count), key=keys.__getitem__)
    return rank[pick], col[pick], score[pick]


class _Tally:
    """The counts of one group, as it is scored."""

    def __init__(self, examples: int) -> None:
        self.limit = examples
        self.counts: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        self.transitions: Counter[str] = Counter()
        self.by_category: Counter[str] = Counter()
        self.examples: list[BacktestChange] = []

    def example(self, change: BacktestChange) -> None:
        if self.limit <= 0:
            return
        self.examples.append(change)
        if len(self.examples) >= 4 * self.limit:
            self._trim()

    def _trim(self) -> None:
        self.examples.sort(key=lambda c: c.order)
        del self.examples[self.limit :]

    def partial(self) -> BacktestPartial:
        self._trim()
        return merge_partials(
            [
                BacktestPartial(
                    **{k: self.counts[k] for k in COUNTS},
                    refused=dict(self.refused),
                    transitions=dict(self.transitions),
                    by_category=dict(self.by_category),
                    examples=self.examples,
                )
            ],
            examples=self.limit,
        )


class ShardScoring:
    """Scores groups of shards against a live set and a candidate (in any process)."""

    def __init__(
        self,
        shards: HistoryShards,
        *,
        live: CompiledSet,
        candidate: CompiledPolicy,
        task: BacktestTask,
    ) -> None:
        if candidate.model.id != live.model.id:
            raise EmbeddingModelMismatch(
                f"the candidate is compiled for {candidate.model.id}, the live policies for "
                f"{live.model.id}"
            )
        self.shards = shards
        self.task = task
        self.model = live.model.id
        self.before = _Scoring(live)
        self.after = _Scoring(live.replacing(candidate))
        self.policy_id = candidate.id

    def score(self, keys: Sequence[str]) -> BacktestPartial:
        """The counts of the shards ``keys`` (one group).

        Raises:
            HistoryShardUnreadable: a shard is not readable.
            BlobStoreUnavailable, BlobError: the object store cannot be read.
            QualityError: a category applied uses a signal that needs the image itself.
        """
        tally = _Tally(self.task.examples)
        seen: set[str] = set()
        for key, batch in self.shards.read_many(keys, tenant=self.task.tenant):
            tally.counts["shards"] += 1
            self._score_batch(key, batch, seen, tally)
        tally.counts["missing"] = len(keys) - tally.counts["shards"]
        return tally.partial()

    def _score_batch(self, key: str, batch: HistoryBatch, seen: set[str], tally: _Tally) -> None:
        task = self.task
        at = batch.at
        inside = at >= task.since
        if task.until is not None:
            inside &= at <= task.until
        rows = np.flatnonzero(inside).tolist()
        tally.counts["read"] += len(rows)
        groups: dict[str, list[int]] = {}
        for i in rows:
            job_id = batch.job_ids[i]
            if job_id in seen:
                tally.counts["duplicates"] += 1
                continue
            seen.add(job_id)
            if batch.model_ids[i] != self.model:
                tally.refused[batch.model_ids[i]] += 1
                continue
            groups.setdefault(batch.policies[i], []).append(i)
        offsets = batch.offsets
        for requested, picked in groups.items():
            wanted = requested_policies(requested) or None
            try:
                ids_before = self.before.compiled.ids_for(wanted)
                ids_after = self.after.compiled.ids_for(wanted)
            except UnknownPolicyError:
                tally.counts["unscorable"] += len(picked)
                continue
            if self.policy_id not in ids_before and self.policy_id not in ids_after:
                tally.counts["unaffected"] += len(picked)
                continue
            self._score_rows(
                batch, np.array(picked, np.intp), offsets, ids_before, ids_after, tally
            )

    def _score_rows(
        self,
        batch: HistoryBatch,
        picked: NDArray[np.intp],
        offsets: NDArray[np.int64],
        ids_before: tuple[str, ...],
        ids_after: tuple[str, ...],
        tally: _Tally,
    ) -> None:
        frames = batch.frames[picked]
        if bool((frames == 1).all()):
            x = batch.embeddings[offsets[picked]]
        else:
            x = np.concatenate(
                [
                    batch.embeddings[start : start + count]
                    for start, count in zip(offsets[picked].tolist(), frames.tolist(), strict=True)
                ]
            )
        embeddings = x.astype(np.float32)
        b_rank, b_col, b_score, b_scorer = self.before.decide(ids_before, embeddings)
        a_rank, a_col, a_score, a_scorer = self.after.decide(ids_after, embeddings)
        b_rank, b_col, b_score = _per_item(frames, b_rank, b_col, b_score, b_scorer)
        a_rank, a_col, a_score = _per_item(frames, a_rank, a_col, a_score, a_scorer)
        tally.counts["scored"] += len(picked)
        recorded = np.array([_RANK.get(batch.decisions[i], -1) for i in picked.tolist()], np.int8)
        tally.counts["drift"] += int((recorded != b_rank).sum())
        for j in np.flatnonzero(a_rank != b_rank).tolist():
            i = int(picked[j])
            tally.counts["changed"] += 1
            was, now = _NAMES[int(b_rank[j])], _NAMES[int(a_rank[j])]
            tally.transitions[f"{was} -> {now}"] += 1
            after_key = a_scorer.slots[int(a_col[j])].key
            before_key = b_scorer.slots[int(b_col[j])].key
            tally.by_category[after_key if a_rank[j] > b_rank[j] else before_key] += 1
            tally.example(
                BacktestChange(
                    job_id=batch.job_ids[i],
                    image=batch.images[i],
                    at=_iso(float(batch.at[i])) or "",
                    recorded=batch.decisions[i],
                    before=Outcome(was, before_key if b_rank[j] else None, float(b_score[j])),
                    after=Outcome(now, after_key if a_rank[j] else None, float(a_score[j])),
                    tenant=batch.tenants[i],
                )
            )


class LocalBacktests:
    """A :class:`~moderation.ports.BacktestRunner` that scores every group in this process,
    one after the other."""

    where = "local"

    def __init__(self, scoring: ShardScoring) -> None:
        self.scoring = scoring

    def run(
        self, task: BacktestTask, groups: Sequence[Sequence[str]]
    ) -> Iterator[tuple[int, BacktestPartial]]:
        for index, keys in enumerate(groups):
            yield index, self.scoring.score(keys)


def backtest(
    shards: HistoryShards,
    *,
    live: CompiledSet,
    candidate: CompiledPolicy,
    candidate_text: str = "",
    since: float,
    until: float | None = None,
    tenant: str | None = None,
    examples: int = 20,
    shards_per_group: int = 8,
    runner: Callable[[ShardScoring, int], BacktestRunner] | None = None,
    on_plan: Callable[[int, int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> BacktestReport:
    """Re-score the stored embeddings of ``[since, until]`` with and without ``candidate``.

    ``runner(scoring, groups)`` gives where the groups are scored (default: here, one after
    the other). ``on_plan(shards, groups)`` is called once the shards are listed;
    ``on_progress(shards)`` as groups finish.

    Raises:
        EmbeddingModelMismatch: the candidate is compiled for another model than the live
            policies, or every stored entry in range comes from another model.
        QualityError: a category applied uses a signal that needs the image itself.
        BacktestMismatch, BacktestWorkersUnavailable: fanned out, the workers could not score.
        HistoryShardUnreadable, BlobStoreUnavailable, BlobError: the history cannot be read.
    """
    started = time.perf_counter()
    model = live.model.id
    since = max(since, shards.horizon())  # the retention limit
    task = BacktestTask(
        policy_id=candidate.id,
        candidate_text=candidate_text,
        candidate_hash=candidate.policy_hash,
        live=live_hashes(live),
        model=model,
        since=since,
        until=until,
        tenant=tenant,
        examples=examples,
    )
    scoring = ShardScoring(shards, live=live, candidate=candidate, task=task)
    found = shards.keys(since, until)
    groups = plan_groups(found, shards_per_group)
    if on_plan is not None:
        on_plan(len(found), len(groups))
    where = runner(scoring, len(groups)) if runner is not None else LocalBacktests(scoring)
    partials = []
    for index, part in where.run(task, groups):
        partials.append(part)
        if on_progress is not None:
            on_progress(len(groups[index]))
    total = merge_partials(partials, examples=examples)
    refused = sum(total.refused.values())
    if total.read and not total.scored and refused and refused == total.read - total.duplicates:
        raise EmbeddingModelMismatch(
            f"every stored embedding in range comes from another model "
            f"({', '.join(sorted(total.refused))}); the policies are compiled for {model}: "
            "re-score needs embeddings of the same model"
        )
    return BacktestReport(
        policy_id=candidate.id,
        live_version=live.by_id[candidate.id].version if candidate.id in live.by_id else None,
        candidate_version=candidate.version,
        candidate_hash=candidate.compiled_hash,
        model=model,
        since=_iso(since) or "",
        until=_iso(until),
        read=total.read,
        duplicates=total.duplicates,
        refused=total.refused,
        unscorable=total.unscorable,
        unaffected=total.unaffected,
        scored=total.scored,
        changed=total.changed,
        transitions=total.transitions,
        by_category=total.by_category,
        drift=total.drift,
        examples=total.examples,
        seconds=time.perf_counter() - started,
        tenant=tenant,
        shards=len(found),
        missing=total.missing,
        groups=len(groups),
        where=where.where,
    )
