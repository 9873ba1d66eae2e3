"""Hash lists that do not flood, in one place: counting each bank entry's matches, quarantining
an entry that floods, and a person confirming or disabling it (:mod:`moderation.core.bank_guard`
has the states and the rule).

:class:`BankGuard`:

- :meth:`~BankGuard.observe` (the worker, after each batch of verdicts): counts the matched
  entries of every bank category that matched (from the verdicts' evidence), and quarantines an
  entry whose count floods (unless a person confirmed it): its matches are then sent to review,
  not blocked (the hash-bank signal caps their band at review and says so in the evidence);
- :meth:`~BankGuard.refresh` (every worker's bank maintenance, every ``banks.reload_s``): loads
  the quarantined entries into the process's :class:`~moderation.signals.hash_bank.LoadedBanks`,
  so a quarantine made by any worker or person applies everywhere within seconds;
- :meth:`~BankGuard.confirm`, :meth:`~BankGuard.disable`, :meth:`~BankGuard.quarantine`,
  :meth:`~BankGuard.release` (the review page, the API, the CLI): a confirmed entry acts again and
  is never quarantined by the rule again; a disabled one is removed from its bank (a tombstone,
  as any removal: it stops matching in every worker at their next bank refresh).

Counting is best effort: a store error while counting is logged and the verdicts stand (the
flood rule is a safety net; scoring never waits for it).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence

from moderation.core.audit import record_for_bank_entry
from moderation.core.bank_guard import EntryState, EntryStatus, FloodRule
from moderation.core.decision import Verdict
from moderation.core.policy import HASH_BANK_SIGNAL
from moderation.exceptions import BankEntryNotFound, BankError, ModerationError
from moderation.metrics import metrics
from moderation.pipeline.banks import BankService
from moderation.ports import AuditSink, EntryGuardStore
from moderation.signals.hash_bank import LoadedBanks

__all__ = ["BankGuard", "matched_entries"]

log = logging.getLogger(__name__)


def matched_entries(verdicts: Sequence[Verdict]) -> dict[str, Counter[int]]:
    """Per bank, how many of ``verdicts`` matched each entry (one per verdict and entry)."""
    out: dict[str, Counter[int]] = {}
    for verdict in verdicts:
        seen: set[tuple[str, int]] = set()
        for category in verdict.categories:
            if category.signal != HASH_BANK_SIGNAL or category.score <= 0:
                continue
            for evidence in category.evidence:
                bank = evidence.details.get("bank")
                entry = evidence.details.get("entry_id")
                if isinstance(bank, str) and isinstance(entry, int) and evidence.score > 0:
                    seen.add((bank, entry))
        for bank, entry in seen:
            out.setdefault(bank, Counter())[entry] += 1
    return out


class BankGuard:
    """The flood-quarantine and per-entry review use case.

    Args:
        store: entry states and match rates.
        banks: the bank service (a disabled entry is removed through it); None: disabling is
            refused (a process without bank writes).
        loaded: this process's loaded banks (quarantined ids are pushed into it), if it scores.
        rule: when matches count as a flood.
        clock: unix seconds.
        audit: where every state change is recorded (who, which entry, why: a person's act
            or the flood rule's quarantine); None: not audited (tests, tools without a log).
    """

    def __init__(
        self,
        store: EntryGuardStore,
        *,
        banks: BankService | None = None,
        loaded: LoadedBanks | None = None,
        rule: FloodRule | None = None,
        clock: Callable[[], float] = time.time,
        audit: AuditSink | None = None,
    ) -> None:
        self.store = store
        self.audit = audit
        self.banks = banks
        self.loaded = loaded
        self.rule = rule or FloodRule()
        self.clock = clock
        self._counted: set[str] = set()

    def _count_from_zero(self) -> None:
        """Export each served bank's quarantine counter at 0 before its first quarantine: a
        series that appears at 1 has no increase() for the alert to see."""
        if self.loaded is None:
            return
        for bank in self.loaded.names():
            if bank not in self._counted:
                metrics().bank_entries_quarantined.labels(bank)
                self._counted.add(bank)

    def observe(self, verdicts: Sequence[Verdict]) -> list[EntryStatus]:
        """Count the verdicts' bank matches; quarantine entries that flood. The entries
        quarantined now (empty when none, or when the store could not be reached)."""
        self._count_from_zero()
        matched = matched_entries(verdicts)
        if not matched:
            return []
        now = self.clock()
        quarantined: list[EntryStatus] = []
        try:
            for bank, counts in matched.items():
                rates = self.store.count(bank, counts, rule=self.rule, now=now)
                for entry_id, rate in rates.items():
                    if not self.rule.floods(rate):
                        continue
                    known = self.store.status(bank, entry_id)
                    if known is not None:  # confirmed, already quarantined, or disabled
                        continue
                    status = EntryStatus(
                        bank=bank,
                        entry_id=entry_id,
                        state=EntryState.QUARANTINED,
                        by="flood",
                        reason=(
                            f"{rate.count} matches in {self.rule.window_s:.0f} s, usual "
                            f"{rate.baseline:.1f} per window"
                        ),
                        at=now,
                        count=rate.count,
                        baseline=round(rate.baseline, 3),
                    )
                    self.store.set_status(status)
                    self._audit(status, actor="system", details={"count": rate.count})
                    metrics().bank_entries_quarantined.labels(bank).inc()
                    log.warning("bank %s entry %d quarantined: %s", bank, entry_id, status.reason)
                    quarantined.append(status)
        except ModerationError as exc:
            log.error("bank entry rates not counted: %s", exc)
            return quarantined
        if quarantined:
            self.refresh()
        return quarantined

    def refresh(self) -> None:
        """Load the quarantined entries into this process's banks.

        Raises:
            DatabaseUnavailable: the store cannot be reached (the last known set stays).
        """
        if self.loaded is None:
            return
        found: dict[str, set[int]] = {}
        for status in self.store.statuses():
            if status.state is EntryState.QUARANTINED:
                found.setdefault(status.bank, set()).add(status.entry_id)
        self.loaded.set_quarantined({k: frozenset(v) for k, v in found.items()})

    def statuses(self, bank: str | None = None) -> list[EntryStatus]:
        """The entries that are not simply active (quarantined first)."""
        order = {EntryState.QUARANTINED: 0, EntryState.DISABLED: 1, EntryState.CONFIRMED: 2}
        return sorted(self.store.statuses(bank), key=lambda s: (order.get(s.state, 3), s.at))

    def _set(
        self, bank: str, entry_id: int, state: EntryState, by: str, reason: str
    ) -> EntryStatus:
        if self.banks is not None and not self.banks.store.entries(bank, [entry_id]):
            raise BankEntryNotFound(f"bank {bank!r} has no entry {entry_id}")
        status = EntryStatus(
            bank=bank, entry_id=entry_id, state=state, by=by, reason=reason, at=self.clock()
        )
        self.store.set_status(status)
        self._audit(status, actor=by)
        metrics().bank_entry_states.labels(bank, state.value).inc()
        self.refresh()
        return status

    def _audit(
        self, status: EntryStatus, *, actor: str, details: dict[str, object] | None = None
    ) -> None:
        """Record the change (the state is set first: a retried act sets it again, idempotent,
        and writes the record it could not write before).

        Raises:
            AuditSinkUnavailable: the record could not be made durable (transient).
        """
        if self.audit is None:
            return
        self.audit.write(
            record_for_bank_entry(
                bank=status.bank,
                entry_id=status.entry_id,
                state=status.state.value,
                actor=actor or "system",
                reason=status.reason,
                details=dict(details or {}),
            )
        )

    def confirm(self, bank: str, entry_id: int, *, by: str, reason: str = "") -> EntryStatus:
        """A person looked and the entry stays: it acts again and the flood rule leaves it be.

        Raises:
            BankNotFound, BankEntryNotFound: no such bank or entry.
        """
        return self._set(bank, entry_id, EntryState.CONFIRMED, by, reason)

    def quarantine(self, bank: str, entry_id: int, *, by: str, reason: str = "") -> EntryStatus:
        """Send the entry's matches to review until someone confirms or disables it.

        Raises:
            BankNotFound, BankEntryNotFound: no such bank or entry.
        """
        return self._set(bank, entry_id, EntryState.QUARANTINED, by, reason)

    def release(self, bank: str, entry_id: int, *, by: str) -> EntryStatus:
        """Back to plain active (the flood rule may quarantine it again)."""
        return self._set(bank, entry_id, EntryState.ACTIVE, by, "")

    def disable(self, bank: str, entry_id: int, *, by: str, reason: str = "") -> EntryStatus:
        """Take the entry out: removed from its bank (every worker stops matching it at its
        next bank refresh), its state kept as ``disabled``.

        Raises:
            BankNotFound, BankEntryNotFound: no such bank or entry.
            BankError: this process cannot write banks.
        """
        if self.banks is None:
            raise BankError("this process cannot change banks")
        status = self._set(bank, entry_id, EntryState.DISABLED, by, reason)
        self.banks.remove(bank, ids=[entry_id])
        return status
