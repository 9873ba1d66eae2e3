"""The Redis bank store against a real Redis-protocol server (valkey): segments, atomic imports,
tombstones, the write lock, reviewer requests; hot reload from it while scoring goes on."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from pydantic import SecretStr
from typer.testing import CliRunner

from moderation.adapters import redis_banks
from moderation.adapters.redis_banks import RedisBankStore
from moderation.cli import app as cli_app
from moderation.core.banks import EntryData
from moderation.exceptions import BankBusy, BankExists, BankFileError, BankNotFound
from moderation.pipeline.bank_sync import BankSync
from moderation.pipeline.banks import BankService
from moderation.ports import BankRequest
from moderation.settings import DatabaseSettings, Settings
from moderation.signals.hash_bank import LoadedBanks
from moderation.testmodel.robustness import world_images


def _entries(n: int, seed: int, **meta: str) -> list[EntryData]:
    rng = np.random.default_rng(seed)
    return [EntryData(pdq=bytes(r).hex(), **meta) for r in rng.integers(0, 256, (n, 32), np.uint8)]


@pytest.fixture
def store(redis_url: str) -> RedisBankStore:
    return RedisBankStore.from_url(redis_url, prefix="t:bank:")


def _keys(store: RedisBankStore) -> set[bytes]:
    return set(store.redis.scan_iter(match="t:bank:*"))


def test_banks_segments_and_versions(
    store: RedisBankStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_banks, "SEGMENT_ROWS", 100)
    monkeypatch.setattr(redis_banks, "SMALL_APPEND", 10)
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
    assert found[252].pdq == small[2].pdq and found[252].bank == "known"
    assert store.remove("known", [0, 252, 999]) == 2
    assert store.remove("known", [0]) == 0
    assert set(store.entries("known", [0, 1, 252])) == {1}
    scanned = list(store.scan("known"))
    assert len(scanned) == 253 and scanned[0].id == 1
    assert store.info("known").removed == 2 and store.info("known").entries == 253
    assert store.manifest("known").removed == frozenset({0, 252})
    assert [b.name for b in store.banks()] == ["known"]
    assert store.delete("known") and _keys(store) <= {b"t:bank:banks", b"t:bank:version"}


def test_an_interrupted_import_leaves_nothing_behind(
    store: RedisBankStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_banks, "SEGMENT_ROWS", 100)
    store.create("b")
    with store.writing("b"):
        store.append("b", _entries(30, 3))
    before = (store.manifest("b"), store.info("b"), _keys(store))
    written = []
    original = RedisBankStore._write_segment

    def fail_after_two(self: RedisBankStore, *args: object, **kwargs: object) -> None:
        if len(written) == 2:
            raise redis.ConnectionError("connection lost mid-import")
        written.append(args)
        original(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(RedisBankStore, "_write_segment", fail_after_two)
    with pytest.raises(Exception, match="connection lost"), store.writing("b"):
        store.append("b", _entries(350, 4))
    assert len(written) == 2
    assert (store.manifest("b"), store.info("b"), _keys(store)) == before


def test_a_malformed_file_imports_nothing(store: RedisBankStore) -> None:
    service = BankService(store)
    service.create("b")
    rows = [e.pdq for e in _entries(40, 5)]
    rows[33] = rows[33][:40]
    before = (store.manifest("b"), store.info("b"), _keys(store))
    with pytest.raises(BankFileError, match=r"feed.txt:34: hash: a PDQ hash is 64 hex digits"):
        service.import_text("b", "\n".join(rows), source="feed.txt")
    assert (store.manifest("b"), store.info("b"), _keys(store)) == before


def test_one_writer_at_a_time_and_reviewer_requests(store: RedisBankStore) -> None:
    store.create("b")
    with store.writing("b"), pytest.raises(BankBusy):
        store.writing("b").__enter__()
    with store.writing("b"):  # released
        pass
    request = BankRequest(review_id="r1", bank="b", reviewer="rv_x", at=datetime.now(UTC))
    store.request_addition(request, ttl_s=60)
    assert store.addition_request("r1") == request
    assert store.addition_request("r2") is None
    assert 0 < store.redis.ttl("t:bank:request:r1") <= 60


def test_scoring_goes_on_while_a_big_import_is_loaded(store: RedisBankStore) -> None:
    """A 100k-hash import and its index build happen off the scoring path: queries against the
    loaded banks keep being answered meanwhile (old version), then the new bank is swapped in."""
    service = BankService(store, flat_max=50_000)
    service.create("serving")
    serving = _entries(2000, 6)
    service.add("serving", serving)
    loaded = LoadedBanks()
    sync = BankSync(store, loaded, flat_max=50_000)
    sync.load()
    probe = np.frombuffer(bytes.fromhex(serving[7].pdq), np.uint8).reshape(1, 32)
    answered: list[tuple[float, int]] = []
    stop = threading.Event()

    def score() -> None:
        while not stop.is_set():
            index = loaded.get("serving")
            assert index is not None
            answered.append((time.monotonic(), index.search(probe, 31)[0][0].entry_id))

    scorer = threading.Thread(target=score, daemon=True)
    scorer.start()
    try:
        service.create("imported")
        rows = _entries(100_000, 7)
        started = time.monotonic()
        service.add("imported", rows)
        imported_at = time.monotonic()
        sync.refresh()  # hands the full build to the background thread and returns
        assert loaded.get("imported") is None
        assert sync.idle(120)
        built_at = time.monotonic()
    finally:
        stop.set()
        scorer.join(5)
    index = loaded.get("imported")
    assert index is not None and index.live == 100_000
    assert type(index.base).__name__ == "MultiIndex"
    q = np.frombuffer(bytes.fromhex(rows[99_999].pdq), np.uint8).reshape(1, 32)
    assert [m.entry_id for m in index.search(q, 0)[0]] == [99_999]
    during_import = [e for t, e in answered if started <= t <= imported_at]
    during_build = [e for t, e in answered if imported_at <= t <= built_at]
    assert during_import and during_build  # answered all along
    assert set(during_import + during_build) == {7}


@pytest.mark.parametrize("kind", ["redis", "postgres"])
def test_the_bank_command_line(
    kind: str, request: pytest.FixtureRequest, settings: Settings, tmp_path: Path
) -> None:
    """``moderation bank`` on the store the settings name: Redis, or the database when
    ``MODERATION_DATABASE__URL`` is set (then no Redis is needed)."""
    if kind == "postgres":
        database = DatabaseSettings(url=SecretStr(request.getfixturevalue("pg_url")))
        configured = settings.model_copy(update={"redis_url": None, "database": database})
    else:
        configured = settings.model_copy(update={"redis_url": request.getfixturevalue("redis_url")})
    env = configured.to_env(base={})
    runner = CliRunner()

    def bank(*args: str) -> Any:
        return runner.invoke(cli_app, ["bank", *args], env=env)

    assert bank("create", "feed", "--description", "a feed").exit_code == 0
    assert bank("create", "feed").exit_code == 1
    entries = _entries(30, 9)
    good = tmp_path / "feed.csv"
    good.write_text(
        "id,indicator,type,tags\n"
        + "".join(f"{i},{e.pdq},HASH_PDQ,tvec\n" for i, e in enumerate(entries))
    )
    imported = bank("import", "feed", str(good))
    assert imported.exit_code == 0, imported.output
    assert (
        "feed: 30 added, 0 already in the bank" in imported.output
        and "format te" in imported.output
    )
    bad = tmp_path / "bad.tsv"
    bad.write_text(f"{entries[0].pdq}\t1\n{entries[1].pdq[:-1]}\t2\nxyz\n")
    refused = bank("import", "feed", str(bad))
    assert refused.exit_code == 1
    assert f"{bad}:2: indicator: a PDQ hash is 64 hex digits, got 63" in refused.output
    assert f"{bad}:3:" in refused.output
    listed = bank("list")
    assert listed.exit_code == 0 and "feed" in listed.output and "30" in listed.output
    entries_out = bank("list", "feed", "--limit", "3")
    assert entries[0].pdq in entries_out.output and "30 entries" in entries_out.output
    exported = bank("export", "feed", "--format", "hma", "--tsv")
    assert exported.exit_code == 0
    rows = exported.output.strip().splitlines()
    assert len(rows) == 30 and rows[0].split("\t")[:2] == [entries[0].pdq, "0"]
    out_file = tmp_path / "out.csv"
    assert bank("export", "feed", "--out", str(out_file)).exit_code == 0
    assert out_file.read_text().startswith("id,indicator,type,status,tags")
    flat = tmp_path / "flat.png"
    world_images(1, seed=5, size=300)[0].save(flat)  # PDQ quality 12
    low = bank("add", "feed", str(flat))
    assert low.exit_code == 1 and "PDQ quality 12 is below 50" in low.output
    path = tmp_path / "img.png"
    world_images(1, seed=0, size=300)[0].save(path)
    added = bank("add", "feed", str(path), "--label", "from cli")
    assert added.exit_code == 0 and "feed #30:" in added.output and "(added)" in added.output
    again = bank("add", "feed", str(path))
    assert "(already in the bank)" in again.output
    assert bank("add", "feed", "--hash", "12345").exit_code == 1
    matched = bank("match", str(path), "--json")
    assert matched.exit_code == 0
    assert '"entry_id": 30' in matched.output and '"label": "from cli"' in matched.output
    removed = bank("remove", "feed", "--hash", entries[3].pdq, "0")
    assert removed.exit_code == 0 and "2 entries removed" in removed.output
    assert bank("remove", "feed", "0").exit_code == 1
    assert bank("delete", "feed").exit_code == 2
    assert bank("delete", "feed", "--yes").exit_code == 0


def test_delete_finds_every_key_of_the_bank_without_scanning(store: RedisBankStore) -> None:
    store.create("b")
    with store.writing("b"):
        store.append("b", _entries(30, 6))
    # An orphan a failed import could not delete (its segment number was named first).
    store.redis.sadd("t:bank:b:written", 5)
    store.redis.set("t:bank:b:seg:5", b"\0" * 32)
    store.redis.hset("t:bank:b:meta:5", "999", "{}")
    store.create("other")  # a bank whose name starts the same way keeps its keys
    store.redis.sadd("t:bank:bb:written", 0)
    assert store.delete("b")
    assert {k for k in _keys(store) if k.startswith(b"t:bank:b:")} == set()
    assert b"t:bank:bb:written" in _keys(store) and store.info("other").name == "other"
