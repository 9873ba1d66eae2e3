"""Banks synced from hash exchanges (moderation.pipeline.exchange_sync): the use case over twins
and over PostgreSQL, and the NCMEC feed through the ``threatexchange`` library against a local
stub server that speaks NCMEC's hash sharing API v2 (XML, HTTP basic auth)."""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from psycopg_pool import ConnectionPool
from pydantic import SecretStr

from moderation.adapters.exchanges import open_exchange_feed
from moderation.adapters.memory import MemoryBankStore, MemoryExchangeFeed, MemoryExchangeSync
from moderation.adapters.postgres.exchange_sync import PostgresExchangeSync
from moderation.exceptions import ExchangeAuthError, ExchangeBusy
from moderation.pipeline.banks import BankService
from moderation.pipeline.exchange_sync import ExchangeSync
from moderation.ports import ExchangeDelta, ExchangeSyncStore
from moderation.settings import ExchangeSyncSettings

pytestmark = pytest.mark.xdist_group("postgres")

A = "f" * 64
B = "0" * 63 + "1"
C = "a" * 64


def _live(service: BankService, bank: str) -> set[str]:
    return {e.pdq for e in service.entries(bank)}


@pytest.fixture(params=["memory", "postgres"])
def sync_store(request: pytest.FixtureRequest) -> Iterator[ExchangeSyncStore]:
    if request.param == "memory":
        yield MemoryExchangeSync()
        return
    pool = ConnectionPool(request.getfixturevalue("pg_url"), min_size=1, max_size=4, open=True)
    with pool.connection() as conn:
        conn.execute("TRUNCATE exchange_checkpoints, exchange_records")
    try:
        yield PostgresExchangeSync(pool)
    finally:
        pool.close()


def test_sync_resumes_from_its_checkpoint_and_upstream_removals_tombstone(
    sync_store: ExchangeSyncStore,
) -> None:
    banks = BankService(MemoryBankStore(), flat_max=100)
    syncer = ExchangeSync(sync_store, banks, clock=lambda: 1_700_000_000.0)
    feed = MemoryExchangeFeed(
        [
            ExchangeDelta({"r1": [A], "r2": [B], "r3": [A]}, [], 2, b""),
        ]
    )
    first = syncer.sync("ncmec-a", feed, bank="csam")
    assert (first.added, first.removed, first.ignored, first.batches) == (2, 0, 2, 1)
    assert _live(banks, "csam") == {A, B}
    entry = next(e for e in banks.entries("csam") if e.pdq == B)
    assert entry.source == "exchange:ncmec-a" and entry.reference_id == "r2"
    assert sync_store.checkpoint("ncmec-a") == b"1" and sync_store.fetched("ncmec-a") == 3

    # Upstream: r2 deleted, r1 deleted (but r3 still carries A), r4 new. Only the new batch
    # is fetched (the checkpoint), B is tombstoned, A stays.
    feed.deltas.append(ExchangeDelta({"r4": [C]}, ["r2", "r1"], 0, b""))
    second = syncer.sync("ncmec-a", feed, bank="csam")
    assert (second.added, second.removed, second.batches) == (1, 1, 1)
    assert _live(banks, "csam") == {A, C}
    assert sync_store.records("ncmec-a", ["r1", "r2", "r3", "r4"]) == {"r3": [A], "r4": [C]}

    # A record changed upstream to another hash: the old one goes, the new one comes.
    feed.deltas.append(ExchangeDelta({"r4": [B]}, [], 0, b""))
    third = syncer.sync("ncmec-a", feed, bank="csam")
    assert (third.added, third.removed) == (1, 1) and _live(banks, "csam") == {A, B}

    # Nothing new upstream: nothing fetched, nothing changed.
    assert syncer.sync("ncmec-a", feed, bank="csam").batches == 0


def test_an_auth_error_leaves_no_state_and_one_syncer_at_a_time(
    sync_store: ExchangeSyncStore,
) -> None:
    banks = BankService(MemoryBankStore(), flat_max=100)
    syncer = ExchangeSync(sync_store, banks)
    refused = MemoryExchangeFeed(fail=ExchangeAuthError("exchange te: credentials refused"))
    with pytest.raises(ExchangeAuthError, match="credentials refused"):
        syncer.sync("te", refused)
    assert sync_store.checkpoint("te") is None and sync_store.fetched("te") == 0
    assert _live(banks, "te") == set()

    with sync_store.lock("te"), pytest.raises(ExchangeBusy):
        syncer.sync("te", MemoryExchangeFeed([ExchangeDelta({"x": [A]}, [], 0, b"")]))
    assert _live(banks, "te") == set()


