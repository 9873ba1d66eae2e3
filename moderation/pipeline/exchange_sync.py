"""Banks synced from hash exchanges (NCMEC, ThreatExchange, StopNCII): ``moderation bank sync``.

:class:`ExchangeSync` fetches one synced bank's updates since its stored checkpoint, batch by
batch (:class:`~moderation.ports.ExchangeFeed`), and applies each batch to the local bank with
the same rules as a file import:

- an upstream record's PDQ hashes are added (a hash the bank already holds is kept once);
- a record deleted upstream (or changed to other hashes) removes the hashes it had put in, through
  :meth:`BankService.remove <moderation.pipeline.banks.BankService.remove>` (a tombstone: every
  worker stops matching at its next bank refresh), unless another upstream record of the same
  exchange still carries the hash;
- records of other signal types are counted (``ignored``), not kept;
- matches of synced entries count towards flood quarantine like any other entry's.

After each batch the records and the checkpoint are saved together, so an interrupted sync
resumes from the last batch applied; an error before the first batch (refused credentials)
changes nothing. One syncer per bank at a time (``ExchangeSyncStore.lock``: a PostgreSQL
advisory lock).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from moderation.core.banks import EntryData
from moderation.exceptions import BankNotFound, ModerationError, TransientError
from moderation.pipeline.banks import BankService
from moderation.ports import ExchangeDelta, ExchangeFeed, ExchangeSyncStore

__all__ = ["ExchangeSync", "SyncReport"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SyncReport:
    """What one sync applied."""

    source: str
    bank: str
    batches: int = 0
    added: int = 0
    removed: int = 0
    ignored: int = 0


class ExchangeSync:
    """Sync named banks from their exchanges.

    Args:
        store: checkpoints, upstream records, the one-syncer lock.
        banks: the bank use cases (additions, removals).
        clock: unix seconds (the entries' ``added_at``).
    """

    def __init__(
        self,
        store: ExchangeSyncStore,
        banks: BankService,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.banks = banks
        self.clock = clock

    def sync(self, source: str, feed: ExchangeFeed, *, bank: str | None = None) -> SyncReport:
        """Apply the exchange's updates since the last sync to ``bank`` (default: ``source``;
        created if missing).

        Raises:
            ExchangeBusy: another process syncs this source now.
            ExchangeAuthError: credentials refused (nothing applied from this call's batches
                after the error; earlier batches of this call stay, with their checkpoint).
            ExchangeUnavailable, DatabaseUnavailable, QueueUnavailable: transient.
            BankBusy: an import holds the bank.
        """
        with self.store.lock(source):
            try:
                report = self._sync(source, feed, bank or source)
            except ModerationError as exc:
                self._record(source, exc.code)
                raise
            except Exception:
                # an error no adapter translated (a library's, or a bug): still a failure
                self._record(source, "exchange_sync_unexpected")
                raise
            self._record(source, None)
        log.info("exchange %s synced into bank %s: %s", source, report.bank, report)
        return report

    def _record(self, source: str, error_code: str | None) -> None:
        """Keep the sync's outcome for the health metrics; a store that cannot take it (the
        database is down: most likely the error being recorded) does not hide the sync's own
        outcome."""
        try:
            self.store.record_outcome(source, error_code=error_code)
        except TransientError as exc:
            log.warning("exchange %s: sync outcome not recorded: %s", source, exc)

    def _sync(self, source: str, feed: ExchangeFeed, name: str) -> SyncReport:
        try:
            self.banks.info(name)
        except BankNotFound:
            self.banks.create(name, description=f"synced from exchange {source}")
        batches = added = removed = ignored = 0
        for delta in self._fetch(source, feed):
            a, r = self._apply(source, name, delta.additions, delta.removals)
            self.store.save(
                source,
                checkpoint=delta.checkpoint,
                records={
                    **{k: None for k in delta.removals},
                    **{k: v for k, v in delta.additions.items()},
                },
                applied=len(delta.additions) + len(delta.removals),
            )
            batches += 1
            added += a
            removed += r
            ignored += delta.ignored
        return SyncReport(
            source=source,
            bank=name,
            batches=batches,
            added=added,
            removed=removed,
            ignored=ignored,
        )

    def _fetch(self, source: str, feed: ExchangeFeed) -> Iterator[ExchangeDelta]:
        return feed.fetch(self.store.checkpoint(source))

    def _apply(
        self,
        source: str,
        bank: str,
        additions: Mapping[str, list[str]],
        removals: list[str],
    ) -> tuple[int, int]:
        """Add and remove one batch's hashes; (added, removed)."""
        touched = [*removals, *additions]
        before = self.store.records(source, touched)
        now_held = {h for hashes in additions.values() for h in hashes}
        dropped = {h for key, hashes in before.items() for h in hashes if h not in now_held}
        if dropped:  # keep a hash another upstream record still carries
            dropped -= self.store.held(source, dropped, besides=touched)
        removed = self.banks.remove(bank, hashes=sorted(dropped)) if dropped else 0
        at = datetime.fromtimestamp(self.clock(), UTC)
        entries = [
            EntryData(
                pdq=h,
                source=f"exchange:{source}",
                label=key,
                added_at=at,
                reference_id=key,
            )
            for key, hashes in additions.items()
            for h in hashes
        ]
        report = self.banks.add(bank, entries) if entries else None
        added = sum(report.new) if report is not None else 0
        return added, removed
