"""Shadow verdicts: what a shadow policy version would have decided, beside what the live version
did. Pure: no I/O.

A shadow version (``mode: shadow``) is scored on live traffic with the same embeddings and
signals as the live policies, and its verdict is recorded (in the job's audit record) and
measured (metrics), never acted on. The comparison is per policy: the shadow version alone
against the live version of the same policy alone (``live_decision``: the most severe decision
among that policy's categories in the live verdict, which lists every category that did not
allow).
"""

from __future__ import annotations

from dataclasses import dataclass

from moderation.core.data import Data
from moderation.core.decision import Decision, Verdict

__all__ = ["ShadowVerdict", "live_decision_of", "shadow_verdict"]


@dataclass(frozen=True, slots=True)
class ShadowVerdict(Data):
    """A shadow version's verdict on one image, beside the live version's decision."""

    policy_id: str
    version: int
    policy_hash: str
    compiled_hash: str
    decision: Decision
    category_id: str | None
    score: float
    reason_code: str | None
    #: The live version of the same policy (None: the policy is not live yet).
    live_version: int | None
    #: The live version's decision for this policy alone (None: not live yet).
    live_decision: Decision | None
    scores: dict[str, float]

    @property
    def changed(self) -> bool:
        """Whether acting on the shadow version would have decided otherwise."""
        return self.live_decision is not None and self.live_decision is not self.decision


def live_decision_of(verdict: Verdict, policy_id: str) -> Decision:
    """The decision the categories of ``policy_id`` alone reach in ``verdict`` (a verdict lists
    every category that did not allow, so absent means allow)."""
    ranks = [c.decision.rank for c in verdict.categories if c.policy_id == policy_id]
    best = max(ranks, default=0)
    return next(d for d in Decision if d.rank == best)


def shadow_verdict(shadow: Verdict, *, live: Verdict, live_version: int | None) -> ShadowVerdict:
    """The record of ``shadow`` (the verdict of one shadow version alone) next to ``live``.

    Raises:
        ValueError: ``shadow`` is not the verdict of exactly one policy.
    """
    if len(shadow.policies) != 1:
        raise ValueError("a shadow verdict comes from exactly one policy version")
    ref = shadow.policies[0]
    return ShadowVerdict(
        policy_id=ref.id,
        version=ref.version,
        policy_hash=ref.policy_hash,
        compiled_hash=ref.compiled_hash,
        decision=shadow.decision,
        category_id=shadow.category_id,
        score=shadow.score,
        reason_code=shadow.reason_code,
        live_version=live_version,
        live_decision=live_decision_of(live, ref.id) if live_version is not None else None,
        scores=dict(shadow.scores),
    )