# --- NCMEC through the library, against a stub of its API ------------------------------------

_FMT = "%Y-%m-%dT%H:%M:%SZ"


class _NcmecStub:
    """NCMEC hash sharing API v2 ``GET /v2/entries?from=&to=``: the entries whose time is in
    the range, as ``<queryResult>`` XML (images and deleted images; videos carry MD5 only)."""

    def __init__(self) -> None:
        self.entries: list[tuple[int, str]] = []  # (unix time, XML element)
        self.user = "esp"
        self.password = "secret"
        self.requests: list[str] = []

    def handler(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                stub.requests.append(self.path)
                want = "Basic " + base64.b64encode(f"{stub.user}:{stub.password}".encode()).decode()
                if self.headers.get("Authorization") != want:
                    self.send_response(401)
                    self.end_headers()
                    return
                url = urlparse(self.path)
                if url.path != "/v2/entries":
                    self.send_response(404)
                    self.end_headers()
                    return
                q = parse_qs(url.query)
                lo = datetime.strptime(q["from"][0], _FMT).timestamp()
                hi = datetime.strptime(q["to"][0], _FMT).timestamp()
                chosen = [(t, x) for t, x in stub.entries if lo <= t <= hi]
                images = "".join(x for _, x in chosen if "mage>" in x)
                videos = "".join(x for _, x in chosen if "ideo>" in x)
                top = max((t for t, _ in chosen), default=hi)
                stamp = datetime.fromtimestamp(top).strftime(_FMT)
                body = (
                    '<?xml version="1.0" encoding="UTF-8"?>'
                    '<queryResult xmlns="https://hashsharing.ncmec.org/hashsharing/v2">'
                    f'<images count="1" maxTimestamp="{stamp}">{images}</images>'
                    f'<videos count="1" maxTimestamp="{stamp}">{videos}</videos>'
                    "</queryResult>"
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler


def _image(entry_id: str, pdq: str, *, deleted: bool = False) -> str:
    tag = "deletedImage" if deleted else "image"
    prints = (
        "" if deleted else f"<fingerprints><pdq>{pdq}</pdq><md5>{'1' * 32}</md5></fingerprints>"
    )
    return (
        f'<{tag}><id>{entry_id}</id><member id="42">An ESP</member>'
        f"<classification>A1</classification>{prints}</{tag}>"
    )


def _video(entry_id: str) -> str:
    return (
        f'<video><id>{entry_id}</id><member id="42">An ESP</member>'
        f"<fingerprints><md5>{'2' * 32}</md5></fingerprints></video>"
    )


@pytest.fixture
def ncmec() -> Iterator[tuple[_NcmecStub, str]]:
    stub = _NcmecStub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), stub.handler())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield stub, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_an_ncmec_bank_syncs_incrementally_through_the_library(
    ncmec: tuple[_NcmecStub, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import threatexchange.exchanges.impl.ncmec_api as impl

    stub, url = ncmec
    now = [1_700_000_000.0]

    class _Clock:  # the library's "now" (its fetch ends 5 s before it), in this test only
        @staticmethod
        def time() -> float:
            return now[0]

    monkeypatch.setattr(impl, "time", _Clock)
    conf = ExchangeSyncSettings(
        kind="ncmec",
        environment="Industry",
        credentials="esp:secret",
        url=url,  # type: ignore[arg-type]
    )
    banks = BankService(MemoryBankStore(), flat_max=100)
    state = MemoryExchangeSync()
    syncer = ExchangeSync(state, banks)
    stub.entries = [
        (now[0] - 1000, _image("e1", A)),
        (now[0] - 900, _image("e2", B)),
        (now[0] - 800, _video("v1")),
    ]
    first = syncer.sync("ncmec", open_exchange_feed("ncmec", conf))
    assert (first.added, first.removed, first.ignored) == (2, 0, 1)
    assert _live(banks, "ncmec") == {A, B}

    # Later: e2 deleted upstream, e3 added. The next sync asks only for the new time range.
    now[0] += 600
    stub.entries += [
        (now[0] - 300, _image("e2", "", deleted=True)),
        (now[0] - 200, _image("e3", C)),
    ]
    stub.requests.clear()
    second = syncer.sync("ncmec", open_exchange_feed("ncmec", conf))
    assert (second.added, second.removed) == (1, 1)
    assert _live(banks, "ncmec") == {A, C}
    assert len(stub.requests) == 1
    first_from = parse_qs(urlparse(stub.requests[0]).query)["from"][0]
    assert datetime.strptime(first_from, _FMT).timestamp() == 1_700_000_000.0 - 5

    # Wrong credentials: a clear error, nothing applied, the checkpoint unchanged.
    before = state.checkpoint("ncmec")
    now[0] += 600
    stub.entries.append((now[0] - 100, _image("e4", "b" * 64)))
    wrong = conf.model_copy(update={"credentials": SecretStr("esp:nope")})
    with pytest.raises(ExchangeAuthError, match="HTTP 401"):
        syncer.sync("ncmec", open_exchange_feed("ncmec", wrong))
    assert state.checkpoint("ncmec") == before and _live(banks, "ncmec") == {A, C}


# --- ThreatExchange (Graph API threat_updates) through the library, against a stub --------------


def _update(upd_id: int, kind: str, value: str, at: int, *, delete: bool = False) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": str(upd_id),
        "indicator": value,
        "type": kind,
        "last_updated": at,
        "should_delete": delete,
    }
    if not delete:
        row["descriptors"] = {
            "data": [{"id": str(upd_id * 10), "owner": {"id": "77"}, "status": "MALICIOUS"}]
        }
    return row


def test_a_threatexchange_privacy_group_syncs_through_the_library() -> None:
    """``GET /{privacy_group}/threat_updates/?access_token&start_time&limit&fields``: JSON
    ``{"data": [...], "paging": {"next": url}}`` in ``last_updated`` order."""
    updates: list[dict[str, Any]] = []
    seen: list[dict[str, list[str]]] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            url = urlparse(self.path)
            q = parse_qs(url.query)
            seen.append(q)
            if q.get("access_token") != ["1234|secret"]:
                self._send(400, {"error": {"message": "Invalid OAuth access token", "code": 190}})
                return
            assert url.path == "/555/threat_updates/", url.path
            start = int(q.get("start_time", ["0"])[0])
            rows = [u for u in updates if u["last_updated"] >= start]
            offset = int(q.get("after", ["0"])[0])
            page = rows[offset : offset + 2]
            body: dict[str, Any] = {"data": page}
            if offset + 2 < len(rows):
                host = f"http://127.0.0.1:{self.server.server_address[1]}"
                body["paging"] = {
                    "next": f"{host}{url.path}?access_token=1234|secret"
                    f"&start_time={start}&after={offset + 2}"
                }
            self._send(200, body)

        def _send(self, code: int, body: dict[str, Any]) -> None:
            import json

            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        conf = ExchangeSyncSettings(
            kind="threatexchange",
            collaboration="555",
            credentials=SecretStr("1234|secret"),
            url=url,
        )
        banks = BankService(MemoryBankStore(), flat_max=100)
        state = MemoryExchangeSync()
        syncer = ExchangeSync(state, banks)
        updates[:] = [
            _update(1, "HASH_PDQ", A, 100),
            _update(2, "HASH_MD5", "3" * 32, 101),
            _update(3, "HASH_PDQ", B, 102),
        ]
        first = syncer.sync("te", open_exchange_feed("te", conf))
        assert (first.added, first.ignored, first.batches) == (2, 1, 2)
        assert _live(banks, "te") == {A, B}

        # B deleted upstream, C added: the next sync starts at the highest time seen.
        updates[:] = [*updates, _update(3, "HASH_PDQ", B, 200, delete=True)]
        updates.append(_update(4, "HASH_PDQ", C, 201))
        seen.clear()
        second = syncer.sync("te", open_exchange_feed("te", conf))
        assert seen[0]["start_time"] == ["102"]
        assert second.added == 1 and second.removed == 1
        assert _live(banks, "te") == {A, C}

        wrong = conf.model_copy(update={"credentials": SecretStr("1234|nope")})
        before = state.checkpoint("te")
        with pytest.raises(ExchangeAuthError):
            syncer.sync("te", open_exchange_feed("te", wrong))
        assert state.checkpoint("te") == before and _live(banks, "te") == {A, C}
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# --- StopNCII (FetchHashes) through the library, against a stub --------------------------------


def _hash_record(kind: str, value: str, at: int, status: str = "Active") -> dict[str, Any]:
    return {
        "lastModtimestamp": at,
        "signalType": kind,
        "hashValue": value,
        "hashStatus": status,
        "caseNumbers": {},
        "CSPFeedbacks": [],
    }


def test_a_stopncii_bank_syncs_and_withdrawn_hashes_are_removed() -> None:
    """``GET /FetchHashes?startTimestamp&pageSize[&nextPageToken]`` with the
    ``Ocp-Apim-Subscription-Key`` and ``x-functions-key`` headers: JSON ``count``,
    ``nextPageToken``, ``nextSetTimestamp``, ``hasMoreRecords``, ``hashRecords``."""
    import json

    records: list[dict[str, Any]] = []
    starts: list[int] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            url = urlparse(self.path)
            if (
                self.headers.get("Ocp-Apim-Subscription-Key") != "sub"
                or self.headers.get("x-functions-key") != "fn"
            ):
                self.send_response(401)
                self.end_headers()
                return
            assert url.path == "/FetchHashes", url.path
            start = int(parse_qs(url.query)["startTimestamp"][0])
            starts.append(start)
            rows = [r for r in records if r["lastModtimestamp"] >= start]
            top = max((r["lastModtimestamp"] for r in rows), default=start)
            data = json.dumps(
                {
                    "count": len(rows),
                    "nextPageToken": None,
                    "nextSetTimestamp": top + 1,
                    "hasMoreRecords": False,
                    "hashRecords": rows,
                }
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        conf = ExchangeSyncSettings(
            kind="stopncii",
            credentials=SecretStr("sub:fn"),
            url=f"http://127.0.0.1:{server.server_address[1]}",
        )
        banks = BankService(MemoryBankStore(), flat_max=100)
        state = MemoryExchangeSync()
        syncer = ExchangeSync(state, banks)
        records[:] = [
            _hash_record("ImagePDQ", A, 100),
            _hash_record("VideoMD5", "4" * 32, 101),
            _hash_record("ImagePDQ", B, 102),
        ]
        first = syncer.sync("stopncii", open_exchange_feed("stopncii", conf))
        assert first.added == 2 and first.ignored == 1 and _live(banks, "stopncii") == {A, B}

        records.append(_hash_record("ImagePDQ", B, 200, status="Withdrawn"))
        second = syncer.sync("stopncii", open_exchange_feed("stopncii", conf))
        assert starts[-1] == 103 and second.removed == 1
        assert _live(banks, "stopncii") == {A}

        wrong = conf.model_copy(update={"credentials": SecretStr("sub:nope")})
        with pytest.raises(ExchangeAuthError):
            syncer.sync("stopncii", open_exchange_feed("stopncii", wrong))
        assert _live(banks, "stopncii") == {A}
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# --- the scheduled loop (``moderation bank sync --every``) and its health ---------------------


def test_bank_sync_every_keeps_syncing_and_its_health_reaches_the_metrics(
    pg_url: str, tmp_path: Path
) -> None:
    """The real CLI loop against a ThreatExchange stub: it syncs each interval, a failing
    exchange counts failures (and the loop goes on), the next good sync resets them; the
    health is what the API's /metrics renders."""
    import json
    import os
    import subprocess
    import sys
    import time

    from moderation.adapters.postgres.banks import PostgresBankStore
    from moderation.metrics import render_exchange_gauges

    updates = [_update(1, "HASH_PDQ", A, 100)]
    down = threading.Event()
    fetches: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            fetches.append(self.path)
            start = int(parse_qs(urlparse(self.path).query).get("start_time", ["0"])[0])
            code, body = (
                (503, {"error": {"message": "down for maintenance"}})
                if down.is_set()
                else (200, {"data": [u for u in updates if u["last_updated"] >= start]})
            )
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    conf = {
        "kind": "threatexchange",
        "collaboration": "555",
        "credentials": "1234|secret",
        "url": f"http://127.0.0.1:{server.server_address[1]}",
        "interval_s": 3600,  # --interval overrides it: the loop below only goes on if it does
    }
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("MODERATION_")},
        "MODERATION_ENVIRONMENT": "development",
        "MODERATION_DATABASE__URL": pg_url,
        "MODERATION_BANKS__EXCHANGES": json.dumps({"te-loop": conf}),
        "MODERATION_AUDIT__LOCAL_DIR": str(tmp_path / "audit"),
        "MODERATION_AUDIT__SPOOL_DIR": str(tmp_path / "spool"),
        "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
    }
    pool = ConnectionPool(pg_url, min_size=1, max_size=2, open=True)
    health = PostgresExchangeSync(pool)
    bank = BankService(PostgresBankStore(pool), flat_max=100)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "moderation.cli",
            "bank",
            "sync",
            "te-loop",
            "--every",
            "--interval",
            "0.2",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )

    def until(done: Any) -> None:
        """Poll the database until ``done()``; the loop must stay up meanwhile (the deadline
        only keeps a broken build from hanging)."""
        deadline = time.monotonic() + 120
        while not done():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else b""
            assert time.monotonic() < deadline, "the sync loop never got there"
            time.sleep(0.05)

    def te() -> Any:
        return health.health(["te-loop"])[0]

    try:
        until(lambda: te().last_success_age_s is not None)
        assert _live(bank, "te-loop") == {A} and te().failures == 0

        down.set()  # the exchange fails: each round counts a failure, the loop goes on
        until(lambda: te().failures >= 2)
        failing = te()
        assert failing.last_error_code == "exchange_unavailable"
        text = render_exchange_gauges(
            [("te-loop", failing.last_success_age_s, failing.failures, failing.errors_total, 0.2)]
        ).decode()
        failures = f'moderation_exchange_sync_failures{{exchange="te-loop"}} {failing.failures}.0'
        assert failures in text
        assert 'moderation_exchange_sync_interval_seconds{exchange="te-loop"} 0.2' in text

        updates.append(_update(2, "HASH_PDQ", C, 200))
        down.clear()  # back: the next round applies what came meanwhile and resets the count
        until(lambda: te().failures == 0)
        assert _live(bank, "te-loop") == {A, C}
        assert te().errors_total >= 2 and te().last_success_age_s is not None
    finally:
        proc.terminate()
        proc.wait(30)
        pool.close()
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.mark.parametrize("value", ["0", "-5", "nan", "inf"])
def test_bank_sync_interval_must_be_positive_seconds(value: str) -> None:
    from typer.testing import CliRunner

    from moderation.cli import app

    result = CliRunner().invoke(app, ["bank", "sync", "--interval", value])
    assert result.exit_code == 2
    assert "--interval must be a number of seconds > 0" in result.output


