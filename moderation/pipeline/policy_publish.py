"""Publishing policy files to the policy store: ``moderation policy publish``.

Where policies live in the database (``policy_source: database``), this is how they get there:
each file's YAML becomes a document of the store (live or shadow, by its ``mode``) and each
exemplar image is put in the object store under its sha256 first, so a worker never reads a
document whose images are missing. Publishing the same files again changes nothing.

A live version that differs from the one the store serves is refused: what is acted on
changes only by ``moderation policy promote``, which is audited. Publish the new version as a
shadow, measure it, then promote it. The first live version of a policy (a policy the store does
not have yet) is published as live, audited first (kind ``policy``, decision ``publish``), so
nothing is acted on without a record of who put it there.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from moderation.core.audit import record_for_publication
from moderation.core.policy import PolicySet
from moderation.exceptions import QualityError
from moderation.ports import AuditSink, BlobStore, PolicyDocument, PolicyStore

__all__ = ["Published", "publish_policies"]


@dataclass(frozen=True, slots=True)
class Published:
    document: PolicyDocument
    changed: bool


def publish_policies(
    policies: PolicySet,
    *,
    read_text: Callable[[str], str],
    read_exemplar: Callable[[str, str], bytes],
    exemplar_key: Callable[[str], str],
    store: PolicyStore,
    blobs: BlobStore,
    actor: str,
    audit: AuditSink,
) -> list[Published]:
    """Publish every live and shadow policy of ``policies`` (validated files).

    Args:
        read_text: the YAML of a policy's source file.
        read_exemplar: the bytes of an exemplar (source file, path as written in it).
        exemplar_key: where an exemplar of that sha256 goes in the object store.
        audit: where a first live version's publication is recorded (before it is stored).

    Raises:
        QualityError: a live version differs from the live one in the store (promote instead),
            or ``actor`` is empty.
        BlobError, BlobStoreUnavailable, DatabaseUnavailable: a store refused or is down.
        AuditError, AuditSinkUnavailable: a first live version cannot be audited (not stored).
    """
    if not actor.strip():
        raise QualityError("publishing names who does it", code="publish_no_actor")
    serving = {(d.policy_id, d.slot): d for d in store.serving()}
    plan: list[tuple[str, str, int, str, str, dict[str, str], bool]] = []
    for slot, items in (
        ("live", [(p, policies.source(p.id)) for p in policies.values()]),
        ("shadow", [(p, policies.shadow_source(p.id)) for p in policies.shadows()]),
    ):
        for policy, source in items:
            body = read_text(source)
            current = serving.get((policy.id, slot))
            if (
                slot == "live"
                and current is not None
                and (current.version, current.body) != (policy.version, body)
            ):
                raise QualityError(
                    f"{source}: live version {policy.version} of {policy.id!r} differs from the "
                    f"live version {current.version} in the policy store; a live version changes "
                    "only by promotion (audited): publish it as a shadow (mode: shadow), then "
                    f"`moderation policy promote {policy.id}`",
                    code="publish_would_change_live",
                )
            exemplars = {
                e.path: e.sha256
                for c in policy.categories
                if c.exemplars is not None
                for e in [*c.exemplars.positive, *c.exemplars.benign]
                if e.sha256 is not None
            }
            first_live = slot == "live" and current is None
            plan.append((source, slot, policy.version, policy.id, body, exemplars, first_live))
    done: list[Published] = []
    for source, slot, version, policy_id, body, exemplars, first_live in plan:
        for path, digest in sorted(exemplars.items()):
            key = exemplar_key(digest)
            if not blobs.exists(key):
                blobs.put(key, read_exemplar(source, path))
        if first_live:
            audit.write(
                record_for_publication(
                    policy_id=policy_id,
                    version=version,
                    body_sha256=hashlib.sha256(body.encode()).hexdigest(),
                    actor=actor,
                )
            )
        before = store.version()
        doc = store.publish(
            policy_id=policy_id,
            version=version,
            slot=slot,
            body=body,
            exemplars=exemplars,
            actor=actor.strip(),
        )
        done.append(Published(document=doc, changed=store.version() != before))
    return done
