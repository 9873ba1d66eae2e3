"""Hash banks: the administration use cases (``moderation bank``, reviewers' additions) and a
process's bank synchroniser.
"""

from __future__ import annotations

import logging

from moderation.compose.stores import open_bank_store
from moderation.pipeline.bank_sync import BankSync
from moderation.pipeline.banks import BankService
from moderation.ports import BankStore
from moderation.settings import Settings
from moderation.signals import LoadedBanks

__all__ = ["build_banks"]

log = logging.getLogger(__name__)


def build_banks(settings: Settings, store: BankStore | None = None) -> BankService:
    """The bank use cases (``moderation bank``, reviewers' additions).

    Raises:
        QueueUnavailable: no Redis URL configured (and no store given).
    """
    b = settings.banks
    return BankService(
        store or open_bank_store(settings),
        flat_max=b.flat_max,
        review_banks=b.review_banks,
        request_ttl_s=b.request_ttl_s,
    )


def build_bank_sync(settings: Settings, store: BankStore, banks: LoadedBanks) -> BankSync:
    b = settings.banks
    return BankSync(
        store,
        banks,
        flat_max=b.flat_max,
        rebuild_after=b.rebuild_after,
        cache_size=b.metadata_cache,
    )
