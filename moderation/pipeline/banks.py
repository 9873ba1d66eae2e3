"""Hash-bank administration: curating banks (``moderation bank``, the API, reviewers' "remove and
add to bank").

:class:`BankService` creates, imports (all of a file or nothing, duplicates skipped), adds,
removes, exports and matches, over any :class:`~moderation.ports.BankStore`. Keeping a process's
loaded banks current is :mod:`moderation.pipeline.bank_sync`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from numpy.typing import NDArray

from moderation.core.audit import record_for_bank_addition
from moderation.core.banks import BankEntry, BankInfo, EntryData
from moderation.core.review import HumanDecision, ReviewDecision, ReviewItem
from moderation.core.vpdq import VPDQ_QUALITY_THRESHOLD, VpdqFrame, prepared
from moderation.exceptions import BankBusy, BankError, BankExists, BankNotFound
from moderation.pipeline.bank_files import (
    BankFormat,
    EntryDefaults,
    parse_bank_text,
    write_bank_file,
)
from moderation.pipeline.bank_index import load_codes, load_index
from moderation.pipeline.video_banks import import_video
from moderation.ports import AuditSink, BankRequest, BankStore, ImageDecoder
from moderation.signals.hash_bank import (
    DEFAULT_FLAT_MAX,
    HASH_BYTES,
    MATCH_THRESHOLD,
    PDQ_SIDE,
    QUALITY_THRESHOLD,
    LoadedBanks,
    Match,
    PdqFeature,
    hash_frame,
    pdq_bytes,
)

__all__ = ["AddReport", "BankHit", "BankService", "ImportReport", "image_feature"]

log = logging.getLogger(__name__)

Progress = Callable[[int], object]


def image_feature(decoder: ImageDecoder, data: bytes) -> PdqFeature:
    """The PDQ hash of an image's (first) frame, computed exactly as workers compute it.

    Raises:
        ImageError: corrupt, too large, or a format outside the allowlist.
    """
    return hash_frame(decoder.decode(data, min_side=PDQ_SIDE)[0])


# --- curating ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AddReport:
    """What an addition did: the id of every entry given (new or already there), in order."""

    bank: str
    ids: list[int]
    #: Whether each entry given is new (False: its hash was already in the bank).
    new: list[bool]

    @property
    def added(self) -> int:
        return sum(self.new)

    @property
    def already_in_bank(self) -> int:
        return len(self.new) - self.added


@dataclass(frozen=True)
class ImportReport:
    bank: str
    format: BankFormat
    rows: int
    added: int
    duplicates_in_file: int
    already_in_bank: int


@dataclass(frozen=True)
class BankHit:
    """A bank entry matched by an image."""

    bank: str
    entry: BankEntry
    distance: int
    quality: int
    variant: str


class BankService:
    """The bank use cases over a :class:`BankStore`.

    Args:
        store: where banks live.
        flat_max: banks up to this size are matched by brute force (see ``hash_bank``).
        review_banks: the banks reviewers may add removals to (created on first use).
        request_ttl_s: how long a reviewer's request waits for a second reviewer.
    """

    def __init__(
        self,
        store: BankStore,
        *,
        flat_max: int = DEFAULT_FLAT_MAX,
        review_banks: Sequence[str] = (),
        request_ttl_s: int = 30 * 24 * 3600,
    ) -> None:
        self.store = store
        self.flat_max = flat_max
        self.review_banks = tuple(review_banks)
        self.request_ttl_s = request_ttl_s

    def create(self, name: str, *, description: str = "") -> BankInfo:
        return self.store.create(name, description=description)

    def banks(self) -> list[BankInfo]:
        return self.store.banks()

    def info(self, name: str) -> BankInfo:
        return self.store.info(name)

    def delete(self, name: str) -> bool:
        return self.store.delete(name)

    def _live_rows(self, name: str) -> tuple[NDArray[np.void], NDArray[np.int64]]:
        """Live hashes of a bank, sorted (as 32-byte values), and their entry ids."""
        manifest = self.store.manifest(name)
        codes = load_codes(self.store, name, manifest.segments)
        ids = np.concatenate(
            [np.arange(s.first_id, s.end_id, dtype=np.int64) for s in manifest.segments]
            or [np.empty(0, np.int64)]
        )
        if manifest.removed:
            keep = ~np.isin(ids, np.fromiter(manifest.removed, np.int64))
            codes, ids = codes[keep], ids[keep]
        values = np.ascontiguousarray(codes).view(f"V{HASH_BYTES}").ravel()
        order = np.argsort(values, kind="stable")
        return values[order], ids[order]

    def add(
        self, name: str, entries: Sequence[EntryData], *, progress: Progress | None = None
    ) -> AddReport:
        """Add entries, skipping hashes the bank already holds (live), all at once.

        Raises:
            BankNotFound, BankBusy, QueueUnavailable.
        """
        with self.store.writing(name):
            values, ids = self._live_rows(name)
            incoming = pdq_bytes(e.pdq for e in entries).view(f"V{HASH_BYTES}").ravel()
            where = np.searchsorted(values, incoming)
            safe = np.minimum(where, max(len(values) - 1, 0))
            present = (where < len(values)) & (values[safe] == incoming) if len(values) else None
            out: list[int] = [-1] * len(entries)
            fresh: list[EntryData] = []
            positions: list[int] = []
            first_of: dict[str, int] = {}  # a hash given twice is added once
            repeats: list[tuple[int, int]] = []
            for i, entry in enumerate(entries):
                if present is not None and present[i]:
                    out[i] = int(ids[safe[i]])
                    if progress is not None:
                        progress(1)
                elif entry.pdq in first_of:
                    repeats.append((i, first_of[entry.pdq]))
                else:
                    first_of[entry.pdq] = i
                    fresh.append(entry)
                    positions.append(i)
            new_ids = self.store.append(name, fresh, progress=progress)
            for i, entry_id in zip(positions, new_ids, strict=True):
                out[i] = entry_id
            for i, first in repeats:
                out[i] = out[first]
        fresh_positions = set(positions)
        return AddReport(
            bank=name, ids=out, new=[i in fresh_positions for i in range(len(entries))]
        )

    def import_text(
        self,
        name: str,
        text: str,
        *,
        source: str,
        fmt: BankFormat | None = None,
        defaults: EntryDefaults | None = None,
        progress: Progress | None = None,
        checked: Progress | None = None,
    ) -> ImportReport:
        """Import a bank file: every row validated first (``BankFileError`` with ``file:line``
        errors refuses the whole file), then all new entries in one atomic addition.
        ``checked`` is told of rows validated, ``progress`` of rows written.

        Raises:
            BankFileError, BankNotFound, BankBusy, QueueUnavailable.
        """
        self.store.info(name)  # an unknown bank fails before the file is read
        parsed = parse_bank_text(text, source=source, fmt=fmt, defaults=defaults, progress=checked)
        report = self.add(name, parsed.entries, progress=progress)
        return ImportReport(
            bank=name,
            format=parsed.format,
            rows=len(parsed.entries) + parsed.duplicates,
            added=report.added,
            duplicates_in_file=parsed.duplicates,
            already_in_bank=report.already_in_bank,
        )

    def remove(self, name: str, *, ids: Iterable[int] = (), hashes: Iterable[str] = ()) -> int:
        """Remove entries by id or by hash; returns how many live entries were removed.

        Raises:
            BankNotFound, BankBusy, InvalidHashError, QueueUnavailable.
        """
        wanted = set(ids)
        hashes = list(hashes)
        with self.store.writing(name):
            if hashes:
                values, live_ids = self._live_rows(name)
                for value in pdq_bytes(hashes).view(f"V{HASH_BYTES}").ravel():
                    lo = np.searchsorted(values, value, side="left")
                    hi = np.searchsorted(values, value, side="right")
                    wanted.update(int(i) for i in live_ids[lo:hi])
            return self.store.remove(name, wanted)

    def entries(self, name: str) -> Iterator[BankEntry]:
        return self.store.scan(name)

    def export(
        self, name: str, fmt: BankFormat = BankFormat.TE, *, delimiter: str = ","
    ) -> Iterator[str]:
        self.store.info(name)
        return write_bank_file(self.store.scan(name), fmt, delimiter=delimiter)

    def match(
        self,
        feature: PdqFeature,
        names: Sequence[str] | None = None,
        *,
        max_distance: int = MATCH_THRESHOLD,
        min_quality: int = QUALITY_THRESHOLD,
        loaded: LoadedBanks | None = None,
    ) -> list[BankHit]:
        """The entries of the named banks (default: all) within ``max_distance`` of an image's
        hash, nearest first. Banks are loaded from the store unless ``loaded`` has them."""
        hits: list[BankHit] = []
        queries = [q for q in feature.queries() if q[1] >= min_quality]
        if not queries:
            return hits
        array = np.frombuffer(b"".join(q[0] for q in queries), np.uint8).reshape(-1, HASH_BYTES)
        for name in names or [b.name for b in self.store.banks()]:
            index = (loaded.get(name) if loaded else None) or load_index(
                self.store, name, flat_max=self.flat_max
            )
            best: dict[int, tuple[Match, int, str]] = {}
            for (_, quality, variant), matches in zip(
                queries, index.search(array, max_distance), strict=True
            ):
                for m in matches:
                    if m.entry_id not in best or m.distance < best[m.entry_id][0].distance:
                        best[m.entry_id] = (m, quality, variant)
            entries = self.store.entries(name, sorted(best))
            for entry_id, (m, quality, variant) in best.items():
                if entry_id in entries:
                    hits.append(BankHit(name, entries[entry_id], m.distance, quality, variant))
        hits.sort(key=lambda h: (h.distance, h.bank, h.entry.id))
        return hits

    # --- reviewers: "remove and add to bank" ----------------------------------------------

    def bank_targets(self, item: ReviewItem) -> list[str]:
        """The banks a reviewer may add this item's image to (none without a usable hash: the
        image's, or for a video one of its scored frames')."""
        return list(self.review_banks) if _bankable(item) else []

    def check_request(self, item: ReviewItem, *, bank: str) -> None:
        """Whether a reviewer may ask to add this item's image to ``bank``.

        Raises:
            BankError: the bank is not one reviewers may add to, or the image has no usable hash.
        """
        if bank not in self.review_banks:
            allowed = ", ".join(self.review_banks) or "none configured"
            raise BankError(f"reviewers may add to these banks only: {allowed}")
        if not _bankable(item):
            raise BankError(
                "this image has no PDQ hash of usable quality "
                f"(quality {item.content_pdq_quality}); it cannot be banked"
            )

    def request_addition(self, item: ReviewItem, *, bank: str, reviewer: str) -> None:
        """Record a reviewer's request to add a reviewed image to ``bank`` once its removal is
        final (after the second reviewer for critical items); creates the bank on first use.

        Raises:
            BankError: see :meth:`check_request`.
        """
        self.check_request(item, bank=bank)
        try:
            self.store.info(bank)
        except BankNotFound:
            with contextlib.suppress(BankExists):
                self.store.create(bank, description="Removals by human reviewers")
        self.store.request_addition(
            BankRequest(
                review_id=item.review_id, bank=bank, reviewer=reviewer, at=datetime.now(UTC)
            ),
            self.request_ttl_s,
        )

    def add_reviewed(
        self,
        decision: HumanDecision,
        *,
        pdq: str | None,
        quality: int | None,
        content_sha256: str | None,
        content_ref: str | None,
        audit: AuditSink,
        frames: Sequence[VpdqFrame] = (),
        wait_s: float = 10.0,
    ) -> BankEntry | None:
        """Carry out a reviewer's request for a final removal: add the image's hash to the bank
        and audit it. Idempotent (a redelivered decision finds the hash already banked and
        rewrites the same audit record). None when nothing was requested.

        A video (``frames``: its sampled frames' vPDQ hashes, ``verdict.video.frame_hashes``)
        is banked whole, as :func:`~moderation.pipeline.video_banks.import_video` banks one:
        every frame an entry with the video key ``job:<job id>``, so a vPDQ category of the
        bank matches the video again and a photo category matches any of its frames. The
        returned entry is its first frame's.

        Raises:
            BankBusy: the bank stayed locked (an import) for ``wait_s``; the decision is
                delivered again later.
            AuditSinkUnavailable, QueueUnavailable: transient.
        """
        if decision.decision is not ReviewDecision.REMOVE:
            return None
        request = self.store.addition_request(decision.review_id)
        if request is None:
            return None
        if prepared(frames, VPDQ_QUALITY_THRESHOLD):
            return self._add_reviewed_video(
                decision,
                request,
                list(frames),
                content_sha256=content_sha256,
                content_ref=content_ref,
                audit=audit,
                wait_s=wait_s,
            )
        if pdq is None or (quality or 0) < QUALITY_THRESHOLD:
            log.warning("review %s: no usable PDQ hash; not banked", decision.review_id)
            return None
        entry = EntryData(
            pdq=pdq,
            source=f"review:{decision.policy_id}/{decision.category_id}",
            label=decision.reason_code or "",
            added_at=decision.decided_at,
            reference_id=decision.job_id,
            quality=quality,
        )
        deadline = time.monotonic() + wait_s
        while True:
            try:
                report = self.add(request.bank, [entry])
                break
            except BankBusy:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.2)
        entry_id = report.ids[0]
        audit.write(
            record_for_bank_addition(
                decision,
                reviewer=request.reviewer,
                bank=request.bank,
                entry_id=entry_id,
                pdq=pdq,
                quality=quality,
                created=report.added == 1,
                content_sha256=content_sha256,
                content_ref=content_ref,
            )
        )
        return BankEntry.of(request.bank, entry_id, entry)

    def _add_reviewed_video(
        self,
        decision: HumanDecision,
        request: BankRequest,
        frames: list[VpdqFrame],
        *,
        content_sha256: str | None,
        content_ref: str | None,
        audit: AuditSink,
        wait_s: float,
    ) -> BankEntry:
        video = f"job:{decision.job_id}"
        created = True
        deadline = time.monotonic() + wait_s
        while True:
            try:
                import_video(
                    self.store,
                    request.bank,
                    frames,
                    video=video,
                    source=f"review:{decision.policy_id}/{decision.category_id}",
                    label=decision.reason_code or "",
                    reference_id=decision.job_id,
                )
                break
            except BankExists:  # a redelivered decision: the video is banked already
                created = False
                break
            except BankBusy:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.2)
        banked = [e for e in self.store.scan(request.bank) if e.video == video]
        banked.sort(key=lambda e: (e.frame_number or 0, e.id))
        first = banked[0]
        audit.write(
            record_for_bank_addition(
                decision,
                reviewer=request.reviewer,
                bank=request.bank,
                entry_id=first.id,
                pdq=first.pdq,
                quality=first.quality,
                created=created,
                content_sha256=content_sha256,
                content_ref=content_ref,
                video={
                    "video": video,
                    "frames": len(banked),
                    "matching_frames": first.video_frames,
                    "entry_ids": [e.id for e in banked],
                },
            )
        )
        return first


def _bankable(item: ReviewItem) -> bool:
    """Whether the item has a hash of usable quality: its image's, or (a video) a scored
    frame's."""
    if item.content_pdq is not None and (item.content_pdq_quality or 0) >= QUALITY_THRESHOLD:
        return True
    video = item.verdict.video
    return video is not None and any(
        h.quality >= VPDQ_QUALITY_THRESHOLD for h in video.frame_hashes
    )
