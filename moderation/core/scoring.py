r"""Category scores from signals: the generic half of scoring. Pure: numpy only.

A *signal* turns images into per-category scores in ``[0, 1]`` (the CLIP prompts signal, a hash
bank, a classifier; see :mod:`moderation.signals`). Each category of a compiled policy names its
signal; a :class:`Scorer` groups the categories of the policies it serves by signal, asks each
signal for a scorer of its categories, and stacks their scores into one ``(N, C)`` matrix::

    scores[i, c] = signal(c).score(features of image i)[c]        ∈ [0, 1]

Every category is scored independently, so adding a category never changes another's score.
Besides its scores, a signal explains them: :meth:`SignalScores.evidence` returns what made a
category score high for an image (the top prompts, the matched bank entry), asked only for the
categories a verdict shows.

A combined category (``signal: combine``, :class:`~moderation.core.policy.Combine`) is scored by
no signal of its own: its column holds the highest score of its members and its evidence lists
each member's contribution (score, thresholds, band); its band comes from its members' bands
(:func:`moderation.core.decision.bands`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from moderation.core.compiled import CompiledCategory, CompiledPolicy
from moderation.core.data import Data
from moderation.core.policy import COMBINE_SIGNAL, Combine
from moderation.exceptions import PolicyError

__all__ = [
    "CategorySlot",
    "Combined",
    "Evidence",
    "FeatureBatch",
    "ScoreBatch",
    "Scorer",
    "SignalScorer",
    "SignalScorerFactory",
    "SignalScores",
    "Suppression",
    "Suppressor",
    "UnknownSignalError",
]


@dataclass(frozen=True, slots=True)
class Evidence(Data):
    """One reason behind a category's score, as its signal reports it.

    ``label`` is what matched (a prompt, a bank entry), ``score`` how strongly (a probability, a
    similarity); ``details`` holds the signal's own fields (prompt kind and cosine similarity;
    bank, distance and hash quality).
    """

    signal: str
    label: str
    score: float
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Combined:
    """A combined category's column, its members' columns and its rule."""

    column: int
    members: tuple[int, ...]
    rule: Combine


def member_bands(
    scores: NDArray[np.float32], slots: Sequence[CategorySlot], ceiling: NDArray[np.int8] | None
) -> NDArray[np.int8]:
    """(N, C) each column's own band (0 allow, 1 review, 2 block) by its thresholds, capped by
    ``ceiling``; combined columns are not resolved here."""
    review = np.array([s.category.category.thresholds.review for s in slots], np.float32)
    block = np.array([s.category.category.thresholds.block for s in slots], np.float32)
    out = (scores >= review).astype(np.int8) + (scores >= block).astype(np.int8)
    if ceiling is not None:
        out = np.minimum(out, ceiling)
    return out


_BAND_NAMES = ("allow", "review", "block")


class CombinedScores:
    """The scores and evidence of the combined columns (members' contributions)."""

    def __init__(
        self,
        combined: Sequence[Combined],
        slots: Sequence[CategorySlot],
        scores: NDArray[np.float32],
        own_bands: NDArray[np.int8],
    ) -> None:
        self.combined = tuple(combined)
        self.slots = slots
        self._all = scores
        self._bands = own_bands
        self._scores = np.stack(
            [scores[:, list(c.members)].max(axis=1) for c in self.combined], axis=1
        ).astype(np.float32)

    @property
    def scores(self) -> NDArray[np.float32]:
        return self._scores

    def evidence(self, rows: NDArray[np.intp], cols: NDArray[np.intp]) -> list[list[Evidence]]:
        out: list[list[Evidence]] = []
        for row, col in zip(rows.tolist(), cols.tolist(), strict=True):
            rule = self.combined[col].rule
            items = []
            for member in self.combined[col].members:
                slot = self.slots[member]
                category = slot.category.category
                items.append(
                    Evidence(
                        category.signal,
                        category.id,
                        float(self._all[row, member]),
                        {
                            "category": slot.key,
                            "review_threshold": category.thresholds.review,
                            "block_threshold": category.thresholds.block,
                            "band": _BAND_NAMES[int(self._bands[row, member])],
                            "rule": rule.model_dump(mode="json", exclude_none=True),
                        },
                    )
                )
            out.append(items)
        return out


class UnknownSignalError(PolicyError):
    """A compiled category names a signal that is not registered in this process."""

    code = "signal_unknown"


@dataclass(frozen=True, kw_only=True, slots=True)
class CategorySlot:
    """One category of one compiled policy, and its column in a score matrix."""

    policy: CompiledPolicy
    category: CompiledCategory
    column: int

    @property
    def key(self) -> str:
        return f"{self.policy.id}/{self.category.id}"


@dataclass(frozen=True, slots=True)
class FeatureBatch:
    """What signals score, for N images (one row per image or animation frame).

    Attributes:
        embeddings: (N, D) L2-normalized image embeddings of the model the policies were
            compiled for.
        features: per signal name, one value per row that the signal extracted from the decoded
            image itself (:meth:`moderation.ports.Signal.features`); absent for signals that
            need nothing but the embedding.
        groups: per row, the index of the image (video, animation) it is a frame of; None:
            every row is an image of its own. Signals that judge a video as a whole (vPDQ)
            read it.
    """

    embeddings: NDArray[np.float32]
    features: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    groups: Sequence[int] | None = None

    def group_rows(self) -> list[list[int]]:
        """The rows of each image, in order."""
        if self.groups is None:
            return [[row] for row in range(len(self))]
        out: dict[int, list[int]] = {}
        for row, group in enumerate(self.groups):
            out.setdefault(group, []).append(row)
        return list(out.values())

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])


