"""Decisions and verdicts: from category scores to allow / review / block, with an explanation.

Each category's score falls in one of three bands cut by its two thresholds::

    score <  review           -> ALLOW
    review <= score < block   -> REVIEW  (human review queue)
    score >= block            -> BLOCK

The verdict of an image is the most severe decision over every category of every policy applied
(BLOCK > REVIEW > ALLOW); ties go to the higher category severity, then to the larger margin past
the threshold. Pure: no I/O.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from typing import Any, Literal, TypeVar

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict

from moderation.policy import Action, Severity
from moderation.scoring import CategorySlot, ScoreBatch

__all__ = [
    "CategoryResult",
    "Decision",
    "PolicyRef",
    "PromptMatch",
    "Verdict",
    "bands",
    "verdict_at",
    "verdicts",
]

TOP_PROMPTS = 3


class Decision(str, Enum):
    ALLOW = "allow"
    REVIEW = "review"
    BLOCK = "block"

    @property
    def rank(self) -> int:
        return {"allow": 0, "review": 1, "block": 2}[self.value]


_BY_RANK = (Decision.ALLOW, Decision.REVIEW, Decision.BLOCK)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)


class PromptMatch(_Frozen):
    prompt: str
    kind: Literal["positive", "benign"]
    probability: float
    similarity: float


class CategoryResult(_Frozen):
    policy_id: str
    policy_version: int
    category_id: str
    severity: Severity
    score: float
    decision: Decision
    review_threshold: float
    block_threshold: float
    margin_review: float  # score - review threshold (>= 0: at least review)
    margin_block: float  # score - block threshold (>= 0: blocked)
    action: Action
    reason_code: str | None
    top_prompts: list[PromptMatch]

    @property
    def key(self) -> str:
        return f"{self.policy_id}/{self.category_id}"


class PolicyRef(_Frozen):
    id: str
    version: int
    policy_hash: str
    compiled_hash: str


class Verdict(_Frozen):
    """The outcome for one image, with enough context to explain and audit it."""

    decision: Decision
    action: Action
    reason_code: str | None
    policy_id: str | None  # the deciding category's policy (None when nothing was scored)
    category_id: str | None
    severity: Severity | None
    score: float
    categories: list[CategoryResult]  # every non-allow category, or the top-scoring one
    scores: dict[str, float]  # "policy/category" -> score, for every category applied
    policies: list[PolicyRef]
    model: str

    def explain(self) -> str:
        if not self.categories:
            return "allowed: no categories applied"
        top = self.categories[0]
        verb = {"allow": "allowed", "review": "sent to review", "block": "blocked"}[
            self.decision.value
        ]
        bound = (
            f"≥ block {top.block_threshold:.2f}"
            if self.decision is Decision.BLOCK
            else f"≥ review {top.review_threshold:.2f}"
            if self.decision is Decision.REVIEW
            else f"< review {top.review_threshold:.2f}"
        )
        prompt = top.top_prompts[0] if top.top_prompts else None
        tail = f"; best match {prompt.prompt!r} (p={prompt.probability:.2f})" if prompt else ""
        return f"{verb}: {top.key} ({top.severity.value}) score {top.score:.3f} {bound}{tail}"


def bands(batch: ScoreBatch) -> NDArray[np.int8]:
    """(N, C) band per image and category: 0 allow, 1 review, 2 block."""
    review = np.array([s.category.category.thresholds.review for s in batch.slots], np.float32)
    block = np.array([s.category.category.thresholds.block for s in batch.slots], np.float32)
    return ((batch.scores >= review).astype(np.int8) + (batch.scores >= block).astype(np.int8))


def _category_result(batch: ScoreBatch, row: int, col: int, band: int) -> CategoryResult:
    slot: CategorySlot = batch.slots[col]
    category = slot.category.category
    sims = batch.similarities[row, slot.columns]
    logits = batch.logit_scale * sims
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    names = [*slot.category.prompts, *slot.category.benign_prompts]
    order = np.argsort(-probs)[:TOP_PROMPTS]
    decision = _BY_RANK[band]
    score = float(batch.scores[row, col])
    band_action = getattr(category.actions, decision.value)
    return CategoryResult.model_construct(
        policy_id=slot.policy.id,
        policy_version=slot.policy.version,
        category_id=category.id,
        severity=category.severity,
        score=score,
        decision=decision,
        review_threshold=category.thresholds.review,
        block_threshold=category.thresholds.block,
        margin_review=score - category.thresholds.review,
        margin_block=score - category.thresholds.block,
        action=band_action.action,
        reason_code=band_action.reason_code,
        top_prompts=[
            PromptMatch.model_construct(
                prompt=names[i],
                kind="positive" if i < slot.n_positive else "benign",
                probability=float(probs[i]),
                similarity=float(sims[i]),
            )
            for i in order
        ],
    )


def _policy_refs(batch: ScoreBatch) -> list[PolicyRef]:
    seen: dict[str, PolicyRef] = {}
    for slot in batch.slots:
        p = slot.policy
        if p.id not in seen:
            seen[p.id] = PolicyRef(
                id=p.id, version=p.version, policy_hash=p.policy_hash,
                compiled_hash=p.compiled_hash,
            )
    return list(seen.values())


def verdict_at(
    batch: ScoreBatch,
    row: int,
    *,
    band_matrix: NDArray[np.int8] | None = None,
    policy_refs: list[PolicyRef] | None = None,
) -> Verdict:
    """The verdict for image ``row`` of ``batch``."""
    band_row = (bands(batch) if band_matrix is None else band_matrix)[row]
    scores = batch.scores[row]
    severity = np.array([s.category.category.severity.rank for s in batch.slots])
    margins = np.array(
        [
            scores[c] - (s.category.category.thresholds.block if band_row[c] == 2
                         else s.category.category.thresholds.review)
            for c, s in enumerate(batch.slots)
        ]
    )
    # Most severe first: band, then severity, then margin.
    order = np.lexsort((-margins, -severity, -band_row))
    flagged = [int(c) for c in order if band_row[c] > 0]
    shown = flagged or [int(order[0])]
    results = [_category_result(batch, row, c, int(band_row[c])) for c in shown]
    top = results[0]
    return Verdict.model_construct(
        decision=top.decision,
        action=top.action,
        reason_code=top.reason_code,
        policy_id=top.policy_id,
        category_id=top.category_id,
        severity=top.severity,
        score=top.score,
        categories=results,
        scores={
            f"{s.policy.id}/{s.category.id}": round(float(scores[c]), 6)
            for c, s in enumerate(batch.slots)
        },
        policies=policy_refs if policy_refs is not None else _policy_refs(batch),
        model=batch.slots[0].policy.model.id,
    )


_M = TypeVar("_M", bound=BaseModel)


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while building many acyclic objects (a 10k-image
    batch is ~130k small objects; without this, repeated collections cost more than building
    them). The previous state is restored; concurrent callers only ever re-enable what they
    themselves disabled."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _construct(cls: type[_M], values: dict[str, Any]) -> _M:
    """``cls.model_construct(**values)`` for trusted, complete ``values``, without its per-field
    default handling (the hot path builds ~10 objects per image). Tests check it gives
    objects equal to ``model_construct``'s and that they serialize identically."""
    obj = cls.__new__(cls)
    object.__setattr__(obj, "__dict__", values)
    object.__setattr__(obj, "__pydantic_fields_set__", set(values))
    object.__setattr__(obj, "__pydantic_extra__", None)
    object.__setattr__(obj, "__pydantic_private__", None)
    return obj


