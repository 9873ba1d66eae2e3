"""Uploader strikes, in one place (rules in :mod:`moderation.core.strikes`): a decision against
an uploader's content records a strike and may raise the uploader's action; an overturn removes
the strike and may lift it; the review page reads the uploader's earlier decisions.

Every action change is audited (kind ``enforcement``, its id derived from the change, so a
redelivered decision rewrites the same record) and delivered to the tenant as a signed
``uploader.action`` callback (to the callback URL of the job that caused it). The change itself
is a compare-and-set on the uploader's action (:meth:`~moderation.ports.StrikeStore.
set_action`): of two decisions racing on one uploader, one changes the action and delivers it,
the other sees the new action and delivers only a further change. Order: the strike first, then
the action, then the audit record and the callback; a crash between the action and its callback
loses that callback (the action stands and shows in the review page and the audit log of the
next change): callbacks of one change are best effort, the standing is not.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from moderation.core.audit import AuditRecord
from moderation.core.jobs import Job, public_id, tenant_of
from moderation.core.policy import Policy
from moderation.core.review import ReviewItem
from moderation.core.strikes import (
    ActionChange,
    EnforcementAction,
    Strike,
    StrikeRules,
    UploaderStanding,
    lifted_action,
    next_action,
    points_in_force,
)
from moderation.metrics import metrics
from moderation.ports import AuditSink, CallbackSender, JobStore, StrikeStore

__all__ = ["Enforcement", "action_callback_body", "record_for_action"]

log = logging.getLogger(__name__)

#: Compare-and-set attempts of one action change before giving up (another writer kept winning).
_CAS_TRIES = 8


def action_callback_body(change: ActionChange) -> bytes:
    """The ``uploader.action`` callback: the uploader, its new and previous action, why."""
    return json.dumps(
        {
            "event": "uploader.action",
            "uploader_id": change.uploader_id,
            "action": change.after.value,
            "previous_action": change.before.value,
            "lifted": change.lifted,
            "strike_points": change.points,
            "reason": change.reason,
            "job_id": public_id(change.job_id),
        },
        separators=(",", ":"),
    ).encode()


def record_for_action(change: ActionChange, *, at: datetime) -> AuditRecord:
    """The audit record of an action change (decision: the new action)."""
    digest = hashlib.sha256(
        ":".join(
            ("enforcement", change.tenant, change.uploader_id, change.job_id, change.after.value)
        ).encode()
    ).hexdigest()[:32]
    return AuditRecord(
        record_id=digest,
        kind="enforcement",
        at=at,
        job_id=change.job_id,
        content_sha256=None,
        content_ref=None,
        policy_id=None,
        policy_version=None,
        compiled_policy_hash=None,
        model_id=None,
        weights_sha256=None,
        category_id=None,
        decision=change.after.value,
        action="lift" if change.lifted else "raise",
        actor="system",
        tenant=change.tenant,
        details={
            "uploader_id": change.uploader_id,
            "previous_action": change.before.value,
            "strike_points": change.points,
            "reason": change.reason,
        },
    )


class Enforcement:
    """The strikes use case.

    Args:
        strikes: the strike store.
        store: job records (the callback URL of a job).
        audit: the audit log.
        callbacks: schedules signed callbacks.
        policies: the policies in service (their ``strikes`` rules; a policy without them
            gives no strikes).
        clock: unix seconds.
    """

    def __init__(
        self,
        *,
        strikes: StrikeStore,
        store: JobStore,
        audit: AuditSink,
        callbacks: CallbackSender,
        policies: Callable[[], Mapping[str, Policy]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.strikes = strikes
        self.store = store
        self.audit = audit
        self.callbacks = callbacks
        self.policies = policies
        self.clock = clock

    def _rules(self, policy_id: str | None) -> StrikeRules | None:
        policy = self.policies().get(policy_id or "")
        return policy.strikes if policy is not None else None

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    # --- decisions --------------------------------------------------------------------------

    def on_decision(
        self,
        job: Job,
        *,
        decision: str,
        source: str,
        policy_id: str | None,
        category_id: str | None,
        severity: str | None,
        at: datetime | None = None,
    ) -> ActionChange | None:
        """A decision restricted ``job``'s content: its uploader gets a strike (if the job names
        an uploader and the policy has strike rules), and maybe a stronger action.

        Raises:
            DatabaseUnavailable, AuditSinkUnavailable, QueueUnavailable: transient.
        """
        rules = self._rules(policy_id)
        if rules is None or job.uploader_id is None or policy_id is None:
            return None
        when = at or self._now()
        strike = Strike(
            tenant=job.tenant,
            uploader_id=job.uploader_id,
            job_id=job.id,
            points=rules.points_for(severity or "medium"),
            severity=severity or "medium",
            policy_id=policy_id,
            category_id=category_id or "",
            source=source,
            decision=decision,
            at=when,
            expires_at=when + rules.decay,
        )
        if self.strikes.add(strike):
            metrics().strikes.labels(policy_id, source).inc()
        return self._settle(job, rules, reason="strike", lift=False)

    def on_overturn(self, job_id: str) -> ActionChange | None:
        """An overturned decision: its strike goes, and the uploader's action may be lifted.

        Raises:
            DatabaseUnavailable, AuditSinkUnavailable, QueueUnavailable: transient.
        """
        job = self.store.get_job(job_id)
        if job is None or job.uploader_id is None:
            return None
        removed = self.strikes.remove(job.tenant, job.id, at=self._now())
        rules = self._rules(removed.policy_id if removed else None)
        if rules is None:
            # (the strike was removed before; the lift may still be due after a crash)
            strikes = self.strikes.strikes(job.tenant, job.uploader_id, limit=1)
            rules = self._rules(strikes[0].policy_id) if strikes else None
        if rules is None:
            return None
        return self._settle(job, rules, reason="overturn", lift=True)

    def _settle(
        self, job: Job, rules: StrikeRules, *, reason: str, lift: bool
    ) -> ActionChange | None:
        assert job.uploader_id is not None
        for _ in range(_CAS_TRIES):
            now = self._now()
            current, warned = self.strikes.action(job.tenant, job.uploader_id)
            points = points_in_force(self.strikes.strikes(job.tenant, job.uploader_id), now)
            target = (
                lifted_action(rules, points=points, current=current)
                if lift
                else next_action(rules, points=points, current=current, warned=warned)
            )
            if target is current:
                return None
            if self.strikes.set_action(
                job.tenant, job.uploader_id, expected=current, action=target, at=now
            ):
                change = ActionChange(
                    tenant=job.tenant,
                    uploader_id=job.uploader_id,
                    before=current,
                    after=target,
                    points=points,
                    job_id=job.id,
                    reason=reason,
                )
                self._deliver(job, change, now)
                return change
        log.warning("uploader %s: its action kept changing under this decision", job.uploader_id)
        return None

    def _deliver(self, job: Job, change: ActionChange, at: datetime) -> None:
        self.audit.write(record_for_action(change, at=at))
        metrics().uploader_actions.labels(change.after.value, change.reason).inc()
        if job.callback_url:
            self.callbacks.send(
                job.public_id, job.callback_url, action_callback_body(change), tenant=job.tenant
            )

    # --- the review page ------------------------------------------------------------------

    def standing(self, tenant: str, uploader_id: str) -> UploaderStanding:
        """The uploader's strikes (removed ones too), points in force and action."""
        strikes = self.strikes.strikes(tenant, uploader_id)
        action, warned = self.strikes.action(tenant, uploader_id)
        return UploaderStanding(
            tenant=tenant,
            uploader_id=uploader_id,
            points=points_in_force(strikes, self._now()),
            action=action,
            warned=warned,
            strikes=strikes,
        )

    def context(self, item: ReviewItem) -> dict[str, Any] | None:
        """Repeat-offender context for a reviewer: the uploader's earlier decisions with the
        same tenant (never another tenant's), its strike points and action."""
        if item.uploader_id is None:
            return None
        tenant = tenant_of(item.job_id)
        standing = self.standing(tenant, item.uploader_id)
        return {
            "uploader_id": item.uploader_id,
            "strike_points": standing.points,
            "action": standing.action.value,
            "prior": [
                {
                    "job_id": public_id(s.job_id),
                    "decision": s.decision,
                    "source": s.source,
                    "category": f"{s.policy_id}/{s.category_id}",
                    "severity": s.severity,
                    "at": s.at.isoformat(),
                    "overturned": s.removed_at is not None,
                }
                for s in standing.strikes
                if s.job_id != item.job_id
            ][:20],
        }

    def boost(self, tenant: str, uploader_id: str | None) -> float:
        """Review priority added for a repeat offender (in age doublings: 1 with strikes in
        force, 2 under a restriction or suspension; 0 otherwise)."""
        if uploader_id is None:
            return 0.0
        standing = self.standing(tenant, uploader_id)
        if standing.action.level >= EnforcementAction.RESTRICT.level:
            return 2.0
        return 1.0 if standing.points > 0 else 0.0
