"""The twin of ``LegacyReviewSource`` and ``LegacyBankSource``: a Redis-only release's review
queue and banks held in lists."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from moderation.core.banks import BankInfo, BankManifest, Segment
from moderation.core.legacy_state import LegacyBankEntry, LegacyReviewRecord
from moderation.exceptions import BankNotFound
from moderation.ports import BankRequest

__all__ = ["MemoryLegacyState"]


class MemoryLegacyState:
    """A Redis-only release's review queue and banks, as plain values."""

    def __init__(
        self,
        records: Sequence[LegacyReviewRecord] = (),
        banks: Sequence[tuple[BankInfo, Sequence[LegacyBankEntry]]] = (),
        requests: Sequence[BankRequest] = (),
        *,
        segment_rows: int = 100,
    ) -> None:
        self._records = list(records)
        self._banks = {info.name: (info, list(entries)) for info, entries in banks}
        self._requests = {q.review_id: q for q in requests}
        self._rows = segment_rows

    def count_records(self) -> int:
        return len(self._records)

    def records(self, *, batch: int = 500) -> Iterator[list[LegacyReviewRecord]]:
        for start in range(0, len(self._records), batch):
            yield self._records[start : start + batch]

    def banks(self) -> list[BankInfo]:
        return [info for info, _ in self._banks.values()]

    def manifest(self, name: str) -> BankManifest:
        if name not in self._banks:
            raise BankNotFound(f"no bank {name!r}")
        info, entries = self._banks[name]
        segments = [
            Segment(
                number=k, first_id=entries[start].id, count=len(entries[start : start + self._rows])
            )
            for k, start in enumerate(range(0, len(entries), self._rows))
        ]
        return BankManifest(
            name=name,
            version=info.version,
            segments=tuple(segments),
            removed=frozenset(e.id for e in entries if e.removed),
            epoch=info.created_at.isoformat(),
        )

    def segment_entries(self, name: str, segment: Segment) -> list[LegacyBankEntry]:
        _, entries = self._banks[name]
        return [e for e in entries if segment.first_id <= e.id < segment.end_id]

    def addition_request(self, review_id: str) -> BankRequest | None:
        return self._requests.get(review_id)
