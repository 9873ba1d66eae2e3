"""The policy store (the :class:`~moderation.ports.PolicyStore` twin)."""

from __future__ import annotations

import dataclasses
import threading

from moderation.exceptions import PolicyError
from moderation.ports import PolicyDocument

__all__ = ["MemoryPolicyStore"]


class MemoryPolicyStore:
    """The :class:`~moderation.ports.PolicyStore` twin: every document in a list."""

    def __init__(self) -> None:
        self.documents: list[PolicyDocument] = []
        self._version = 0
        self._lock = threading.Lock()

    def version(self) -> int:
        return self._version

    def serving(self) -> list[PolicyDocument]:
        with self._lock:
            return [d for d in self.documents if d.slot != "retired"]

    def document(self, document_id: int) -> PolicyDocument:
        for doc in self.documents:
            if doc.id == document_id:
                return doc
        raise PolicyError(f"no policy document {document_id}", code="policy_document_unknown")

    def _retire(self, policy_id: str, slot: str) -> None:
        for i, doc in enumerate(self.documents):
            if doc.policy_id == policy_id and doc.slot == slot:
                self.documents[i] = dataclasses.replace(doc, slot="retired")

    def _add(
        self,
        policy_id: str,
        version: int,
        slot: str,
        body: str,
        exemplars: dict[str, str],
        actor: str,
    ) -> PolicyDocument:
        doc = PolicyDocument(
            id=len(self.documents) + 1,
            policy_id=policy_id,
            version=version,
            slot=slot,
            body=body,
            exemplars=dict(exemplars),
            added_by=actor,
        )
        self.documents.append(doc)
        self._version += 1
        return doc

    def publish(
        self,
        *,
        policy_id: str,
        version: int,
        slot: str,
        body: str,
        exemplars: dict[str, str],
        actor: str,
    ) -> PolicyDocument:
        with self._lock:
            for doc in self.documents:
                if (doc.policy_id, doc.slot, doc.version, doc.body) == (
                    policy_id,
                    slot,
                    version,
                    body,
                ):
                    return doc
            self._retire(policy_id, slot)
            return self._add(policy_id, version, slot, body, exemplars, actor)

    def promote(self, shadow_id: int, *, body: str, actor: str) -> PolicyDocument:
        with self._lock:
            shadow = self.document(shadow_id)
            if shadow.slot != "shadow":
                raise PolicyError(
                    f"policy document {shadow_id} is not a serving shadow version",
                    code="policy_document_unknown",
                )
            self._retire(shadow.policy_id, "live")
            self._retire(shadow.policy_id, "shadow")
            return self._add(
                shadow.policy_id, shadow.version, "live", body, shadow.exemplars, actor
            )
