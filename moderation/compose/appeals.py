"""Appeals and uploader strikes for the processes that take appeals (the API), hand their
outcomes on (the API's review desk, the workers' review outbox) or record decisions (both)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from moderation.core.policy import Policy
from moderation.core.review import HumanDecision, ReviewDecision
from moderation.pipeline.appeals import Appeals, rules_from
from moderation.pipeline.strikes import Enforcement
from moderation.ports import AppealStore, AuditSink, CallbackSender, JobStore, ReviewQueue
from moderation.settings import Settings

if TYPE_CHECKING:
    from psycopg_pool import ConnectionPool

__all__ = ["build_appeals", "build_enforcement", "open_appeal_store"]


def open_appeal_store(settings: Settings, *, database: ConnectionPool | None) -> AppealStore | None:
    """Appeals live in PostgreSQL; without a database there are none (filing answers 503)."""
    if database is None:
        return None
    from moderation.adapters.postgres.appeals import PostgresAppealStore

    return PostgresAppealStore(database, age_doubling_s=settings.review.age_doubling_s)


def build_appeals(
    settings: Settings,
    *,
    store: JobStore,
    review: ReviewQueue,
    audit: AuditSink,
    callbacks: CallbackSender,
    policies: Callable[[], Mapping[str, Policy]],
    database: ConnectionPool | None = None,
    appeals: AppealStore | None = None,
    enforcement: Enforcement | None = None,
) -> Appeals:
    """The appeals use case from settings (``appeals``: a store to use instead of opening one);
    an overturn removes its strike from ``enforcement``."""
    a = settings.appeals
    overrides = {
        name: (
            t.appeal_window_days * 86400.0 if t.appeal_window_days is not None else None,
            t.appeal_max_per_decision,
        )
        for name, t in settings.tenants.items()
    }
    use_case = Appeals(
        store=store,
        appeals=appeals if appeals is not None else open_appeal_store(settings, database=database),
        review=review,
        audit=audit,
        callbacks=callbacks,
        policies=policies,
        rules=rules_from(a.window_s, a.max_per_decision, overrides),
    )
    if enforcement is not None:
        strikes = enforcement

        def lift(_: object, decision: HumanDecision) -> None:
            if decision.decision is ReviewDecision.OVERTURN:
                strikes.on_overturn(decision.job_id)

        use_case.hooks.append(lift)
    return use_case


def build_enforcement(
    *,
    store: JobStore,
    audit: AuditSink,
    callbacks: CallbackSender,
    policies: Callable[[], Mapping[str, Policy]],
    database: ConnectionPool | None,
) -> Enforcement | None:
    """Uploader strikes: in PostgreSQL; None without a database (no strikes recorded)."""
    if database is None:
        return None
    from moderation.adapters.postgres.strikes import PostgresStrikeStore

    return Enforcement(
        strikes=PostgresStrikeStore(database),
        store=store,
        audit=audit,
        callbacks=callbacks,
        policies=policies,
    )
