"""Moving a Redis-only release's durable state into PostgreSQL (``moderation db import-redis``).

An operator upgrading from the release that kept everything in Redis has there: reviewer
accounts, the review queue (items waiting, leased or decided, pending first decisions, final
decisions and the outbox of those not handed on yet, reviewers' "add to bank" requests) and the
hash banks (entries with their ids, tombstones). :class:`StateImporter` reads them through the
Redis adapters and writes them to the system of record in batches:

* **idempotent**: a record already in PostgreSQL (same username, review id, bank name) is left as
  it is and counted as ``present``; a second run imports nothing;
* **resumable**: every batch (and every bank, whole) is its own transaction, so a run stopped
  half-way keeps what it wrote and the next run carries on from there;
* ``dry_run``: the same reads and statements, rolled back; the counts are what a run would do.

Read the source while nothing writes to it (the old release stopped): an item changed in Redis
after it was imported is not imported again. What is not carried over, because it is
transient: lease-token history older than the current lease, skipped items kept away from one
reviewer for a while, sessions, rate limits, per-day decision counters (recounted from the
imported decisions). Job records and results are not either: drain the queue first (see
docs/runbook.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from moderation.core.banks import BankManifest
from moderation.core.legacy_state import ImportCounts, LegacyBankEntry, LegacyReviewRecord
from moderation.ports import (
    BankRequest,
    LegacyBankSource,
    LegacyReviewSource,
    ReviewerStore,
    StateImportTarget,
)

__all__ = ["ImportSummary", "StateImporter"]

Advance = Callable[[int], object]


@dataclass(slots=True)
class ImportSummary:
    """What a run read, wrote and found already there, per kind of record."""

    dry_run: bool = False
    reviewers: ImportCounts = field(default_factory=ImportCounts)
    review_items: ImportCounts = field(default_factory=ImportCounts)
    bank_requests: ImportCounts = field(default_factory=ImportCounts)
    banks: ImportCounts = field(default_factory=ImportCounts)
    bank_entries: ImportCounts = field(default_factory=ImportCounts)

    def as_dict(self) -> dict[str, object]:
        kinds = ("reviewers", "review_items", "bank_requests", "banks", "bank_entries")
        out: dict[str, object] = {"dry_run": self.dry_run}
        for kind in kinds:
            c: ImportCounts = getattr(self, kind)
            out[kind] = {"read": c.read, "imported": c.imported, "present": c.present}
        return out


@dataclass(frozen=True, slots=True)
class StateImporter:
    """The use case (see the module docstring). Run :meth:`reviewers`, :meth:`review` and
    :meth:`banks` in that order (or :meth:`run`); each adds to one :class:`ImportSummary`."""

    reviews: LegacyReviewSource
    accounts: ReviewerStore
    bank_source: LegacyBankSource
    target: StateImportTarget
    #: The review lease length (a lease carried over keeps its expiry; this dates its claim).
    lease_s: float
    #: How long an imported "add to bank" request is kept.
    request_ttl_s: int
    batch: int = 500

    def reviewers(self, summary: ImportSummary) -> None:
        """Reviewer accounts (argon2id hashes, roles, disabled flags) as they are.

        Raises:
            QueueUnavailable, DatabaseUnavailable: a store cannot be reached.
        """
        accounts = self.accounts.all()
        c = summary.reviewers
        c.read += len(accounts)
        for start in range(0, len(accounts), self.batch):
            part = accounts[start : start + self.batch]
            new = self.target.import_reviewers(part, dry_run=summary.dry_run)
            c.imported += new
            c.present += len(part) - new

    def review_total(self) -> int:
        """How many review items :meth:`review` will read (for a progress bar)."""
        return self.reviews.count_records()

    def review(self, summary: ImportSummary, *, advance: Advance | None = None) -> None:
        """The review queue, a batch per transaction, and the pending bank requests of its
        items.

        Raises:
            QueueUnavailable, DatabaseUnavailable: a store cannot be reached.
        """
        items, requests = summary.review_items, summary.bank_requests
        for batch in self.reviews.records(batch=self.batch):
            new = self.target.import_review(batch, lease_s=self.lease_s, dry_run=summary.dry_run)
            items.read += len(batch)
            items.imported += new
            items.present += len(batch) - new
            found = [q for q in self._requests(batch) if q is not None]
            if found:
                made = self.target.import_bank_requests(
                    found, ttl_s=self.request_ttl_s, dry_run=summary.dry_run
                )
                requests.read += len(found)
                requests.imported += made
                requests.present += len(found) - made
            if advance is not None:
                advance(len(batch))

    def _requests(self, batch: list[LegacyReviewRecord]) -> Iterator[BankRequest | None]:
        # A request is carried out when the removal is handed on: only items still open with
        # a first decision, or final and in the outbox, can have one waiting.
        for r in batch:
            if (r.final is None and r.first is not None) or r.outbox is not None:
                yield self.bank_source.addition_request(r.review_id)

    def bank_total(self) -> int:
        """How many bank entries (tombstones included) :meth:`banks` will read."""
        return sum(
            s.count
            for info in self.bank_source.banks()
            for s in self.bank_source.manifest(info.name).segments
        )

    def banks(self, summary: ImportSummary, *, advance: Advance | None = None) -> None:
        """Every bank, whole, in its own transaction (entries keep their ids and tombstones).

        Raises:
            QueueUnavailable, DatabaseUnavailable: a store cannot be reached.
        """
        banks, entries = summary.banks, summary.bank_entries
        for info in self.bank_source.banks():
            manifest = self.bank_source.manifest(info.name)
            size = sum(s.count for s in manifest.segments)
            banks.read += 1
            entries.read += size
            if self.target.has_bank(info.name):
                banks.present += 1
                entries.present += size
                if advance is not None:
                    advance(size)
                continue
            if summary.dry_run:
                banks.imported += 1
                entries.imported += size
                if advance is not None:
                    advance(size)
                continue

            chunks = self._chunks(info.name, manifest)
            if self.target.import_bank(info, manifest, chunks, progress=advance):
                banks.imported += 1
                entries.imported += size
            else:  # created by someone else since has_bank()
                banks.present += 1
                entries.present += size

    def _chunks(self, name: str, manifest: BankManifest) -> Iterator[list[LegacyBankEntry]]:
        for segment in manifest.segments:
            yield self.bank_source.segment_entries(name, segment)

    def run(self, *, dry_run: bool = False) -> ImportSummary:
        """All three, without progress reporting."""
        summary = ImportSummary(dry_run=dry_run)
        self.reviewers(summary)
        self.review(summary)
        self.banks(summary)
        return summary
