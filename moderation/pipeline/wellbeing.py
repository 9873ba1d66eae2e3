"""Reviewer wellbeing, in one place (:mod:`moderation.core.wellbeing` has the rules): each
reviewer's display settings, the exposure the server records as items are shown and unblurred,
break prompts, and the supervisors' view of everyone's exposure today.

:class:`~moderation.pipeline.review_desk.ReviewDesk` calls :meth:`Wellbeing.shown` when it hands
a reviewer an item and :meth:`Wellbeing.revealed` when the reviewer unblurs it, so the counts come
from what the server did, not from what a page reports. A failure to record exposure is logged
and never stops a reviewer's work (the counts are for people, not for the decision).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from moderation.core.review import ReviewItem
from moderation.core.wellbeing import (
    BreakPrompt,
    ReviewerDay,
    WellbeingSettings,
    break_due,
    day_of,
    parse_settings,
)
from moderation.exceptions import ModerationError
from moderation.metrics import metrics
from moderation.ports import WellbeingStore

__all__ = ["Wellbeing", "WellbeingState"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WellbeingState:
    """What the review page needs: the reviewer's settings, today's exposure, and a break
    prompt when one is due."""

    settings: WellbeingSettings
    today: ReviewerDay
    prompt: BreakPrompt | None


class Wellbeing:
    """The wellbeing use case over a :class:`~moderation.ports.WellbeingStore`.

    Args:
        store: where settings and exposure are kept.
        clock: unix seconds (tests pass a fake one).
    """

    def __init__(self, store: WellbeingStore, *, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock

    def settings(self, reviewer: str) -> WellbeingSettings:
        """The reviewer's settings (the protective defaults until it saved its own)."""
        return self.store.settings(reviewer) or WellbeingSettings()

    def save(self, reviewer: str, data: object) -> WellbeingSettings:
        """Validate and keep the reviewer's settings (every field; missing ones take their
        defaults).

        Raises:
            ReviewError: invalid settings (code ``review_settings_invalid``).
        """
        settings = parse_settings(data)
        self.store.save(reviewer, settings)
        return settings

    def shown(self, reviewer: str, item: ReviewItem) -> None:
        """The server handed ``item`` to ``reviewer`` (counted once per day)."""
        self._record(reviewer, item, revealed=False)

    def revealed(self, reviewer: str, item: ReviewItem) -> None:
        """``reviewer`` unblurred ``item``'s image."""
        self._record(reviewer, item, revealed=True)

    def state(self, reviewer: str) -> WellbeingState:
        """The reviewer's settings, today's exposure and whether a break is due now."""
        now = self.clock()
        settings = self.settings(reviewer)
        today = self.store.day(reviewer, day_of(now))
        return WellbeingState(
            settings=settings, today=today, prompt=break_due(settings, today, now)
        )

    def answer_break(self, reviewer: str, *, taken: bool) -> WellbeingState:
        """The reviewer took the break (``taken``) or dismissed the prompt: counted (in the
        store, and in ``moderation_review_break_prompts_total`` by what triggered it: ``critical``,
        ``time``, or ``none`` when the reviewer took a break unprompted), and the count towards
        the next prompt starts again."""
        now = self.clock()
        due = self.state(reviewer).prompt
        self.store.answer_break(reviewer, day=day_of(now), taken=taken, at=now)
        metrics().review_breaks.labels(
            due.reason if due else "none", "taken" if taken else "dismissed"
        ).inc()
        return self.state(reviewer)

    def exposure(self, day: str | None = None) -> list[ReviewerDay]:
        """Every reviewer's exposure on ``day`` (today by default), most critical items
        first."""
        days = self.store.days(day or day_of(self.clock()))
        return sorted(days, key=lambda d: (-d.critical, -d.shown, d.reviewer))

    def _record(self, reviewer: str, item: ReviewItem, *, revealed: bool) -> None:
        now = self.clock()
        try:
            self.store.record(
                reviewer,
                day=day_of(now),
                review_id=item.review_id,
                critical=item.critical,
                revealed=revealed,
                at=now,
            )
        except ModerationError as exc:
            log.warning("exposure of %s to %s not recorded: %s", reviewer, item.review_id, exc)