class _SlotPlan:
    """Per-category constants of a batch, looked up once instead of once per image."""

    __slots__ = ("actions", "category", "key", "kinds", "names", "policy", "slot")

    def __init__(self, slot: CategorySlot) -> None:
        self.slot = slot
        self.policy = slot.policy
        self.category = slot.category.category
        self.key = f"{slot.policy.id}/{slot.category.id}"
        self.names = [*slot.category.prompts, *slot.category.benign_prompts]
        self.kinds = ["positive" if i < slot.n_positive else "benign"
                      for i in range(len(self.names))]
        self.actions = [getattr(self.category.actions, d.value) for d in _BY_RANK]


def verdicts(batch: ScoreBatch) -> list[Verdict]:
    """Verdicts for every image of ``batch``, in order.

    Same result as ``[verdict_at(batch, i) for i in range(len(batch))]``, with the numeric work
    (bands, margins, ordering, prompt softmax and top-k) done for the whole batch at once, and
    only for the categories a verdict shows; only the result objects are built per image.
    """
    n, n_slots = batch.scores.shape
    if n == 0:
        return []
    with _gc_paused():
        return _verdicts(batch, n, n_slots)


def _verdicts(batch: ScoreBatch, n: int, n_slots: int) -> list[Verdict]:
    plans = [_SlotPlan(s) for s in batch.slots]
    refs = _policy_refs(batch)
    model = batch.slots[0].policy.model.id
    band_matrix = bands(batch)
    review = np.array([p.category.thresholds.review for p in plans], np.float32)
    block = np.array([p.category.thresholds.block for p in plans], np.float32)
    severity = np.broadcast_to(
        np.array([p.category.severity.rank for p in plans]), (n, n_slots)
    )
    margins = batch.scores - np.where(band_matrix == 2, block, review)
    orders = np.lexsort((-margins, -severity, -band_matrix), axis=-1)
    n_shown = np.maximum((band_matrix > 0).sum(axis=1), 1)
    # The (image, category) pairs the verdicts show, row-major in display order.
    shown = np.arange(n_slots)[None, :] < n_shown[:, None]
    rows = np.repeat(np.arange(n), n_shown)
    cols = orders[shown]
    # Softmax over each shown category's prompts, and its top prompts.
    k = TOP_PROMPTS
    top_idx = np.zeros((len(cols), k), np.intp)
    top_p = np.zeros((len(cols), k), np.float32)
    top_s = np.zeros((len(cols), k), np.float32)
    widths = np.zeros(len(cols), np.intp)
    for c, plan in enumerate(plans):
        sel = np.flatnonzero(cols == c)
        if not len(sel):
            continue
        sims = batch.similarities[rows[sel][:, None], plan.slot.columns[None, :]]
        logits = batch.logit_scale * sims
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        order = np.argsort(-probs, axis=1)[:, :k]
        width = order.shape[1]
        widths[sel] = width
        top_idx[sel, :width] = order
        top_p[sel, :width] = np.take_along_axis(probs, order, axis=1)
        top_s[sel, :width] = np.take_along_axis(sims, order, axis=1)

    scores = batch.scores.astype(np.float64).tolist()
    pair_bands = band_matrix[rows, cols].tolist()
    pair_cols, pair_widths = cols.tolist(), widths.tolist()
    pair_idx = top_idx.tolist()
    pair_p, pair_s = top_p.astype(np.float64).tolist(), top_s.astype(np.float64).tolist()
    keys = [p.key for p in plans]
    counts = n_shown.tolist()

    out: list[Verdict] = []
    start = 0
    for i in range(n):
        row_scores = scores[i]
        results = []
        end = start + counts[i]
        for pair in range(start, end):
            c, band, width = pair_cols[pair], pair_bands[pair], pair_widths[pair]
            plan, score = plans[c], row_scores[c]
            category, action = plan.category, plan.actions[band]
            names, kinds = plan.names, plan.kinds
            results.append(
                _construct(CategoryResult, {
                    "policy_id": plan.policy.id,
                    "policy_version": plan.policy.version,
                    "category_id": category.id,
                    "severity": category.severity,
                    "score": score,
                    "decision": _BY_RANK[band],
                    "review_threshold": category.thresholds.review,
                    "block_threshold": category.thresholds.block,
                    "margin_review": score - category.thresholds.review,
                    "margin_block": score - category.thresholds.block,
                    "action": action.action,
                    "reason_code": action.reason_code,
                    "top_prompts": [
                        _construct(PromptMatch, {
                            "prompt": names[j], "kind": kinds[j],
                            "probability": p, "similarity": q,
                        })
                        for j, p, q in zip(
                            pair_idx[pair][:width], pair_p[pair], pair_s[pair], strict=False
                        )
                    ],
                })
            )
        start = end
        head = results[0]
        out.append(
            _construct(Verdict, {
                "decision": head.decision,
                "action": head.action,
                "reason_code": head.reason_code,
                "policy_id": head.policy_id,
                "category_id": head.category_id,
                "severity": head.severity,
                "score": head.score,
                "categories": results,
                "scores": {key: round(v, 6) for key, v in zip(keys, row_scores, strict=True)},
                "policies": refs,
                "model": model,
            })
        )
    return out
