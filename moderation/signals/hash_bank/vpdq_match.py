"""Matching whole videos against a video bank with ThreatExchange's vPDQ rule
(:mod:`moderation.core.vpdq`), over a loaded :class:`~.pdq_index.BankIndex`.

A video bank stores one entry per frame of each banked video (every frame of its vPDQ file, so
that it exports as imported; a repeated hash counts once) (its ``video`` key, frame number,
timestamp, quality, and ``video_frames``: how many frames of its video take part in matching).
For one uploaded video (the rows of one image group of a feature batch):

1. its frames of quality at least ``min_quality``, each hash once, are the query frames;
2. every bank frame within ``max_distance`` bits of a query frame is found by the bank's exact
   index (faiss or the multi-index table), and its metadata looked up (bank frames of low
   quality are dropped, as ThreatExchange never indexes them);
3. per banked video, the query share (distinct query frames with a match in it) and the indexed
   share (distinct frames of it matched) decide whether it matched (:class:`VpdqRule`).

The frames of the upload that matched a matched banked video score ``1 − d/256`` (their nearest
frame of it), the others 0, so a video's verdict carries the segments where the banked video
appears. A photo entry in the bank (no ``video``) counts as a video of one frame.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from moderation.core.banks import BankEntry
from moderation.core.vpdq import VpdqRule, VpdqShares, match_shares
from moderation.signals.hash_bank.pdq_hasher import HASH_BYTES, PdqFeature
from moderation.signals.hash_bank.pdq_index import BankIndex, EntryLookup

__all__ = ["VideoHit", "match_videos"]


@dataclass(frozen=True, slots=True)
class VideoHit:
    """One uploaded frame's match in a matched banked video."""

    video: str
    entry_id: int
    distance: int
    shares: VpdqShares


def _video_of(entry: BankEntry) -> tuple[str, int]:
    if entry.video is not None:
        return entry.video, entry.video_frames or 1
    return f"entry:{entry.id}", 1


def match_videos(
    index: BankIndex,
    lookup: EntryLookup,
    rule: VpdqRule,
    groups: Sequence[Sequence[int]],
    features: Sequence[PdqFeature | None],
) -> dict[int, VideoHit]:
    """Per row of ``features`` that matched a banked video under ``rule``, its hit.

    Args:
        index: the bank, loaded.
        lookup: entry metadata by id (the bank's frames' videos).
        rule: distance, quality and shares.
        groups: the rows of each uploaded image (a video's sampled frames).
        features: each row's PDQ feature (None: not hashed).
    """
    out: dict[int, VideoHit] = {}
    for rows in groups:
        first: dict[bytes, int] = {}  # query hash -> its query frame number
        frame_of: dict[int, int] = {}  # row -> query frame number
        for row in rows:
            feature = features[row]
            if feature is None or feature.quality < rule.min_quality:
                continue
            frame_of[row] = first.setdefault(feature.hash, len(first))
        if not first:
            continue
        hashes = list(first)
        queries = np.frombuffer(b"".join(hashes), dtype=np.uint8).reshape(-1, HASH_BYTES)
        found = index.search(queries, rule.max_distance)
        ids = sorted({m.entry_id for matches in found for m in matches})
        entries: Mapping[int, BankEntry] = lookup(index.name, ids) if ids else {}
        pairs: dict[str, list[tuple[int, str]]] = {}  # video -> (query frame, its frame's hash)
        sizes: dict[str, int] = {}
        nearest: dict[tuple[str, int], tuple[int, int]] = {}  # (video, query) -> (d, entry)
        for q, matches in enumerate(found):
            for m in matches:
                entry = entries.get(m.entry_id)
                if entry is None or (
                    entry.quality is not None and entry.quality < rule.min_quality
                ):
                    continue
                video, size = _video_of(entry)
                sizes[video] = size
                pairs.setdefault(video, []).append((q, entry.pdq))
                best = nearest.get((video, q))
                if best is None or (m.distance, m.entry_id) < best:
                    nearest[(video, q)] = (m.distance, m.entry_id)
        for video, video_pairs in pairs.items():
            indexed = len({h for _, h in video_pairs})
            shares = match_shares(len(hashes), max(sizes[video], indexed), video_pairs)
            if not rule.matched(shares):
                continue
            for row, q in frame_of.items():
                hit = nearest.get((video, q))
                if hit is None:
                    continue
                current = out.get(row)
                if current is None or hit[0] < current.distance:
                    out[row] = VideoHit(video, hit[1], hit[0], shares)
    return out
