"""Allow-lists (negative banks): hashes of known-benign content (memes, stock images, the
platform's own assets) that suppress matches of a bank or scores of a prompt category.

An allow-list is a bank like any other (``moderation bank create memes``, imported and synced the
same way); :class:`AllowLists` (the scorer's :class:`~moderation.core.scoring.Suppressor`)
matches every image's PDQ hash against the allow-list banks and, for an image within an
allow-list's ``max_distance`` bits, caps the categories it ``suppresses`` at allow. The score
stands; the verdict shows the suppression as the first evidence of the category
(``suppressed by allow-list memes #12``), and the audit record keeps it.

A rule's ``suppresses`` names what it takes out of action: ``"*"`` (every category), a category
(``"nudity"``, ``"policy/nudity"``), or every category backed by a bank (``"bank:gifct"``).
Images without a usable PDQ hash (quality below ``min_quality``, or not hashed because no policy
uses a bank and ``banks.hash_every_image`` is off) are never suppressed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from threatexchange.signal_type.pdq.pdq_utils import BITS_IN_PDQ

from moderation.core.policy import HASH_BANK_SIGNAL
from moderation.core.scoring import CategorySlot, Evidence, FeatureBatch, Suppression
from moderation.signals.hash_bank.pdq_hasher import PdqFeature
from moderation.signals.hash_bank.pdq_index import LoadedBanks
from moderation.signals.hash_bank.signal import HashBankScorer, _Found

__all__ = ["AllowListRule", "AllowLists"]


@dataclass(frozen=True, slots=True)
class AllowListRule:
    """One allow-list bank: how near an image must be, and what it suppresses."""

    suppresses: tuple[str, ...] = ("*",)
    max_distance: int = 31
    min_quality: int = 50

    def covers(self, slot: CategorySlot) -> bool:
        category = slot.category.category
        for target in self.suppresses:
            if target == "*" or target in (category.id, slot.key):
                return True
            if (
                target.startswith("bank:")
                and category.bank is not None
                and category.bank.name == target[5:]
            ):
                return True
        return False


@dataclass
class AllowLists:
    """The allow-list banks of a process, matched against every scored image."""

    banks: LoadedBanks
    rules: Mapping[str, AllowListRule] = field(default_factory=dict)

    def suppress(self, batch: FeatureBatch, slots: Sequence[CategorySlot]) -> Suppression | None:
        raw = batch.features.get(HASH_BANK_SIGNAL)
        if raw is None or not self.rules:
            return None
        features: list[PdqFeature | None] = list(raw)
        pairs: dict[tuple[int, int], Evidence] = {}
        for bank, rule in sorted(self.rules.items()):
            index = self.banks.get(bank)
            covered = [slot.column for slot in slots if rule.covers(slot)]
            if index is None or not covered:
                continue
            found: list[dict[str, _Found]] = [{} for _ in features]
            HashBankScorer._search(index, rule.max_distance, rule.min_quality, features, found)
            for row, hits in enumerate(found):
                hit = hits.get(bank)
                if hit is None or hit.match.distance > rule.max_distance:
                    continue
                why = Evidence(
                    HASH_BANK_SIGNAL,
                    f"suppressed by allow-list {bank} #{hit.match.entry_id}",
                    1.0 - hit.match.distance / BITS_IN_PDQ,
                    {
                        "allow_list": bank,
                        "entry_id": hit.match.entry_id,
                        "distance": hit.match.distance,
                        "quality": hit.quality,
                        "suppressed": True,
                    },
                )
                for col in covered:
                    pairs.setdefault((row, col), why)
        return Suppression(pairs) if pairs else None
