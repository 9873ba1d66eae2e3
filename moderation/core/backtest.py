"""A backtest's values: what scoring a group of history shards needs (:class:`BacktestTask`, the
message a worker receives), what it returns (:class:`BacktestPartial`, counts), and how the
counts of every group add up (:func:`merge_partials`). Pure: no I/O.

Merging is order-free: counts add, and the examples kept are the ``examples`` earliest changed
items by ``(time, job id)`` over all groups, so scoring the groups here or on the workers, in any
order, gives the same report.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from moderation.core.data import Data

__all__ = [
    "COUNTS",
    "BacktestChange",
    "BacktestPartial",
    "BacktestReport",
    "BacktestTask",
    "Outcome",
    "merge_partials",
]


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
    at: str  # ISO 8601, UTC, milliseconds
    recorded: str  # the decision at the time
    before: Outcome  # the live policies, re-scored now
    after: Outcome  # with the candidate version
    tenant: str = "default"

    @property
    def order(self) -> tuple[str, str]:
        return (self.at, self.job_id)


@dataclass(frozen=True, slots=True)
class BacktestTask(Data):
    """Everything a process needs to score shard groups of one backtest, as JSON.

    The candidate travels as its policy text and content hash: the receiving worker loads the
    text, checks ``candidate_hash`` and compiles it through its compile cache for its model,
    which must be ``model``. ``live`` is what the backtest was planned against (policy id ->
    policy content hash): a worker serving anything else refuses rather than count against
    other policies.
    """

    policy_id: str
    candidate_text: str
    candidate_hash: str
    live: dict[str, str]
    model: str
    since: float
    until: float | None = None
    tenant: str | None = None
    examples: int = 20


@dataclass(frozen=True, slots=True)
class BacktestPartial(Data):
    """The counts of one shard group (or of several, merged)."""

    shards: int = 0
    missing: int = 0  # shards listed but gone when read (the retention sweep)
    read: int = 0
    duplicates: int = 0
    refused: dict[str, int] = field(default_factory=dict)  # model id -> rows refused
    unscorable: int = 0  # their requested policy is no longer loaded
    unaffected: int = 0  # the candidate's policy did not apply to them
    scored: int = 0
    changed: int = 0
    transitions: dict[str, int] = field(default_factory=dict)  # "allow -> block" -> items
    by_category: dict[str, int] = field(default_factory=dict)
    drift: int = 0
    examples: list[BacktestChange] = field(default_factory=list)


#: The plain counts of a :class:`BacktestPartial` (they add up).
COUNTS = (
    "shards",
    "missing",
    "read",
    "duplicates",
    "unscorable",
    "unaffected",
    "scored",
    "changed",
    "drift",
)


def merge_partials(partials: Iterable[BacktestPartial], *, examples: int) -> BacktestPartial:
    """The counts of all ``partials`` together, keeping the ``examples`` earliest changes."""
    sums: Counter[str] = Counter()
    refused: Counter[str] = Counter()
    transitions: Counter[str] = Counter()
    by_category: Counter[str] = Counter()
    found: list[BacktestChange] = []
    for part in partials:
        for name in COUNTS:
            sums[name] += getattr(part, name)
        refused.update(part.refused)
        transitions.update(part.transitions)
        by_category.update(part.by_category)
        found.extend(part.examples)
    found.sort(key=lambda change: change.order)
    return BacktestPartial(
        **{name: sums[name] for name in COUNTS},
        refused=_ordered(refused),
        transitions=_ordered(transitions),
        by_category=_ordered(by_category),
        examples=found[:examples],
    )


def _ordered(counts: Counter[str]) -> dict[str, int]:
    """Most first, then by name (the same dict whatever order the groups came in)."""
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


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
    tenant: str | None = None  # only this tenant's items (None: every tenant)
    shards: int = 0
    missing: int = 0  # shards listed but gone when read (deleted by the retention sweep)
    groups: int = 0
    where: str = "local"  # local | workers