class SignalScores(Protocol):
    """A signal's scores of N rows against its C_s categories."""

    @property
    def scores(self) -> NDArray[np.float32]:
        """(N, C_s) scores in [0, 1], columns in the order of the scorer's slots."""
        ...

    def evidence(self, rows: NDArray[np.intp], cols: NDArray[np.intp]) -> list[list[Evidence]]:
        """The evidence of each (row, local column) pair, strongest first."""
        ...


class SignalScorer(Protocol):
    """Scores batches against a fixed list of categories of one signal."""

    def score(self, batch: FeatureBatch) -> SignalScores: ...


#: Builds the scorer of one signal for the given categories (``Signal.scorer``).
SignalScorerFactory = Callable[[Sequence[CategorySlot]], SignalScorer]


@dataclass(frozen=True, slots=True)
class Suppression:
    """(row, column) pairs an allow-list takes out of action (band capped at allow), each with
    the evidence that says why (shown in the verdict first)."""

    pairs: Mapping[tuple[int, int], Evidence]


class Suppressor(Protocol):
    """Finds known-benign content (allow-lists, negative banks) that suppresses categories."""

    def suppress(
        self, batch: FeatureBatch, slots: Sequence[CategorySlot]
    ) -> Suppression | None: ...


@dataclass(frozen=True, kw_only=True)
class ScoreBatch:
    """Scores of N rows against C categories, with the evidence behind them.

    Attributes:
        scores: (N, C) category scores in [0, 1].
        slots: the C categories, in column order.
    """

    scores: NDArray[np.float32]
    slots: tuple[CategorySlot, ...]
    parts: tuple[tuple[SignalScores, NDArray[np.intp]], ...]
    part_of: NDArray[np.intp]  # (C,) index into parts of each column's signal
    local: NDArray[np.intp]  # (C,) the column's index within its signal's scores
    #: (N, C) the highest band each score may reach (2: block, no cap; 1: review at most: a
    #: match of a quarantined bank entry; 0: allow: suppressed by an allow-list), or None when
    #: nothing caps anything.
    ceiling: NDArray[np.int8] | None = None
    #: Why a (row, column) is suppressed (the allow-list's evidence, shown first).
    suppressed: Mapping[tuple[int, int], Evidence] = field(default_factory=dict)
    #: The combined categories' columns (their bands come from their members').
    combined: tuple[Combined, ...] = ()

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def evidence(self, rows: NDArray[np.intp], cols: NDArray[np.intp]) -> list[list[Evidence]]:
        """Evidence of each (row, column) pair, asked of each column's signal."""
        out: list[list[Evidence]] = [[] for _ in range(len(rows))]
        which = self.part_of[cols]
        for index, (part, _) in enumerate(self.parts):
            selected = np.flatnonzero(which == index)
            if not len(selected):
                continue
            found = part.evidence(rows[selected], self.local[cols[selected]])
            for position, items in zip(selected.tolist(), found, strict=True):
                out[position] = items
        if self.suppressed:
            for position, (row, col) in enumerate(zip(rows.tolist(), cols.tolist(), strict=True)):
                why = self.suppressed.get((row, col))
                if why is not None:
                    out[position] = [why, *out[position]]
        return out


