"""Hash banks: the administration use cases (``moderation bank``, reviewers' additions) and a
process's bank synchroniser.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from moderation.compose.stores import open_bank_store
from moderation.core.bank_guard import FloodRule
from moderation.pipeline.bank_guard import BankGuard
from moderation.pipeline.bank_sync import BankSync
from moderation.pipeline.banks import BankService
from moderation.ports import AuditSink, BankStore, ExchangeHealth
from moderation.settings import Settings
from moderation.signals import LoadedBanks

if TYPE_CHECKING:
    from psycopg_pool import ConnectionPool

    from moderation.pipeline.exchange_sync import ExchangeSync

__all__ = [
    "build_bank_sync",
    "build_banks",
    "open_bank_guard",
    "open_exchange_health",
    "open_exchange_sync",
]

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


def open_bank_guard(
    settings: Settings,
    database: ConnectionPool | None,
    *,
    loaded: LoadedBanks | None = None,
    banks: BankService | None = None,
    audit: AuditSink | None = None,
) -> BankGuard | None:
    """Flood quarantine and per-entry states (None without a database, or switched off)."""
    b = settings.banks
    if database is None or not b.flood_quarantine:
        return None
    from moderation.adapters.postgres.bank_guard import PostgresEntryGuard

    rule = FloodRule(
        window_s=b.flood_window_s,
        min_matches=b.flood_min_matches,
        factor=b.flood_factor,
        floor=b.flood_floor,
    )
    return BankGuard(
        PostgresEntryGuard(database), banks=banks, loaded=loaded, rule=rule, audit=audit
    )


def open_exchange_sync(database: ConnectionPool, banks: BankService) -> ExchangeSync:
    """Exchange sync of named banks (``banks.exchanges``): state in PostgreSQL."""
    from moderation.adapters.postgres.exchange_sync import PostgresExchangeSync
    from moderation.pipeline.exchange_sync import ExchangeSync

    return ExchangeSync(PostgresExchangeSync(database), banks)


def open_exchange_health(
    settings: Settings, database: ConnectionPool | None
) -> Callable[[Iterable[str]], list[ExchangeHealth]] | None:
    """The synced banks' health for the API's /metrics (None: no database, or no bank is
    synced from an exchange)."""
    if database is None or not settings.banks.exchanges:
        return None
    from moderation.adapters.postgres.exchange_sync import PostgresExchangeSync

    return PostgresExchangeSync(database).health
