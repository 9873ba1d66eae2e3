"""Bank entries that do not flood: per-entry states and the flood rule. Pure: no I/O.

An imported bank entry that suddenly matches far more than its usual rate (a benign meme that
got into a bank, a hash collision with a popular template) must not block thousands of items
before anyone looks. Each entry has a state:

- ``active`` (no row kept): matches act as the category says;
- ``quarantined``: its matches go to human review instead of being blocked (the score stands;
  the band is capped at review, and the evidence says why) until a person confirms or disables
  it; set by the flood rule, or by hand;
- ``confirmed``: a person looked and it stays: never quarantined again by the flood rule;
- ``disabled``: a person took it out: it is removed from the bank (a tombstone, like any
  removal), so it stops matching in every worker within ``banks.reload_s``.

The flood rule (:class:`FloodRule`) counts an entry's matches in fixed windows (``window_s``)
and keeps an exponentially weighted mean of its past windows (``baseline``). An entry floods
when its current window holds at least ``min_matches`` matches and more than ``factor`` times
its baseline (the baseline never counts below ``floor``, so a new entry's first burst is judged
against ``floor`` matches per window, not against zero)::

    floods  ⇔  count ≥ min_matches  ∧  count > factor × max(baseline, floor)
    baseline ← (1 − alpha) × baseline + alpha × count      (when a window closes; empty windows
                                                            in between count as zeros)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["EntryRate", "EntryState", "EntryStatus", "FloodRule"]


class EntryState(str, Enum):
    ACTIVE = "active"
    QUARANTINED = "quarantined"
    CONFIRMED = "confirmed"
    DISABLED = "disabled"


class EntryStatus(BaseModel):
    """The state of one bank entry, who set it and why."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bank: str
    entry_id: int
    state: EntryState
    #: ``flood`` (the rule), ``reviewer`` (the review page), ``api``, ``cli``.
    by: str
    reason: str = ""
    at: float = Field(description="unix seconds")
    #: The window's count and the baseline when the flood rule quarantined it.
    count: int | None = None
    baseline: float | None = None


@dataclass(frozen=True, slots=True)
class EntryRate:
    """An entry's match count in its current window and the mean of its past windows."""

    window_start: float
    count: int
    baseline: float


@dataclass(frozen=True, slots=True)
class FloodRule:
    """When an entry's matches count as a flood (see the module docstring)."""

    window_s: float = 600.0
    min_matches: int = 50
    factor: float = 10.0
    floor: float = 2.0
    alpha: float = 0.2

    def window_of(self, now: float) -> float:
        return math.floor(now / self.window_s) * self.window_s

    def observe(self, rate: EntryRate | None, matches: int, now: float) -> EntryRate:
        """The rate after ``matches`` more matches at ``now`` (a closed window folds into the
        baseline, each empty window between as a zero)."""
        window = self.window_of(now)
        if rate is None:
            return EntryRate(window, matches, 0.0)
        if window <= rate.window_start:
            return EntryRate(rate.window_start, rate.count + matches, rate.baseline)
        baseline = (1 - self.alpha) * rate.baseline + self.alpha * rate.count
        empty = round((window - rate.window_start) / self.window_s) - 1
        baseline *= (1 - self.alpha) ** max(0, min(empty, 1000))
        return EntryRate(window, matches, baseline)

    def floods(self, rate: EntryRate) -> bool:
        return rate.count >= self.min_matches and rate.count > self.factor * max(
            rate.baseline, self.floor
        )