class Scorer:
    """Scores feature batches against a fixed list of compiled policies.

    Raises:
        ValueError: the list is empty or its policies come from different models.
        UnknownSignalError: a category names a signal missing from ``signals``.
    """

    def __init__(
        self,
        policies: Sequence[CompiledPolicy],
        signals: Mapping[str, SignalScorerFactory],
        *,
        suppressor: Suppressor | None = None,
    ) -> None:
        if not policies:
            raise ValueError("Scorer needs at least one compiled policy")
        models = {p.model.id for p in policies}
        if len(models) != 1:
            raise ValueError(f"compiled policies come from different models: {sorted(models)}")
        self.policies = tuple(policies)
        self.suppressor = suppressor
        slots: list[CategorySlot] = []
        groups: dict[str, list[CategorySlot]] = {}
        for policy in policies:
            for category in policy.categories:
                slot = CategorySlot(policy=policy, category=category, column=len(slots))
                slots.append(slot)
                groups.setdefault(category.signal, []).append(slot)
        self.slots = tuple(slots)
        self.combined = _combined(groups.pop(COMBINE_SIGNAL, []), self.slots)
        self._combined_columns = np.array([c.column for c in self.combined], np.intp)
        self._scorers: list[tuple[SignalScorer, NDArray[np.intp]]] = []
        self._part_of = np.zeros(len(slots), np.intp)
        self._local = np.zeros(len(slots), np.intp)
        for name, group in groups.items():
            factory = signals.get(name)
            if factory is None:
                raise UnknownSignalError(
                    f"category {group[0].key} uses signal {name!r}, which is not registered "
                    f"(registered: {', '.join(sorted(signals)) or 'none'})"
                )
            columns = np.array([s.column for s in group], np.intp)
            self._part_of[columns] = len(self._scorers)
            self._local[columns] = np.arange(len(group))
            self._scorers.append((factory(group), columns))

    def score(self, batch: FeatureBatch) -> ScoreBatch:
        """Score every row of ``batch`` against every category."""
        n = len(batch)
        scores = np.empty((n, len(self.slots)), dtype=np.float32)
        parts: list[tuple[SignalScores, NDArray[np.intp]]] = []
        ceiling: NDArray[np.int8] | None = None
        for scorer, columns in self._scorers:
            part = scorer.score(batch)
            scores[:, columns] = part.scores
            parts.append((part, columns))
            capped = getattr(part, "ceiling", None)  # a signal may cap bands (hash banks)
            if capped is not None:
                if ceiling is None:
                    ceiling = np.full((n, len(self.slots)), 2, np.int8)
                ceiling[:, columns] = capped
        suppression = self.suppressor.suppress(batch, self.slots) if self.suppressor else None
        if suppression is not None and suppression.pairs:
            if ceiling is None:
                ceiling = np.full((n, len(self.slots)), 2, np.int8)
            for row, col in suppression.pairs:
                ceiling[row, col] = 0
        if self.combined:
            own = member_bands(scores, self.slots, ceiling)
            part = CombinedScores(self.combined, self.slots, scores, own)
            scores[:, self._combined_columns] = part.scores
            self._part_of[self._combined_columns] = len(parts)
            self._local[self._combined_columns] = np.arange(len(self.combined))
            parts.append((part, self._combined_columns))
        return ScoreBatch(
            scores=scores,
            slots=self.slots,
            parts=tuple(parts),
            part_of=self._part_of,
            local=self._local,
            ceiling=ceiling,
            suppressed=suppression.pairs if suppression is not None else {},
            combined=self.combined,
        )


def _combined(group: Sequence[CategorySlot], slots: Sequence[CategorySlot]) -> tuple[Combined, ...]:
    """Each combined category's members resolved to columns of the same policy.

    Raises:
        PolicyError: a member is missing or combined itself (policy loading refuses both first,
            with their lines).
    """
    out = []
    for slot in group:
        rule = slot.category.category.combine
        columns = {(s.policy.id, s.category.id): s for s in slots}
        members = []
        for member in rule.of if rule is not None else ():
            found = columns.get((slot.policy.id, member))
            if found is None or found.category.signal == COMBINE_SIGNAL:
                raise PolicyError(
                    f"category {slot.key}: member {member!r} is not a scored category of "
                    f"policy {slot.policy.id!r}",
                    code="policy_invalid",
                )
            members.append(found.column)
        if rule is None or len(members) < 2:
            raise PolicyError(f"category {slot.key}: needs two members", code="policy_invalid")
        out.append(Combined(slot.column, tuple(members), rule))
    return tuple(out)
