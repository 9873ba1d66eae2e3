"""The twin of ``StateImportTarget``: what was imported, keyed like PostgreSQL (review id,
username, bank name), idempotent the same way."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence

from moderation.core.banks import BankInfo, BankManifest
from moderation.core.legacy_state import LegacyBankEntry, LegacyReviewRecord
from moderation.core.reviewers import ReviewerAccount
from moderation.exceptions import DatabaseUnavailable
from moderation.ports import BankRequest

__all__ = ["MemoryStateImport"]


class MemoryStateImport:
    """What was imported, by key (the :class:`~moderation.ports.StateImportTarget` twin)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reviewers: dict[str, ReviewerAccount] = {}
        self.items: dict[str, LegacyReviewRecord] = {}
        self.requests: dict[str, BankRequest] = {}
        self.banks: dict[str, tuple[BankInfo, list[LegacyBankEntry]]] = {}
        #: Set to make the next import_review() fail after it was called this many times.
        self.fail_after: int | None = None
        self._review_calls = 0

    def import_reviewers(
        self, accounts: Sequence[ReviewerAccount], *, dry_run: bool = False
    ) -> int:
        with self._lock:
            new = [a for a in accounts if a.username not in self.reviewers]
            if not dry_run:
                self.reviewers.update((a.username, a) for a in new)
            return len(new)

    def import_review(
        self, records: Sequence[LegacyReviewRecord], *, lease_s: float, dry_run: bool = False
    ) -> int:
        with self._lock:
            self._review_calls += 1
            if self.fail_after is not None and self._review_calls > self.fail_after:
                raise DatabaseUnavailable("the twin was told to fail")
            new = [r for r in records if r.review_id not in self.items]
            if not dry_run:
                self.items.update((r.review_id, r) for r in new)
            return len(new)

    def import_bank_requests(
        self, requests: Sequence[BankRequest], *, ttl_s: int, dry_run: bool = False
    ) -> int:
        with self._lock:
            new = [q for q in requests if q.review_id not in self.requests]
            if not dry_run:
                self.requests.update((q.review_id, q) for q in new)
            return len(new)

    def has_bank(self, name: str) -> bool:
        with self._lock:
            return name in self.banks

    def import_bank(
        self,
        info: BankInfo,
        manifest: BankManifest,
        entries: Iterable[list[LegacyBankEntry]],
        *,
        progress: Callable[[int], object] | None = None,
    ) -> bool:
        if self.has_bank(info.name):
            return False
        rows: list[LegacyBankEntry] = []
        for chunk in entries:
            rows += chunk
            if progress is not None:
                progress(len(chunk))
        with self._lock:
            self.banks[info.name] = (info, rows)
        return True
