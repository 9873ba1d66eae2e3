"""Video hash banks (vPDQ): importing, exporting and removing banked videos.

A video bank is a bank (:class:`~moderation.ports.BankStore`, PostgreSQL or the in-memory twin)
whose entries are the frames of banked videos: one entry per line of the video's vPDQ hash, with
its video key, frame number, timestamp and quality, and the number of its video's frames that
take part in matching (quality at least 50, each hash once). Workers load it like any bank
(faiss or the multi-index table over every frame); a policy category matches it with
``bank: {name: ..., vpdq: {query_share: 80, indexed_share: 0}}``
(:mod:`moderation.signals.hash_bank.vpdq_match`).

Files are ThreatExchange's vPDQ formats (:mod:`moderation.core.vpdq`): the reference's
per-video text (``frame_number,quality,hash,timestamp`` per line) and ``VPDQSignal``'s signal
string (a JSON list). A video is imported whole or not at all; removing it tombstones all its
frames (as photo entries are removed).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from moderation.core.banks import EntryData
from moderation.core.decision import FrameHash
from moderation.core.vpdq import (
    VPDQ_QUALITY_THRESHOLD,
    VpdqFormatError,
    VpdqFrame,
    format_signal,
    format_text,
    parse_signal,
    parse_text,
    prepared,
)
from moderation.exceptions import BankError, BankExists, BankFileError, PolicyIssue
from moderation.ports import BankStore, ImageDecoder
from moderation.signals.hash_bank import PDQ_SIDE, hash_frame

__all__ = [
    "VideoImport",
    "VpdqFormat",
    "export_video",
    "frames_of_verdict",
    "hash_video",
    "import_video",
    "parse_vpdq",
    "remove_video",
    "videos",
]


class VpdqFormat(str, Enum):
    #: The reference ``vpdq``'s per-video text: ``frame_number,quality,hash,timestamp``.
    TEXT = "text"
    #: ThreatExchange's ``VPDQSignal`` signal string (JSON list of ``hash,quality,timestamp``).
    SIGNAL = "signal"


@dataclass(frozen=True, slots=True)
class VideoImport:
    bank: str
    video: str
    frames: int
    #: Frames that take part in matching (quality at least 50, each hash once).
    matching_frames: int
    ids: list[int]


def parse_vpdq(text: str, fmt: VpdqFormat | None = None, *, source: str = "") -> list[VpdqFrame]:
    """The frames of a vPDQ file; the format is detected when not given (a JSON list is a
    signal string).

    Raises:
        BankFileError: malformed (the problem with its line).
    """
    if fmt is None:
        fmt = VpdqFormat.SIGNAL if text.lstrip().startswith("[") else VpdqFormat.TEXT
    try:
        return parse_text(text) if fmt is VpdqFormat.TEXT else parse_signal(text)
    except VpdqFormatError as exc:
        raise BankFileError(
            [PolicyIssue(source=source or "<vpdq>", line=None, field="vpdq", message=str(exc))]
        ) from None


def import_video(
    store: BankStore,
    bank: str,
    frames: list[VpdqFrame],
    *,
    video: str,
    source: str = "",
    label: str = "",
    reference_id: str | None = None,
) -> VideoImport:
    """Bank one video's vPDQ frames, all at once.

    Raises:
        BankExists: the bank already holds a live video with this key.
        BankError: no frame of usable quality (ThreatExchange indexes no such video).
        BankNotFound, BankBusy, QueueUnavailable.
    """
    usable = len(prepared(frames, VPDQ_QUALITY_THRESHOLD))
    if usable == 0:
        raise BankError(
            f"video {video!r}: no frame of quality {VPDQ_QUALITY_THRESHOLD} or more to match"
        )
    entries = [
        EntryData(
            pdq=f.pdq,
            source=source,
            label=label,
            reference_id=reference_id,
            quality=f.quality,
            video=video,
            frame_number=f.frame_number,
            timestamp_s=round(f.timestamp_s, 3),
            video_frames=usable,
        )
        for f in frames
    ]
    with store.writing(bank):
        if any(e.video == video for e in store.scan(bank)):
            raise BankExists(f"bank {bank!r} already holds video {video!r}")
        ids = store.append(bank, entries)
    return VideoImport(bank, video, len(frames), usable, ids)


def videos(store: BankStore, bank: str) -> dict[str, int]:
    """The live videos of a bank with their frame counts."""
    out: dict[str, int] = {}
    for entry in store.scan(bank):
        if entry.video is not None:
            out[entry.video] = out.get(entry.video, 0) + 1
    return out


def _frames(store: BankStore, bank: str, video: str) -> list[tuple[int, VpdqFrame]]:
    found = [
        (
            e.id,
            VpdqFrame(
                e.frame_number if e.frame_number is not None else 0,
                e.quality if e.quality is not None else 0,
                e.pdq,
                e.timestamp_s if e.timestamp_s is not None else 0.0,
            ),
        )
        for e in store.scan(bank)
        if e.video == video
    ]
    found.sort(key=lambda item: (item[1].frame_number, item[0]))
    return found


def export_video(store: BankStore, bank: str, video: str, fmt: VpdqFormat = VpdqFormat.TEXT) -> str:
    """A banked video's vPDQ hash in ``fmt``.

    Raises:
        BankError: no live video with this key in the bank; BankNotFound.
    """
    frames = [f for _, f in _frames(store, bank, video)]
    if not frames:
        raise BankError(f"bank {bank!r} holds no video {video!r}")
    return format_text(frames) if fmt is VpdqFormat.TEXT else format_signal(frames)


def remove_video(store: BankStore, bank: str, video: str) -> int:
    """Tombstone every frame of a banked video; returns how many were live."""
    with store.writing(bank):
        return store.remove(bank, [entry_id for entry_id, _ in _frames(store, bank, video)])


def hash_video(decoder: ImageDecoder, data: bytes) -> list[VpdqFrame]:
    """The vPDQ hash of a video (or an animation, or a still image as one frame): each sampled
    frame's frame number, PDQ quality and hash, and timestamp, hashed as the hash-bank signal
    hashes frames (so a banked video is hashed as uploads are).

    Raises:
        ImageError: the decoder's coded errors (corrupt, too long, unsupported).
    """
    media = decoder.decode_media(data, min_side=PDQ_SIDE)
    timeline = media.timeline
    stamps = timeline.timestamps if timeline is not None else (0.0,)
    numbers = (
        timeline.frame_numbers
        if timeline is not None and timeline.frame_numbers
        else tuple(range(len(stamps)))
    )
    out = []
    for frame, number, stamp in zip(media.frames, numbers, stamps, strict=True):
        feature = hash_frame(frame)
        out.append(VpdqFrame(number, feature.quality, feature.hex, round(stamp, 3)))
    return out


def frames_of_verdict(hashes: list[FrameHash]) -> list[VpdqFrame]:
    """A video verdict's sampled frames' hashes (``verdict.video.frame_hashes``, kept with the
    job's result and audit record) as vPDQ frames, to export or bank them."""
    return [VpdqFrame(h.frame_number, h.quality, h.pdq, h.timestamp_s) for h in hashes]
