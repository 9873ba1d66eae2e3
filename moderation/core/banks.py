"""Hash banks: named sets of known-bad PDQ hashes, each with its metadata. Pure: pydantic only.

A *bank* (``gifct-tvec``, ``reviewer-removals``) holds *entries*; an entry is one PDQ hash (64
lowercase hex digits, 256 bits) with where it came from (``source``), what it is (``label``),
when it was added (``added_at``), an optional id in the source's own system (``reference_id``,
e.g. a ThreatExchange descriptor id) and, when known, PDQ's quality score of the image it was
computed from. Entry ids are assigned by the bank (increasing, never reused).

Matching (:mod:`moderation.signals.hash_bank`) is by Hamming distance between 256-bit hashes;
a policy category backed by a bank (``signal: hash_bank``, ``bank: {name, max_distance}``) scores
``1 − distance/256`` for the nearest live entry within ``max_distance`` bits, 0 otherwise.
Reading and writing bank files (the formats of ThreatExchange and HMA) lives in
:mod:`moderation.pipeline.bank_files`; storage behind the ``BankStore`` port.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

__all__ = [
    "BANK_NAME_PATTERN",
    "PDQ_BITS",
    "PDQ_HEX_PATTERN",
    "BankEntry",
    "BankInfo",
    "BankManifest",
    "EntryData",
    "Segment",
    "is_bank_name",
]

#: Bits in a PDQ hash (64 hex digits).
PDQ_BITS = 256
PDQ_HEX_PATTERN = r"^[0-9a-f]{64}$"
#: Bank names: safe in Redis keys, URLs and file names.
BANK_NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,63}$"

PdqHex = Annotated[str, StringConstraints(pattern=PDQ_HEX_PATTERN)]
BankName = Annotated[str, StringConstraints(pattern=BANK_NAME_PATTERN)]
Text = Annotated[str, StringConstraints(max_length=500)]
VideoKey = Annotated[str, StringConstraints(min_length=1, max_length=200)]


def _now() -> datetime:
    return datetime.now(UTC)


def is_bank_name(name: str) -> bool:
    return re.fullmatch(BANK_NAME_PATTERN, name) is not None


class EntryData(BaseModel):
    """An entry before the bank gives it an id (a parsed file row, a reviewer's removal)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    pdq: PdqHex
    source: Text = ""
    label: Text = ""
    added_at: datetime = Field(default_factory=_now)
    reference_id: Text | None = None
    #: PDQ's quality score (0-100) of the image the hash came from, when known.
    quality: int | None = Field(default=None, ge=0, le=100)
    #: A video bank's frame (:mod:`moderation.core.vpdq`): the banked video's key in the bank,
    #: the frame's number and timestamp, and how many frames of its video take part in
    #: matching (quality at least 50, each hash once: the indexed share's denominator).
    video: VideoKey | None = None
    frame_number: int | None = Field(default=None, ge=0)
    timestamp_s: float | None = Field(default=None, ge=0)
    video_frames: int | None = Field(default=None, ge=1)

    def meta(self) -> dict[str, Any]:
        """The metadata without the hash, compactly (what a store keeps beside the hash)."""
        out: dict[str, Any] = {"s": self.source, "l": self.label, "a": self.added_at.isoformat()}
        if self.reference_id is not None:
            out["r"] = self.reference_id
        if self.quality is not None:
            out["q"] = self.quality
        if self.video is not None:
            out["v"] = [self.video, self.frame_number, self.timestamp_s, self.video_frames]
        return out

    @classmethod
    def from_meta(cls, pdq: str, meta: dict[str, Any]) -> EntryData:
        return cls(
            pdq=pdq,
            source=meta.get("s", ""),
            label=meta.get("l", ""),
            added_at=meta.get("a") or _now(),
            reference_id=meta.get("r"),
            quality=meta.get("q"),
            **_video_meta(meta.get("v")),
        )


def _video_meta(value: Any) -> dict[str, Any]:
    if not value:
        return {}
    video, frame_number, timestamp_s, video_frames = value
    return {
        "video": video,
        "frame_number": frame_number,
        "timestamp_s": timestamp_s,
        "video_frames": video_frames,
    }


class BankEntry(EntryData):
    """An entry of a bank, with its id."""

    id: int = Field(ge=0)
    bank: BankName

    @classmethod
    def of(cls, bank: str, entry_id: int, data: EntryData) -> BankEntry:
        return cls(bank=bank, id=entry_id, **data.model_dump())

    def evidence_details(self) -> dict[str, Any]:
        """What a verdict shows about a matched entry."""
        return {
            "bank": self.bank,
            "entry_id": self.id,
            "label": self.label,
            "source": self.source,
            "added_at": self.added_at.isoformat(),
            "reference_id": self.reference_id,
            "entry_pdq": self.pdq,
            **(
                {
                    "video": self.video,
                    "frame_number": self.frame_number,
                    "timestamp_s": self.timestamp_s,
                }
                if self.video is not None
                else {}
            ),
        }


class BankInfo(BaseModel):
    """A bank as listed: name, description, version and sizes."""

    model_config = ConfigDict(frozen=True)

    name: BankName
    description: str = ""
    created_at: datetime
    #: Increases on every change (import, add, remove): workers reload when it moves.
    version: int = 0
    #: Live entries (added and not removed).
    entries: int = 0
    removed: int = 0


class Segment(BaseModel):
    """A run of entries stored together: ids ``first_id .. first_id + count - 1``, in order."""

    model_config = ConfigDict(frozen=True)

    number: int = Field(ge=0)
    first_id: int = Field(ge=0)
    count: int = Field(ge=0)

    @property
    def end_id(self) -> int:
        return self.first_id + self.count


class BankManifest(BaseModel):
    """What a worker needs to (re)load a bank: its segments in id order, the removed ids."""

    model_config = ConfigDict(frozen=True)

    name: BankName
    version: int
    segments: tuple[Segment, ...]
    removed: frozenset[int]
    #: When the bank was created: a bank deleted and created again under its name is another.
    epoch: str = ""

    @property
    def rows(self) -> int:
        return sum(s.count for s in self.segments)

    def segment_of(self, entry_id: int) -> Segment | None:
        for segment in self.segments:
            if segment.first_id <= entry_id < segment.end_id:
                return segment
        return None

    def live(self, entry_id: int) -> bool:
        return entry_id not in self.removed and self.segment_of(entry_id) is not None
