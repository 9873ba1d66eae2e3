"""The PostgreSQL bank store against a real PostgreSQL: segments, versions, atomic imports,
tombstones, the write lock, reviewer requests, and a worker's loaded banks following it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import numpy as np
import pytest
from psycopg_pool import ConnectionPool

from moderation.adapters.postgres import banks as pg_banks
from moderation.adapters.postgres.banks import PostgresBankStore
from moderation.core.banks import EntryData
from moderation.exceptions import BankBusy, BankExists, BankFileError, BankNotFound
from moderation.pipeline.bank_sync import BankSync
from moderation.pipeline.banks import BankService
from moderation.ports import BankRequest
from moderation.signals.hash_bank import LoadedBanks


def _entries(n: int, seed: int, **meta: str) -> list[EntryData]:
    rng = np.random.default_rng(seed)
    return [EntryData(pdq=bytes(r).hex(), **meta) for r in rng.integers(0, 256, (n, 32), np.uint8)]


@pytest.fixture
def store(pg_url: str) -> Iterator[PostgresBankStore]:
    """The bank store on this module's database, emptied (the module's tests share it)."""
    pool = ConnectionPool(pg_url, min_size=1, max_size=4, open=True)
    with pool.connection() as conn:
        conn.execute("TRUNCATE banks, bank_segments, bank_entries, bank_requests")
    try:
        yield PostgresBankStore(pool)
    finally:
        pool.close()


def _rows(store: PostgresBankStore) -> tuple[int, int]:
    """Entry and segment rows in the database (tombstoned ones included)."""
    with store._pool.connection() as conn:
        [(entries, segments)] = conn.execute(
            "SELECT (SELECT count(*) FROM bank_entries), (SELECT count(*) FROM bank_segments)"
        ).fetchall()
    return int(entries), int(segments)


def test_banks_segments_and_versions(
    store: PostgresBankStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pg_banks, "SEGMENT_ROWS", 100)
    monkeypatch.setattr(pg_banks, "SMALL_APPEND", 10)
    v0 = store.version()
    info = store.create("known", description="d")
    assert (info.name, info.description, info.entries, info.version) == ("known", "d", 0, 1)
    with pytest.raises(BankExists):
        store.create("known")
    with pytest.raises(BankNotFound):
        store.create("Not A Name")
    with pytest.raises(BankNotFound):
        store.info("missing")
    assert store.version() > v0
    big = _entries(250, 1, label="big", source="s")
    with store.writing("known"):
        ids = store.append("known", big)
    assert ids == list(range(250))
    manifest = store.manifest("known")
    assert [(s.first_id, s.count) for s in manifest.segments] == [(0, 100), (100, 100), (200, 50)]
    assert store.read_hashes("known", manifest.segments[1]) == b"".join(
        bytes.fromhex(e.pdq) for e in big[100:200]
    )
    small = _entries(5, 2, label="small")
    with store.writing("known"):
        assert store.append("known", small) == [250, 251, 252, 253, 254]
    manifest = store.manifest("known")  # small additions fill the last segment
    assert [(s.first_id, s.count) for s in manifest.segments][-1] == (200, 55)
    assert store.read_hashes("known", manifest.segments[-1], 50) == b"".join(
        bytes.fromhex(e.pdq) for e in small
    )
    assert store.info("known").entries == 255 and store.info("known").version == 3
    found = store.entries("known", [0, 252, 999])
    assert set(found) == {0, 252}
    assert (found[0].pdq, found[0].label, found[0].source) == (big[0].pdq, "big", "s")
    assert found[0].added_at == big[0].added_at
    assert found[252].pdq == small[2].pdq and found[252].bank == "known"
    version = store.version()
    assert store.remove("known", [0, 252, 999]) == 2
    assert store.version() == version + 1
    assert store.remove("known", [0]) == 0
    assert set(store.entries("known", [0, 1, 252])) == {1}
    scanned = list(store.scan("known"))
    assert len(scanned) == 253 and scanned[0].id == 1
    assert store.info("known").removed == 2 and store.info("known").entries == 253
    assert store.manifest("known").removed == frozenset({0, 252})
    assert [b.name for b in store.banks()] == ["known"]
    assert store.delete("known") and _rows(store) == (0, 0)
    assert not store.delete("known")
    with pytest.raises(BankNotFound):
        store.manifest("known")


def test_an_interrupted_import_leaves_nothing_behind(store: PostgresBankStore) -> None:
    """An import that dies part-way (here: after 10,000 of 12,000 rows were sent) is rolled
    back whole: the bank, its manifest, its version and the tables are as before."""
    store.create("b")
    with store.writing("b"):
        store.append("b", _entries(30, 3))
    before = (store.manifest("b"), store.info("b"), store.version(), _rows(store))
    sent: list[int] = []

    def die_after_two_pages(n: int) -> None:
        sent.append(n)
        if len(sent) == 2:
            raise ConnectionResetError("connection lost mid-import")

    with pytest.raises(ConnectionResetError), store.writing("b"):
        store.append("b", _entries(12_000, 4), progress=die_after_two_pages)
    assert sent == [5000, 5000]
    assert (store.manifest("b"), store.info("b"), store.version(), _rows(store)) == before
    with store.writing("b"):  # the lock was released; ids carry on where they were
        assert store.append("b", _entries(2, 5)) == [30, 31]


def test_a_malformed_file_imports_nothing(store: PostgresBankStore) -> None:
    service = BankService(store)
    service.create("b")
    rows = [e.pdq for e in _entries(40, 5)]
    rows[33] = rows[33][:40]
    before = (store.manifest("b"), store.info("b"), _rows(store))
    with pytest.raises(BankFileError, match=r"feed.txt:34: hash: a PDQ hash is 64 hex digits"):
        service.import_text("b", "\n".join(rows), source="feed.txt")
    assert (store.manifest("b"), store.info("b"), _rows(store)) == before


def test_one_writer_at_a_time_and_reviewer_requests(store: PostgresBankStore) -> None:
    store.create("b")
    store.create("c")
    with store.writing("b"):
        with pytest.raises(BankBusy):
            store.writing("b").__enter__()
        with store.writing("c"):  # another bank: its own lock
            pass
    with store.writing("b"):  # released
        pass
    with pytest.raises(BankNotFound):
        store.writing("missing").__enter__()
    request = BankRequest(review_id="r1", bank="b", reviewer="rv_x", at=datetime.now(UTC))
    store.request_addition(request, ttl_s=60)
    assert store.addition_request("r1") == request
    assert store.addition_request("r2") is None
    store.request_addition(request.model_copy(update={"review_id": "r3"}), ttl_s=0)
    assert store.addition_request("r3") is None  # expired


def test_a_workers_banks_follow_the_store(store: PostgresBankStore) -> None:
    """What the workers do with the store: load every bank, poll the version, read only what
    changed (appended rows, tombstones), match against the new state."""
    service = BankService(store, flat_max=50_000)
    service.create("feed")
    rows = _entries(3000, 6)
    service.add("feed", rows)
    loaded = LoadedBanks()
    sync = BankSync(store, loaded, flat_max=50_000)
    sync.load()

    def nearest(entry: EntryData) -> list[int]:
        index = loaded.get("feed")
        assert index is not None
        probe = np.frombuffer(bytes.fromhex(entry.pdq), np.uint8).reshape(1, 32)
        return [m.entry_id for m in index.search(probe, 0)[0]]

    assert nearest(rows[2999]) == [2999]
    more = _entries(10, 7)
    service.add("feed", more)
    store.remove("feed", [5])
    sync.refresh()
    assert sync.idle(60)
    assert nearest(more[9]) == [3009] and nearest(rows[5]) == []
    index = loaded.get("feed")
    assert index is not None and index.live == 3009
