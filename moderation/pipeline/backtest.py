"""Backtesting a policy version on stored traffic: ``moderation policy backtest``.

The workers keep each decided item's image embedding (:mod:`moderation.pipeline.history`). A
backtest reads that history for a time range and re-scores it twice, with the live policy set and
with the set as it would be once the candidate version is promoted (the candidate in place of
its live version), through the same scorer and decision rule as live traffic
(:meth:`~moderation.core.scoring.Scorer.score`, :func:`~moderation.core.decision.decisions`);
no image is fetched, decoded or encoded. It reports every item whose decision changes: counts by
transition and by category, and examples.

Rules: an entry of another model than the policies are compiled for is refused (counted, never
scored); a job stored twice (a redelivery) counts once; an item whose request did not apply the
candidate's policy cannot change and is counted as unaffected; the live re-score is compared with
the decision recorded at the time (``drift``: the live policy changed since, or float16 rounding
moved a score across a threshold).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
from numpy.typing import NDArray

from moderation.core.compiled import CompiledPolicy
from moderation.core.data import Data
from moderation.core.decision import Decision, decisions
from moderation.core.embeddings import StoredEmbedding
from moderation.core.scoring import FeatureBatch, Scorer
from moderation.exceptions import EmbeddingModelMismatch, QualityError, UnknownPolicyError
from moderation.pipeline.policies import CompiledSet
from moderation.ports import EmbeddingStore

__all__ = ["BacktestChange", "BacktestReport", "Outcome", "backtest"]

_NAMES = tuple(d.value for d in Decision)  # index = rank


@dataclass(frozen=True, slots=True)
class Outcome(Data):
    decision: str
    category: str | None  # the deciding policy/category (None: allowed)
    score: float


@dataclass(frozen=True, slots=True)
class BacktestChange(Data):
    """One stored item whose decision the candidate version changes."""

    job_id: str
    image: str | None
    at: str
    recorded: str  # the decision at the time
    before: Outcome  # the live policies, re-scored now
    after: Outcome  # with the candidate version


@dataclass(frozen=True, slots=True)
class BacktestReport(Data):
    policy_id: str
    live_version: int | None
    candidate_version: int
    candidate_hash: str
    model: str
    since: str
    until: str | None
    read: int
    duplicates: int
    refused: dict[str, int]  # model id -> entries refused
    unscorable: int  # their requested policy is no longer loaded
    unaffected: int  # the candidate's policy did not apply to them
    scored: int
    changed: int
    transitions: dict[str, int]  # "allow -> block" -> items
    by_category: dict[str, int]  # deciding category after (before, for relaxed items)
    drift: int
    examples: list[BacktestChange] = field(default_factory=list)
    seconds: float = 0.0


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()


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
    frames: NDArray[np.intp],
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


def backtest(
    store: EmbeddingStore,
    *,
    live: CompiledSet,
    candidate: CompiledPolicy,
    since: float,
    until: float | None = None,
    examples: int = 20,
    page: int = 5000,
    on_progress: Callable[[int], None] | None = None,
) -> BacktestReport:
    """Re-score the stored embeddings of ``[since, until]`` with and without ``candidate``.

    Raises:
        EmbeddingModelMismatch: the candidate is compiled for another model than the live
            policies, or every stored entry in range comes from another model.
        QualityError: a category applied uses a signal that needs the image itself.
        QueueUnavailable: the store cannot be reached.
    """
    started = time.perf_counter()
    model = live.model.id
    if candidate.model.id != model:
        raise EmbeddingModelMismatch(
            f"the candidate is compiled for {candidate.model.id}, the live policies for {model}"
        )
    before_set, after_set = _Scoring(live), _Scoring(live.replacing(candidate))
    pid = candidate.id
    seen: set[str] = set()
    refused: Counter[str] = Counter()
    transitions: Counter[str] = Counter()
    by_category: Counter[str] = Counter()
    found: list[BacktestChange] = []
    read = duplicates = unscorable = unaffected = scored = changed = drift = 0

    for chunk in store.scan(since=since, until=until, page=page):
        read += len(chunk)
        groups: dict[tuple[str, ...], list[StoredEmbedding]] = {}
        for item in chunk:
            if item.job_id in seen:
                duplicates += 1
                continue
            seen.add(item.job_id)
            if item.model_id != model:
                refused[item.model_id] += 1
                continue
            groups.setdefault(item.policies, []).append(item)
        for requested, items in groups.items():
            try:
                ids_before = live.ids_for(requested or None)
                ids_after = after_set.compiled.ids_for(requested or None)
            except UnknownPolicyError:
                unscorable += len(items)
                continue
            if pid not in ids_before and pid not in ids_after:
                unaffected += len(items)
                continue
            frames = np.array([item.frames for item in items], np.intp)
            embeddings = np.concatenate([item.embeddings for item in items]).astype(np.float32)
            b_rank, b_col, b_score, b_scorer = before_set.decide(ids_before, embeddings)
            a_rank, a_col, a_score, a_scorer = after_set.decide(ids_after, embeddings)
            b_rank, b_col, b_score = _per_item(frames, b_rank, b_col, b_score, b_scorer)
            a_rank, a_col, a_score = _per_item(frames, a_rank, a_col, a_score, a_scorer)
            scored += len(items)
            recorded = np.array([_NAMES.index(item.decision) for item in items], np.int8)
            drift += int((recorded != b_rank).sum())
            for i in np.flatnonzero(a_rank != b_rank).tolist():
                changed += 1
                was, now = _NAMES[int(b_rank[i])], _NAMES[int(a_rank[i])]
                transitions[f"{was} -> {now}"] += 1
                after_key = a_scorer.slots[int(a_col[i])].key
                before_key = b_scorer.slots[int(b_col[i])].key
                by_category[after_key if a_rank[i] > b_rank[i] else before_key] += 1
                if len(found) < examples:
                    item = items[i]
                    found.append(
                        BacktestChange(
                            job_id=item.job_id,
                            image=item.image,
                            at=_iso(item.at) or "",
                            recorded=item.decision,
                            before=Outcome(
                                was, before_key if b_rank[i] else None, float(b_score[i])
                            ),
                            after=Outcome(now, after_key if a_rank[i] else None, float(a_score[i])),
                        )
                    )
        if on_progress is not None:
            on_progress(len(chunk))
    if read and not scored and sum(refused.values()) == read - duplicates:
        raise EmbeddingModelMismatch(
            f"every stored embedding in range comes from another model "
            f"({', '.join(sorted(refused))}); the policies are compiled for {model}: "
            "re-score needs embeddings of the same model"
        )
    return BacktestReport(
        policy_id=pid,
        live_version=live.by_id[pid].version if pid in live.by_id else None,
        candidate_version=candidate.version,
        candidate_hash=candidate.compiled_hash,
        model=model,
        since=_iso(since) or "",
        until=_iso(until),
        read=read,
        duplicates=duplicates,
        refused=dict(refused),
        unscorable=unscorable,
        unaffected=unaffected,
        scored=scored,
        changed=changed,
        transitions=dict(transitions.most_common()),
        by_category=dict(by_category.most_common()),
        drift=drift,
        examples=found,
        seconds=time.perf_counter() - started,
    )
