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

**Cost order.** Each signal declares a ``cost`` per image (prompts 0: free once the image is
embedded; hash banks 1; a classifier 10; OCR more). The scorer runs the signals cheapest first,
and a signal of cost at least ``skip_cost`` (one that runs a model per image) runs only on the
rows whose decision it could still change: a row is *settled* for it when a category already
scored blocks it (after allow-lists and quarantine caps) with a severity at least the highest
severity the signal could act with (its own categories', and those of the combined categories it
is a member of). Block is the most severe decision, so a settled row's decision and severity
cannot change; the signal's categories are left unscored on it (band allow, no score in the
verdict) and the verdict lists the signal as skipped, with the category that settled it
(:class:`SignalSkip`). ``complete=True`` scores every signal on every row (evaluation and
calibration measure each signal alone).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from moderation.core.compiled import CompiledCategory, CompiledPolicy
from moderation.core.data import Data
from moderation.core.policy import COMBINE_SIGNAL, Combine, Quorum
from moderation.exceptions import PolicyError

__all__ = [
    "SKIP_COST",
    "CategorySlot",
    "Combined",
    "Evidence",
    "FeatureBatch",
    "ScoreBatch",
    "Scorer",
    "SignalScorer",
    "SignalScorerFactory",
    "SignalScores",
    "SignalSkip",
    "Suppression",
    "Suppressor",
    "UnknownSignalError",
    "combined_band",
    "member_bands",
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
class SignalSkip:
    """A signal left unrun on some rows of a batch because their decision was settled.

    Attributes:
        signal: the signal's name.
        columns: its categories' columns.
        rows: (N,) whether it was skipped on each row.
        settled_by: (N,) the column whose block settled each skipped row (-1 elsewhere).
    """

    signal: str
    columns: NDArray[np.intp]
    rows: NDArray[np.bool_]
    settled_by: NDArray[np.intp]


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


def combined_band(
    own: NDArray[np.int8], scores: NDArray[np.float32], combined: Combined
) -> NDArray[np.int8]:
    """(N,) the band of a combined category from its members' own bands and scores."""
    members = list(combined.members)
    rule = combined.rule
    member = own[:, members]
    reached_block = member == 2
    reached_review = member >= 1
    block = reached_block.all(axis=1) if rule.block is Quorum.ALL else reached_block.any(axis=1)
    review = reached_review.all(axis=1) if rule.review is Quorum.ALL else reached_review.any(axis=1)
    if rule.disagree_review is not None:
        spread = scores[:, members].max(axis=1) - scores[:, members].min(axis=1)
        review = review | (spread > rule.disagree_review)
    return np.where(block, 2, np.where(review, 1, 0)).astype(np.int8)


_BAND_NAMES = ("allow", "review", "block")

#: Signals of at least this cost per image (a model run: a classifier, OCR) are skipped on rows
#: whose decision is settled; cheaper ones (prompts 0, hash banks 1) always run.
SKIP_COST = 5.0


class CombinedScores:
    """The scores and evidence of the combined columns (members' contributions)."""

    def __init__(
        self,
        combined: Sequence[Combined],
        slots: Sequence[CategorySlot],
        scores: NDArray[np.float32],
        own_bands: NDArray[np.int8],
        unscored: NDArray[np.bool_] | None = None,
    ) -> None:
        self.combined = tuple(combined)
        self.slots = slots
        self._all = scores
        self._bands = own_bands
        #: (N, C) cells a skipped signal left unscored (cost order), or None.
        self._unscored = unscored
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
                            "band": (
                                "not run"
                                if self._unscored is not None and self._unscored[row, member]
                                else _BAND_NAMES[int(self._bands[row, member])]
                            ),
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
    #: Signals left unrun on settled rows (cost order), in the order they were considered.
    skips: tuple[SignalSkip, ...] = ()

    def skipped(self, row: int) -> list[tuple[SignalSkip, int]]:
        """The signals skipped on ``row``, each with the column that settled it."""
        return [(skip, int(skip.settled_by[row])) for skip in self.skips if skip.rows[row]]

    def unscored(self) -> NDArray[np.bool_] | None:
        """(N, C) the cells a skipped signal left unscored (None: none)."""
        if not self.skips:
            return None
        out = np.zeros(self.scores.shape, bool)
        for skip in self.skips:
            out[np.ix_(skip.rows, skip.columns)] = True
        return out

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
        costs: Mapping[str, float] | None = None,
        skip_cost: float = SKIP_COST,
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
        cost_of = dict(costs or {})
        #: Per scorer: its signal's name, and the severity rank it could act with when it may
        #: be skipped on settled rows (None: always runs).
        self._plans: list[tuple[str, int | None]] = []
        member_of: dict[int, list[Combined]] = {}
        for combined in self.combined:
            for member in combined.members:
                member_of.setdefault(member, []).append(combined)
        # cheapest first (stable: equal costs keep the policies' order)
        for name, group in sorted(groups.items(), key=lambda item: cost_of.get(item[0], 0.0)):
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
            reach = [
                *(s.category.category.severity.rank for s in group),
                *(
                    slots[c.column].category.category.severity.rank
                    for s in group
                    for c in member_of.get(s.column, [])
                ),
            ]
            skippable = cost_of.get(name, 0.0) >= skip_cost
            self._plans.append((name, max(reach) if skippable else None))
        self._severity = np.array([s.category.category.severity.rank for s in slots], np.int8)
        #: Columns that act on their own (not members, not combined: those are resolved
        #: together once their members are scored).
        self._acting = np.ones(len(slots), bool)
        for combined in self.combined:
            self._acting[list(combined.members)] = False
            self._acting[combined.column] = False

    def score(self, batch: FeatureBatch, *, complete: bool = False) -> ScoreBatch:
        """Score every row of ``batch`` against every category, signals cheapest first; a
        costly signal is skipped on rows already settled (see the module docstring) unless
        ``complete``."""
        n = len(batch)
        scores = np.zeros((n, len(self.slots)), dtype=np.float32)
        parts: list[tuple[SignalScores, NDArray[np.intp]]] = []
        ceiling: NDArray[np.int8] | None = None
        suppression = self.suppressor.suppress(batch, self.slots) if self.suppressor else None
        if suppression is not None and suppression.pairs:
            ceiling = np.full((n, len(self.slots)), 2, np.int8)
            for row, col in suppression.pairs:
                ceiling[row, col] = 0
        scored = np.zeros(len(self.slots), bool)
        skips: list[SignalSkip] = []
        for (scorer, columns), (name, reach) in zip(self._scorers, self._plans, strict=True):
            rows: NDArray[np.intp] | None = None
            if reach is not None and not complete and scored.any() and n:
                settled, by = self._settled(scores, ceiling, scored, reach)
                if settled.any():
                    skips.append(SignalSkip(name, columns, settled, by))
                    rows = np.flatnonzero(~settled)
            part = (
                scorer.score(batch)
                if rows is None
                else _Rows.score(scorer, batch, rows, name, len(columns))
            )
            scores[:, columns] = part.scores
            parts.append((part, columns))
            scored[columns] = True
            capped = getattr(part, "ceiling", None)  # a signal may cap bands (hash banks)
            if capped is not None:
                if ceiling is None:
                    ceiling = np.full((n, len(self.slots)), 2, np.int8)
                ceiling[:, columns] = np.minimum(ceiling[:, columns], capped)
        for skip in skips:  # an unscored cell never reaches a band
            if ceiling is None:
                ceiling = np.full((n, len(self.slots)), 2, np.int8)
            ceiling[np.ix_(skip.rows, skip.columns)] = 0
        if self.combined:
            own = member_bands(scores, self.slots, ceiling)
            unscored = None
            if skips:
                unscored = np.zeros(scores.shape, bool)
                for skip in skips:
                    unscored[np.ix_(skip.rows, skip.columns)] = True
            part = CombinedScores(self.combined, self.slots, scores, own, unscored)
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
            skips=tuple(skips),
        )

    def _settled(
        self,
        scores: NDArray[np.float32],
        ceiling: NDArray[np.int8] | None,
        scored: NDArray[np.bool_],
        reach: int,
    ) -> tuple[NDArray[np.bool_], NDArray[np.intp]]:
        """(N,) rows already blocked by a scored category of severity ``>= reach``, and (N,)
        the column that blocks each (the most severe; -1 where none)."""
        bands = member_bands(scores, self.slots, ceiling)
        blocking = (bands == 2) & (self._acting & scored)[None, :]
        for combined in self.combined:
            members = list(combined.members)
            done = [m for m in members if scored[m]]
            if len(done) == len(members):
                band = combined_band(bands, scores, combined)
            elif done and combined.rule.block is Quorum.ANY:
                # one scored member in its block band blocks, whatever the others score
                band = np.where((bands[:, done] == 2).any(axis=1), 2, 0).astype(np.int8)
            else:
                continue
            if ceiling is not None:
                band = np.minimum(band, ceiling[:, combined.column])
            blocking[:, combined.column] = band == 2
        strength = np.where(blocking, self._severity[None, :], 0)
        by = strength.argmax(axis=1)
        settled = strength[np.arange(len(by)), by] >= reach
        return settled, np.where(settled, by, -1).astype(np.intp)


