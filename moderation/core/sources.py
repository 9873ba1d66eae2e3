"""Where a decision started: the model on its own, a notice from outside, or an appeal. Pure.

Every decision keeps the source that started it, in its audit record and its statement of
reasons (EU DSA Art. 17(3)(b), 24(5)): the EU Transparency Database's ``source_type`` is derived
from it (:meth:`DecisionSource.dsa_source_type`).
"""

from __future__ import annotations

from enum import Enum

__all__ = ["DecisionSource"]


class DecisionSource(str, Enum):
    """What started a decision."""

    #: The pipeline's own detection (the model, a hash bank): the platform's own initiative.
    AUTOMATED = "automated"
    #: A notice from a user (DSA Art. 16 notice-and-action).
    USER_REPORT = "user_report"
    #: A notice from a trusted flagger (DSA Art. 22), handled with priority.
    TRUSTED_FLAGGER = "trusted_flagger"
    #: An appeal against an earlier decision (DSA Art. 20 internal complaint handling).
    APPEAL = "appeal"

    @property
    def from_notice(self) -> bool:
        """A notice from outside started it (a user or a trusted flagger)."""
        return self in (DecisionSource.USER_REPORT, DecisionSource.TRUSTED_FLAGGER)

    def dsa_source_type(self) -> str:
        """The EU Transparency Database ``source_type`` value for this source.

        An appeal is a complaint, not a notice: its decision keeps the source of the decision
        it reviews where that is known; on its own it maps to ``SOURCE_TYPE_OTHER_NOTIFICATION``.
        """
        return _DSA_SOURCE_TYPE[self]


_DSA_SOURCE_TYPE = {
    DecisionSource.AUTOMATED: "SOURCE_VOLUNTARY",
    DecisionSource.USER_REPORT: "SOURCE_ARTICLE_16",
    DecisionSource.TRUSTED_FLAGGER: "SOURCE_TRUSTED_FLAGGER",
    DecisionSource.APPEAL: "SOURCE_TYPE_OTHER_NOTIFICATION",
}
