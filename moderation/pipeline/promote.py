"""Promoting a shadow policy version to live: ``moderation policy promote``.

The shadow version (``mode: shadow``) has been evaluated on live traffic, recorded and measured;
promoting it makes it the version that is acted on. Order, so that nothing changes unaudited:

1. check: a shadow of the policy exists and is newer than the live version;
2. the audit record (kind ``policy``, decision ``promote``: who, which version and content hash,
   the previous version, the files) is written and durable;
3. the files change (:meth:`~moderation.ports.PolicyFiles.promote`): every process that reloads
   its policies (workers poll the files' hash) serves the new version, and the hash it was
   measured under in shadow is the hash it now decides under (``mode`` is not part of it).

A promotion interrupted between 2 and 3 is repeated by running the command again: the record id
is derived from the policy and its content, so the log holds it once.
"""

from __future__ import annotations

from dataclasses import dataclass

from moderation.core.audit import AuditRecord, record_for_promotion
from moderation.core.policy import policy_hash
from moderation.exceptions import QualityError
from moderation.ports import AuditSink, PolicyFiles

__all__ = ["Promotion", "promote"]


@dataclass(frozen=True, slots=True)
class Promotion:
    policy_id: str
    version: int
    previous_version: int | None
    files: dict[str, str]
    record: AuditRecord


def promote(
    policy_id: str,
    *,
    files: PolicyFiles,
    audit: AuditSink,
    actor: str,
    note: str | None = None,
) -> Promotion:
    """Make the shadow version of ``policy_id`` live.

    Raises:
        QualityError: no shadow version of ``policy_id``, or it is not newer than the live one.
        PolicyError: the policy files are invalid.
        AuditError, AuditSinkUnavailable: the promotion cannot be audited (nothing changed).
    """
    policies = files.load()
    shadow = policies.shadow(policy_id)
    if shadow is None:
        known = ", ".join(p.id for p in policies.shadows()) or "none"
        raise QualityError(
            f"policy {policy_id!r} has no shadow version to promote (shadow versions: {known})",
            code="promote_no_shadow",
        )
    live = policies.get(policy_id)
    if live is not None and shadow.version <= live.version:
        raise QualityError(
            f"the shadow version {shadow.version} of {policy_id!r} is not newer than the live "
            f"version {live.version}",
            code="promote_not_newer",
        )
    plan = files.promotion_plan(
        policies.shadow_source(policy_id), policies.source(policy_id) if live else None
    )
    record = record_for_promotion(
        policy_id=policy_id,
        version=shadow.version,
        policy_hash=policy_hash(shadow),
        previous_version=live.version if live else None,
        previous_hash=policy_hash(live) if live else None,
        actor=actor,
        files=plan,
        note=note,
    )
    audit.write(record)
    files.promote(plan)
    return Promotion(
        policy_id=policy_id,
        version=shadow.version,
        previous_version=live.version if live else None,
        files=plan,
        record=record,
    )