class _Rows:
    """A signal's scores of some rows of a batch, spread back over every row: the skipped rows
    score 0 and explain themselves as skipped."""

    def __init__(self, part: SignalScores, rows: NDArray[np.intp], n: int, signal: str) -> None:
        self.part = part
        self.rows = rows
        self.signal = signal
        self._local = np.full(n, -1, np.intp)
        self._local[rows] = np.arange(len(rows))
        inner = part.scores
        self._scores = np.zeros((n, inner.shape[1]), np.float32)
        self._scores[rows] = inner
        capped = getattr(part, "ceiling", None)
        if capped is not None:
            self.ceiling = np.full((n, inner.shape[1]), 2, np.int8)
            self.ceiling[rows] = capped

    @classmethod
    def score(
        cls,
        scorer: SignalScorer,
        batch: FeatureBatch,
        rows: NDArray[np.intp],
        signal: str,
        width: int,
    ) -> SignalScores:
        picked = rows.tolist()
        subset = FeatureBatch(
            embeddings=batch.embeddings[rows],
            features={name: [values[i] for i in picked] for name, values in batch.features.items()},
            groups=None if batch.groups is None else [batch.groups[i] for i in picked],
        )
        part = scorer.score(subset) if picked else _Empty(width)
        return cls(part, rows, len(batch), signal)

    @property
    def scores(self) -> NDArray[np.float32]:
        return self._scores

    def evidence(self, rows: NDArray[np.intp], cols: NDArray[np.intp]) -> list[list[Evidence]]:
        local = self._local[rows]
        ran = local >= 0
        found = iter(self.part.evidence(local[ran], cols[ran]) if ran.any() else [])
        skipped = Evidence(self.signal, "not run: decision already settled", 0.0, {})
        return [next(found) if r else [skipped] for r in ran.tolist()]


class _Empty:
    """No row to score: a signal's empty result (its model never runs)."""

    def __init__(self, width: int) -> None:
        self._scores = np.zeros((0, width), np.float32)

    @property
    def scores(self) -> NDArray[np.float32]:
        return self._scores

    def evidence(self, rows: NDArray[np.intp], cols: NDArray[np.intp]) -> list[list[Evidence]]:
        return [[] for _ in range(len(rows))]


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
