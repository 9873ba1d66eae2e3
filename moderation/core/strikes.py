"""Uploader strikes (EU DSA Art. 23: measures against misuse): decisions against an uploader's
content accrue strikes, strikes decay, and thresholds map the strikes in force to an action.
Pure: no I/O.

An uploader is a tenant's pseudonymous id for the person who posted the content
(:data:`UPLOADER_ID_PATTERN`; never an e-mail address or a name), carried by the job. Uploader ids
are per tenant: ``u1`` of one tenant and ``u1`` of another are different people and never share
strikes, history or actions.

A decision that restricts content (an automated ``block``, a reviewer's ``remove``) gives the
job's uploader one strike worth :attr:`StrikeRules.points` of the category's severity; one job
gives at most one strike (a later decision on the same job replaces it). A strike counts for
:attr:`StrikeRules.decay_days` after its decision. An overturned decision's strike is removed.

The strikes in force (the sum of their points) map to the action of the highest threshold they
reach (``warn`` < ``restrict`` < ``suspend``): :func:`next_action`. Rules:

- a warning comes before a suspension: an uploader never warned is warned, not suspended, even
  when its strikes reach the suspension threshold at once (the next strike suspends);
- an action only rises with new strikes; when strikes are removed (an overturn) or decay, the
  action falls to what the remaining strikes reach (:func:`lifted_action`) the next time the
  uploader's standing is looked at: a lift is delivered like a rise.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "UPLOADER_ID_PATTERN",
    "ActionChange",
    "EnforcementAction",
    "Strike",
    "StrikeRules",
    "StrikeThreshold",
    "UploaderStanding",
    "is_uploader_id",
    "lifted_action",
    "next_action",
    "points_in_force",
]

#: Pseudonymous uploader ids: short, printable, safe in keys and URLs (no ``/``, no ``@``).
UPLOADER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
_UPLOADER = re.compile(UPLOADER_ID_PATTERN)


def is_uploader_id(value: str) -> bool:
    return _UPLOADER.fullmatch(value) is not None


class EnforcementAction(str, Enum):
    """What the tenant is asked to do about an uploader (ordered: each is stronger)."""

    NONE = "none"
    WARN = "warn"
    RESTRICT = "restrict"
    SUSPEND = "suspend"

    @property
    def level(self) -> int:
        return _LEVEL[self]


_LEVEL = {
    EnforcementAction.NONE: 0,
    EnforcementAction.WARN: 1,
    EnforcementAction.RESTRICT: 2,
    EnforcementAction.SUSPEND: 3,
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StrikeThreshold(_Strict):
    """From ``at`` strike points in force on, ``action``."""

    at: int = Field(ge=1, description="Strike points in force from which the action applies.")
    action: EnforcementAction


#: Severities of policy categories (``moderation.core.policy.Severity``; named here, as the
#: policy model embeds these rules).
SEVERITIES = ("low", "medium", "high", "critical")


def _default_points() -> dict[str, int]:
    return {"low": 1, "medium": 2, "high": 3, "critical": 5}


class StrikeRules(_Strict):
    """A policy's ``strikes:`` block: points per severity, decay and thresholds."""

    decay_days: float = Field(default=90.0, gt=0, description="Days a strike stays in force.")
    points: dict[str, int] = Field(
        default_factory=_default_points,
        description="Strike points of a decision, by the category's severity.",
    )
    thresholds: list[StrikeThreshold] = Field(
        min_length=1, description="Actions by strike points in force (ascending)."
    )

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        ats = [t.at for t in self.thresholds]
        if ats != sorted(ats) or len(set(ats)) != len(ats):
            raise ValueError("thresholds must have strictly ascending 'at' values")
        levels = [t.action.level for t in self.thresholds]
        if levels != sorted(levels) or len(set(levels)) != len(levels):
            raise ValueError("threshold actions must rise: warn, then restrict, then suspend")
        if EnforcementAction.NONE in {t.action for t in self.thresholds}:
            raise ValueError("'none' is not a threshold action")
        actions = [t.action for t in self.thresholds]
        if EnforcementAction.SUSPEND in actions and EnforcementAction.WARN not in actions:
            raise ValueError("a suspension needs a warning step before it (add a 'warn' threshold)")
        if any(p < 0 for p in self.points.values()):
            raise ValueError("strike points cannot be negative")
        unknown = sorted(set(self.points) - set(SEVERITIES))
        if unknown:
            raise ValueError(f"points of unknown severities {unknown}: use {', '.join(SEVERITIES)}")
        return self

    @property
    def decay(self) -> timedelta:
        return timedelta(days=self.decay_days)

    def points_for(self, severity: str) -> int:
        """Points of a decision in a category of ``severity`` (the defaults fill gaps)."""
        return self.points.get(severity, _default_points().get(severity, 1))

    def action_for(self, points: int) -> EnforcementAction:
        """The action of the highest threshold ``points`` reach."""
        reached = [t.action for t in self.thresholds if points >= t.at]
        return reached[-1] if reached else EnforcementAction.NONE


class Strike(BaseModel):
    """One strike: a decision against an uploader's content."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tenant: str
    uploader_id: str
    #: The scoped job id (one strike per job).
    job_id: str
    points: int = Field(ge=0)
    severity: str
    policy_id: str
    category_id: str
    #: ``automated`` (a block) or ``human`` (a removal).
    source: str
    decision: str
    at: datetime
    expires_at: datetime
    #: Set when an overturn removed it.
    removed_at: datetime | None = None


class UploaderStanding(BaseModel):
    """An uploader's standing with its tenant: strike points in force and the current action."""

    model_config = ConfigDict(frozen=True)

    tenant: str
    uploader_id: str
    points: int
    action: EnforcementAction
    #: Whether the uploader was ever warned (a suspension needs a warning first).
    warned: bool
    strikes: list[Strike] = Field(default_factory=list)

    def for_caller(self) -> dict[str, Any]:
        return {
            "uploader_id": self.uploader_id,
            "points": self.points,
            "action": self.action.value,
        }


def points_in_force(strikes: list[Strike], now: datetime) -> int:
    """Points of the strikes not removed and not yet decayed at ``now``."""
    return sum(s.points for s in strikes if s.removed_at is None and s.at <= now < s.expires_at)


def next_action(
    rules: StrikeRules, *, points: int, current: EnforcementAction, warned: bool
) -> EnforcementAction:
    """The action after a new strike: what ``points`` reach, never lower than ``current``, and
    a warning instead of a suspension for an uploader never warned (see the module docstring)."""
    reached = rules.action_for(points)
    if reached.level <= current.level:
        return current
    if reached is EnforcementAction.SUSPEND and not warned:
        return EnforcementAction.WARN if current.level < 1 else current
    return reached


def lifted_action(
    rules: StrikeRules, *, points: int, current: EnforcementAction
) -> EnforcementAction:
    """The action once strikes were removed or decayed: what the remaining ``points`` reach,
    never higher than ``current``."""
    reached = rules.action_for(points)
    return reached if reached.level < current.level else current


@dataclass(frozen=True, slots=True)
class ActionChange:
    """An uploader's action changed: delivered as a signed callback and audited."""

    tenant: str
    uploader_id: str
    before: EnforcementAction
    after: EnforcementAction
    points: int
    #: The job whose decision (or overturn) caused it.
    job_id: str
    reason: str  # "strike" or "overturn" (or "decay")

    @property
    def lifted(self) -> bool:
        return self.after.level < self.before.level
