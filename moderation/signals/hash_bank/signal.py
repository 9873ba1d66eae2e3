"""The hash-bank signal (``signal: hash_bank``): scores bank categories from the PDQ hashes of
an image against :class:`~moderation.signals.hash_bank.pdq_index.LoadedBanks`."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from threatexchange.signal_type.pdq.pdq_utils import BITS_IN_PDQ

from moderation.core.banks import BankEntry
from moderation.core.policy import HASH_BANK_SIGNAL
from moderation.core.scoring import CategorySlot, Evidence, FeatureBatch
from moderation.core.vpdq import VpdqRule
from moderation.exceptions import ModerationError
from moderation.signals.hash_bank.pdq_hasher import HASH_BYTES, PDQ_SIDE, PdqFeature, hash_frame
from moderation.signals.hash_bank.pdq_index import BankIndex, LoadedBanks, Match
from moderation.signals.hash_bank.vpdq_match import VideoHit, match_videos

__all__ = ["HashBankScorer", "HashBankSignal"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Found:
    """The nearest live entry of one bank for one image row."""

    match: Match
    quality: int
    variant: str
    query: str


@dataclass(frozen=True, slots=True)
class _Category:
    bank: str
    max_distance: int
    min_quality: int
    #: Whole videos matched with ThreatExchange's vPDQ rule (None: each frame as a photo).
    vpdq: VpdqRule | None = None


class HashBankScores:
    """Scores of N rows against the bank categories, with what matched."""

    def __init__(
        self,
        scorer: HashBankScorer,
        scores: NDArray[np.float32],
        found: list[dict[str, _Found]],
        features: Sequence[PdqFeature | None],
        videos: Mapping[int, Mapping[int, VideoHit]] | None = None,
        ceiling: NDArray[np.int8] | None = None,
    ) -> None:
        self.scorer = scorer
        self._scores = scores
        self.found = found
        self.features = features
        #: Per vPDQ category column, per row: the banked video it matched.
        self.videos = videos or {}
        #: (N, C_s) band caps: 1 where the match is a quarantined entry (review, never block).
        self.ceiling = ceiling

    @property
    def scores(self) -> NDArray[np.float32]:
        return self._scores

    def evidence(self, rows: NDArray[np.intp], cols: NDArray[np.intp]) -> list[list[Evidence]]:
        wanted: dict[str, set[int]] = {}
        for row, col in zip(rows.tolist(), cols.tolist(), strict=True):
            category = self.scorer.categories[col]
            video = self.videos.get(col, {}).get(row)
            if video is not None:
                wanted.setdefault(category.bank, set()).add(video.entry_id)
                continue
            hit = self.found[row].get(category.bank)
            if hit is not None and self._scores[row, col] > 0:
                wanted.setdefault(category.bank, set()).add(hit.match.entry_id)
        entries: dict[str, Mapping[int, BankEntry]] = {}
        for bank, ids in wanted.items():
            try:
                entries[bank] = self.scorer.banks.lookup(bank, sorted(ids))
            except ModerationError as exc:  # the match stands; its metadata is missing
                log.warning("bank %s: entry metadata unavailable: %s", bank, exc)
                entries[bank] = {}
        out: list[list[Evidence]] = []
        for row, col in zip(rows.tolist(), cols.tolist(), strict=True):
            out.append([self._one(row, col, entries)])
        return out

    def _one(self, row: int, col: int, entries: Mapping[str, Mapping[int, BankEntry]]) -> Evidence:
        category = self.scorer.categories[col]
        feature = self.features[row]
        base: dict[str, Any] = {
            "bank": category.bank,
            "max_distance": category.max_distance,
            "quality": feature.quality if feature else None,
            "pdq": feature.hex if feature else None,
        }
        score = float(self._scores[row, col])
        if category.vpdq is not None:
            return self._video(row, col, base, score, entries)
        hit = self.found[row].get(category.bank)
        if hit is not None and score > 0:
            entry = entries.get(category.bank, {}).get(hit.match.entry_id)
            details = {
                **base,
                "entry_id": hit.match.entry_id,
                "distance": hit.match.distance,
                "quality": hit.quality,
                "variant": hit.variant,
                "query_pdq": hit.query,
            }
            if entry is not None:
                details.update(entry.evidence_details())
            name = entry.label if entry is not None and entry.label else "entry"
            label = f"{category.bank} #{hit.match.entry_id}: {name}"
            if self.ceiling is not None and self.ceiling[row, col] < 2:
                details["quarantined"] = True
                label += " (entry quarantined: sent to review, not blocked)"
            return Evidence(HASH_BANK_SIGNAL, label, score, details)
        if feature is None:
            return Evidence(HASH_BANK_SIGNAL, "no PDQ hash for this image", 0.0, base)
        if feature.quality < category.min_quality and (
            feature.trimmed is None or feature.trimmed[1] < category.min_quality
        ):
            return Evidence(
                HASH_BANK_SIGNAL,
                f"hash quality {feature.quality} below {category.min_quality}: not matched",
                0.0,
                base,
            )
        return Evidence(
            HASH_BANK_SIGNAL,
            f"no entry of {category.bank} within {category.max_distance} bits",
            0.0,
            base,
        )

    def _video(
        self,
        row: int,
        col: int,
        base: dict[str, Any],
        score: float,
        entries: Mapping[str, Mapping[int, BankEntry]],
    ) -> Evidence:
        category = self.scorer.categories[col]
        rule = category.vpdq
        assert rule is not None
        hit = self.videos.get(col, {}).get(row)
        base = {**base, "match": "vpdq"}
        if hit is None or score <= 0:
            return Evidence(
                HASH_BANK_SIGNAL,
                f"no video of {category.bank} matched (vPDQ: {rule.query_percent:g}% of this"
                f" video's frames, {rule.indexed_percent:g}% of the banked video's)",
                0.0,
                base,
            )
        entry = entries.get(category.bank, {}).get(hit.entry_id)
        details = {
            **base,
            "entry_id": hit.entry_id,
            "distance": hit.distance,
            "video": hit.video,
            "query_share": round(hit.shares.query_percent, 2),
            "indexed_share": round(hit.shares.indexed_percent, 2),
        }
        if entry is not None:
            details.update(entry.evidence_details())
        name = entry.label if entry is not None and entry.label else hit.video
        label = (
            f"{category.bank} video {name}: {hit.shares.query_percent:.0f}% of this video,"
            f" {hit.shares.indexed_percent:.0f}% of the banked one"
        )
        return Evidence(HASH_BANK_SIGNAL, label, score, details)


class HashBankScorer:
    """Scores rows against the bank categories of a policy set (built once per policy set; the
    banks themselves are read at each call, so a reloaded bank applies at once)."""

    def __init__(self, slots: Sequence[CategorySlot], banks: LoadedBanks) -> None:
        self.banks = banks
        self.categories: list[_Category] = []
        for slot in slots:
            ref = slot.category.category.bank
            if ref is None:  # the policy schema requires it; a compiled category may not
                raise ValueError(f"category {slot.key} uses signal hash_bank without a bank")
            vpdq = None
            if ref.vpdq is not None:
                vpdq = VpdqRule(
                    query_percent=ref.vpdq.query_share,
                    indexed_percent=ref.vpdq.indexed_share,
                    max_distance=ref.max_distance,
                    min_quality=ref.min_quality,
                )
            self.categories.append(_Category(ref.name, ref.max_distance, ref.min_quality, vpdq))
        self.radius: dict[str, int] = {}
        self.min_quality: dict[str, int] = {}
        for c in self.categories:
            if c.vpdq is not None:
                continue
            self.radius[c.bank] = max(self.radius.get(c.bank, 0), c.max_distance)
            self.min_quality[c.bank] = min(self.min_quality.get(c.bank, 100), c.min_quality)
        self._missing_logged: set[str] = set()

    def score(self, batch: FeatureBatch) -> HashBankScores:
        n = len(batch)
        raw = batch.features.get(HASH_BANK_SIGNAL)
        features: list[PdqFeature | None] = list(raw) if raw is not None else [None] * n
        found: list[dict[str, _Found]] = [{} for _ in range(n)]
        for bank, radius in self.radius.items():
            index = self.banks.get(bank)
            if index is None:
                if bank not in self._missing_logged:
                    self._missing_logged.add(bank)
                    log.error("bank %r is not loaded: its categories match nothing", bank)
                continue
            self._search(index, radius, self.min_quality[bank], features, found)
        scores = np.zeros((n, len(self.categories)), dtype=np.float32)
        videos = self._videos(batch, features)
        for col, hits in videos.items():
            for row, video in hits.items():
                scores[row, col] = 1.0 - video.distance / BITS_IN_PDQ
        ceiling: NDArray[np.int8] | None = None
        quarantined = {bank: self.banks.quarantined(bank) for bank in self.radius}
        for row in range(n):
            for col, category in enumerate(self.categories):
                if category.vpdq is not None:
                    continue
                hit = found[row].get(category.bank)
                if (
                    hit is not None
                    and hit.match.distance <= category.max_distance
                    and hit.quality >= category.min_quality
                ):
                    scores[row, col] = 1.0 - hit.match.distance / BITS_IN_PDQ
                    if hit.match.entry_id in quarantined.get(category.bank, ()):
                        if ceiling is None:
                            ceiling = np.full((n, len(self.categories)), 2, np.int8)
                        ceiling[row, col] = 1
        return HashBankScores(self, scores, found, features, videos, ceiling)

    def _videos(
        self, batch: FeatureBatch, features: Sequence[PdqFeature | None]
    ) -> dict[int, dict[int, VideoHit]]:
        """Per vPDQ category column, the rows that matched a banked video."""
        out: dict[int, dict[int, VideoHit]] = {}
        groups: list[list[int]] | None = None
        for col, category in enumerate(self.categories):
            if category.vpdq is None:
                continue
            index = self.banks.get(category.bank)
            if index is None:
                if category.bank not in self._missing_logged:
                    self._missing_logged.add(category.bank)
                    log.error("bank %r is not loaded: its categories match nothing", category.bank)
                continue
            groups = groups if groups is not None else batch.group_rows()
            out[col] = match_videos(index, self.banks.lookup, category.vpdq, groups, features)
        return out

    @staticmethod
    def _search(
        index: BankIndex,
        radius: int,
        min_quality: int,
        features: Sequence[PdqFeature | None],
        found: list[dict[str, _Found]],
    ) -> None:
        owners: list[tuple[int, int, str, bytes]] = []  # (row, quality, variant, hash)
        for row, feature in enumerate(features):
            if feature is None:
                continue
            for digest, quality, variant in feature.queries():
                if quality >= min_quality:
                    owners.append((row, quality, variant, digest))
        if not owners:
            return
        queries = np.frombuffer(b"".join(o[3] for o in owners), dtype=np.uint8).reshape(
            -1, HASH_BYTES
        )
        for (row, quality, variant, digest), matches in zip(
            owners, index.search(queries, radius), strict=True
        ):
            if not matches:
                continue
            best = matches[0]
            current = found[row].get(index.name)
            if current is None or best.distance < current.match.distance:
                found[row][index.name] = _Found(best, quality, variant, digest.hex())


class HashBankSignal:
    """PDQ hashes of every image, matched against the loaded banks."""

    name = HASH_BANK_SIGNAL
    needs_image = True
    #: Decoded frames must keep at least this short side (when the image has it) for hashing.
    min_side = PDQ_SIDE
    #: A hash (on the decode threads) and an index search: cheap, and never skipped (a known
    #: image is identified, and reported, whatever else decided).
    cost = 1.0

    def __init__(self, banks: LoadedBanks | None = None) -> None:
        self.banks = banks or LoadedBanks()

    def __reduce__(self) -> tuple[type[HashBankSignal], tuple[()]]:
        # Sent to a prepare process, the signal only hashes (features): its banks stay here.
        return (HashBankSignal, ())

    def features(self, image: Any) -> PdqFeature:
        return hash_frame(image)

    def fingerprint(self, feature: Any) -> dict[str, Any]:
        """The content identifiers kept with the job result and audit record."""
        if not isinstance(feature, PdqFeature):
            return {}
        return {"pdq": feature.hex, "pdq_quality": feature.quality}

    def scorer(self, slots: Sequence[CategorySlot]) -> HashBankScorer:
        return HashBankScorer(slots, self.banks)