def test_health_of_a_never_synced_bank_is_never_and_renders_inf(
    sync_store: ExchangeSyncStore,
) -> None:
    from moderation.metrics import render_exchange_gauges

    assert sync_store.health(["nobody"])[0].last_success_age_s is None
    sync_store.record_outcome("nobody", error_code="exchange_auth")
    h = sync_store.health(["nobody"])[0]
    assert (h.last_success_age_s, h.failures, h.errors_total, h.last_error_code) == (
        None,
        1,
        1,
        "exchange_auth",
    )
    text = render_exchange_gauges([("nobody", None, 1, 1, 900.0)]).decode()
    assert 'moderation_exchange_sync_last_success_age_seconds{exchange="nobody"} +Inf' in text


def test_a_sync_records_its_outcome_but_a_busy_lock_is_no_failure(
    sync_store: ExchangeSyncStore,
) -> None:
    banks = BankService(MemoryBankStore(), flat_max=100)
    syncer = ExchangeSync(sync_store, banks)
    with pytest.raises(ExchangeAuthError):
        syncer.sync("h", MemoryExchangeFeed(fail=ExchangeAuthError("refused")))
    assert sync_store.health(["h"])[0].failures == 1
    with sync_store.lock("h"), pytest.raises(ExchangeBusy):
        syncer.sync("h", MemoryExchangeFeed([]))
    assert sync_store.health(["h"])[0].failures == 1  # another syncer holds it: not a failure
    syncer.sync("h", MemoryExchangeFeed([ExchangeDelta({"x": [A]}, [], 0, b"1")]))
    ok = sync_store.health(["h"])[0]
    assert (ok.failures, ok.errors_total) == (0, 1) and ok.last_success_age_s is not None
    # an error no adapter translated (a library's, or a bug) is a failure too
    with pytest.raises(KeyError):
        syncer.sync("h", MemoryExchangeFeed(fail=KeyError("fetcher bug")))
    broken = sync_store.health(["h"])[0]
    assert (broken.failures, broken.last_error_code) == (1, "exchange_sync_unexpected")
