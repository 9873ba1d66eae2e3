"""Statements of reasons submitted in the EU DSA Transparency Database's API format, to a local
stub server that validates every body against the fields and allowed values of the database's
"API and Schema" page (https://transparency.dsa.ec.europa.eu/page/api-documentation; the enum
lists are those the page prints from the project's Statement model). The database itself cannot
be reached from here."""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from pydantic import SecretStr

from moderation.adapters.transparency_db import TransparencyDbClient
from moderation.core.audit import AuditRecord, dsa_statement, tdb_body, tdb_puid
from moderation.core.sources import DecisionSource
from moderation.exceptions import TransparencyDbRejected, TransparencyDbUnavailable
from moderation.settings import TransparencyDbSettings

# --- test data: the "API and Schema" page (api-documentation), statement attributes ---------

PAGE = "https://transparency.dsa.ec.europa.eu/page/api-documentation"
DECISION_VISIBILITY = {
    "DECISION_VISIBILITY_CONTENT_REMOVED",
    "DECISION_VISIBILITY_CONTENT_DISABLED",
    "DECISION_VISIBILITY_CONTENT_DEMOTED",
    "DECISION_VISIBILITY_CONTENT_AGE_RESTRICTED",
    "DECISION_VISIBILITY_CONTENT_INTERACTION_RESTRICTED",
    "DECISION_VISIBILITY_CONTENT_LABELLED",
    "DECISION_VISIBILITY_OTHER",
}
DECISION_GROUND = {"DECISION_GROUND_ILLEGAL_CONTENT", "DECISION_GROUND_INCOMPATIBLE_CONTENT"}
CONTENT_TYPE = {
    "CONTENT_TYPE_APP",
    "CONTENT_TYPE_AUDIO",
    "CONTENT_TYPE_IMAGE",
    "CONTENT_TYPE_PRODUCT",
    "CONTENT_TYPE_SYNTHETIC_MEDIA",
    "CONTENT_TYPE_TEXT",
    "CONTENT_TYPE_VIDEO",
    "CONTENT_TYPE_OTHER",
}
CATEGORY = {
    "STATEMENT_CATEGORY_ANIMAL_WELFARE",
    "STATEMENT_CATEGORY_DATA_PROTECTION_AND_PRIVACY_VIOLATIONS",
    "STATEMENT_CATEGORY_ILLEGAL_OR_HARMFUL_SPEECH",
    "STATEMENT_CATEGORY_INTELLECTUAL_PROPERTY_INFRINGEMENTS",
    "STATEMENT_CATEGORY_NEGATIVE_EFFECTS_ON_CIVIC_DISCOURSE_OR_ELECTIONS",
    "STATEMENT_CATEGORY_NON_CONSENSUAL_BEHAVIOUR",
    "STATEMENT_CATEGORY_PORNOGRAPHY_OR_SEXUALIZED_CONTENT",
    "STATEMENT_CATEGORY_PROTECTION_OF_MINORS",
    "STATEMENT_CATEGORY_RISK_FOR_PUBLIC_SECURITY",
    "STATEMENT_CATEGORY_SCAMS_AND_FRAUD",
    "STATEMENT_CATEGORY_SELF_HARM",
    "STATEMENT_CATEGORY_SCOPE_OF_PLATFORM_SERVICE",
    "STATEMENT_CATEGORY_UNSAFE_AND_PROHIBITED_PRODUCTS",
    "STATEMENT_CATEGORY_VIOLENCE",
}
SOURCE_TYPE = {
    "SOURCE_ARTICLE_16",
    "SOURCE_TRUSTED_FLAGGER",
    "SOURCE_TYPE_OTHER_NOTIFICATION",
    "SOURCE_VOLUNTARY",
}
AUTOMATED_DECISION = {
    "AUTOMATED_DECISION_FULLY",
    "AUTOMATED_DECISION_PARTIALLY",
    "AUTOMATED_DECISION_NOT_AUTOMATED",
}
EU_EEA = {
    *[
        "AT",
        "BE",
        "BG",
        "CY",
        "CZ",
        "DE",
        "DK",
        "EE",
        "ES",
        "FI",
        "FR",
        "GR",
        "HR",
        "HU",
        "IE",
        "IT",
        "LT",
        "LU",
        "LV",
        "MT",
        "NL",
        "PL",
        "PT",
        "RO",
        "SE",
        "SI",
        "SK",
    ],
    *["IS", "LI", "NO"],
}
REQUIRED = (
    "decision_ground",
    "content_type",
    "category",
    "territorial_scope",
    "content_date",
    "application_date",
    "decision_facts",
    "source_type",
    "automated_detection",
    "automated_decision",
    "puid",
)
DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
PUID = re.compile(r"^[A-Za-z0-9_-]{1,500}$")
TOKEN = "X|test-token-0123456789"


def problems(body: dict[str, Any]) -> dict[str, list[str]]:
    """What the page's rules find wrong with one statement body (empty: valid)."""
    out: dict[str, list[str]] = {}

    def bad(field: str, why: str) -> None:
        out.setdefault(field, []).append(why)

    for field in REQUIRED:
        if body.get(field) in (None, "", []):
            bad(field, "required")
    decisions = (
        "decision_visibility",
        "decision_monetary",
        "decision_provision",
        "decision_account",
    )
    if not any(body.get(f) for f in decisions):
        bad("decision_visibility", "required when no other decision is present")
    visibility = body.get("decision_visibility")
    if visibility is not None and (
        not isinstance(visibility, list) or not set(visibility) <= DECISION_VISIBILITY
    ):
        bad("decision_visibility", "an array of allowed values")
    if body.get("decision_ground") not in DECISION_GROUND:
        bad("decision_ground", "invalid")
    if body.get("decision_ground") == "DECISION_GROUND_ILLEGAL_CONTENT":
        for field in ("illegal_content_legal_ground", "illegal_content_explanation"):
            if not body.get(field):
                bad(field, "required for illegal content")
    if body.get("decision_ground") == "DECISION_GROUND_INCOMPATIBLE_CONTENT":
        for field in ("incompatible_content_ground", "incompatible_content_explanation"):
            if not body.get(field):
                bad(field, "required for incompatible content")
    types = body.get("content_type")
    if not isinstance(types, list) or not types or not set(types) <= CONTENT_TYPE:
        bad("content_type", "an array of allowed values")
    if body.get("category") not in CATEGORY:
        bad("category", "invalid")
    scope = body.get("territorial_scope")
    if not isinstance(scope, list) or not scope or not set(scope) <= EU_EEA:
        bad("territorial_scope", "an array of EU/EEA codes")
    for field, earliest in (("content_date", "2000-01-01"), ("application_date", "2020-01-01")):
        value = str(body.get(field, ""))
        if not DATE.match(value) or value < earliest:
            bad(field, f"YYYY-MM-DD, on or after {earliest}")
    if body.get("source_type") not in SOURCE_TYPE:
        bad("source_type", "invalid")
    if body.get("automated_detection") not in ("Yes", "No"):
        bad("automated_detection", "Yes or No")
    if body.get("automated_decision") not in AUTOMATED_DECISION:
        bad("automated_decision", "invalid")
    if not PUID.match(str(body.get("puid", ""))):
        bad("puid", "letters, digits, - and _ only, at most 500")
    limits = {
        "decision_facts": 5000,
        "illegal_content_legal_ground": 500,
        "illegal_content_explanation": 2000,
        "incompatible_content_ground": 500,
        "incompatible_content_explanation": 2000,
    }
    for field, limit in limits.items():
        if len(str(body.get(field) or "")) > limit:
            bad(field, f"at most {limit} characters")
    return out


class StubDatabase:
    """A local stand-in for the database's statements endpoint, validating every body."""

    def __init__(self) -> None:
        self.created: list[dict[str, Any]] = []
        self.requests = 0
        self.fail_with: int | None = None
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                stub.requests += 1
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if stub.fail_with is not None:
                    return self._answer(stub.fail_with, {"message": "down"})
                if self.path != "/api/v1/statements":
                    return self._answer(404, {"message": "not found"})
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    return self._answer(401, {"message": "Unauthenticated."})
                if self.headers.get("Accept") != "application/json":
                    return self._answer(406, {"message": "Accept: application/json"})
                statements = body.get("statements")
                if not isinstance(statements, list) or not 1 <= len(statements) <= 100:
                    return self._answer(422, {"message": "1 to 100 statements"})
                errors = {
                    f"statement_{i}": found
                    for i, s in enumerate(statements)
                    if (found := problems(s))
                }
                known = {s["puid"] for s in stub.created}
                for i, s in enumerate(statements):
                    if s.get("puid") in known:
                        errors.setdefault(f"statement_{i}", {})["puid"] = ["not unique"]
                if errors:
                    return self._answer(422, {"message": "invalid", "errors": errors})
                made = [{**s, "uuid": str(uuid.uuid4())} for s in statements]
                stub.created.extend(made)
                return self._answer(201, {"statements": made})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub() -> Iterator[StubDatabase]:
    server = StubDatabase()
    try:
        yield server
    finally:
        server.close()


def _record(i: int, **kw: Any) -> AuditRecord:
    base: dict[str, Any] = {
        "kind": "automated",
        "at": datetime(2026, 12, 1, 10, 0, tzinfo=UTC),
        "job_id": f"acme/upload-{i}",
        "content_sha256": "ab" * 32,
        "content_ref": f"s3://in/{i}.png",
        "policy_id": "testworld",
        "policy_version": 3,
        "compiled_policy_hash": "c" * 64,
        "model_id": "ModTest",
        "weights_sha256": "w" * 64,
        "category_id": "contraband_symbol",
        "scores": {"testworld/contraband_symbol": 0.93},
        "decision": "block",
        "reason_code": "TW_CONTRABAND",
    }
    return AuditRecord(**{**base, **kw})


def _bodies() -> list[dict[str, Any]]:
    records = [
        _record(1),
        _record(
            2,
            kind="human",
            decision="remove",
            actor="rv_0123456789abcdef",
            source=DecisionSource.TRUSTED_FLAGGER,
            dsa_category="STATEMENT_CATEGORY_VIOLENCE",
            details={"legal_ground": "Art. 130 StGB"},
        ),
        _record(
            3,
            kind="human",
            decision="remove",
            actor="rv_0123456789abcdef",
            source=DecisionSource.USER_REPORT,
            details={"video": {"kind": "video", "duration_s": 4.0, "segments": []}},
        ),
    ]
    statements = [dsa_statement(r) for r in records]
    return [tdb_body(s, territorial_scope=["DE", "FR"]) for s in statements if s is not None]


def test_our_bodies_validate_against_the_documented_fields() -> None:
    bodies = _bodies()
    assert [problems(b) for b in bodies] == [{}, {}, {}]
    auto, flagged, reported = bodies
    assert auto["puid"] == "acme__upload-1" and auto["source_type"] == "SOURCE_VOLUNTARY"
    assert auto["automated_decision"] == "AUTOMATED_DECISION_FULLY"
    assert flagged["source_type"] == "SOURCE_TRUSTED_FLAGGER"
    assert flagged["decision_ground"] == "DECISION_GROUND_ILLEGAL_CONTENT"
    assert flagged["illegal_content_legal_ground"] == "Art. 130 StGB"
    assert flagged["automated_detection"] == "No"
    assert reported["source_type"] == "SOURCE_ARTICLE_16"
    assert reported["content_type"] == ["CONTENT_TYPE_VIDEO"]
    assert tdb_puid("a b/c.d", suffix="_overturn") == "a-b__c-d_overturn"


def test_the_client_submits_in_batches_and_maps_refusals(stub: StubDatabase) -> None:
    settings = TransparencyDbSettings(url=stub.url, token=SecretStr(TOKEN))
    many = [
        {**_bodies()[0], "puid": f"acme__upload-{i}"} for i in range(150)
    ]  # 150 statements: two requests (100 + 50)
    with TransparencyDbClient(settings) as client:
        uuids = client.submit(many)
        assert len(uuids) == 150 and len(set(uuids)) == 150 and stub.requests == 2
        # The same puid again: refused by the database, nothing created twice.
        with pytest.raises(TransparencyDbRejected) as again:
            client.submit(many[:1])
        assert again.value.errors == {"statement_0": {"puid": ["not unique"]}}
        # A body outside the documented values: refused with the field named.
        wrong = {**_bodies()[1], "category": "STATEMENT_CATEGORY_NOT_A_CATEGORY", "puid": "x"}
        with pytest.raises(TransparencyDbRejected) as refused:
            client.submit([wrong])
        assert refused.value.errors == {"statement_0": {"category": ["invalid"]}}
    assert len(stub.created) == 150
    wrong_token = TransparencyDbSettings(url=stub.url, token=SecretStr("no"))
    with TransparencyDbClient(wrong_token) as c, pytest.raises(TransparencyDbRejected, match="401"):
        c.submit(_bodies())
    stub.fail_with = 503
    with TransparencyDbClient(settings) as client, pytest.raises(TransparencyDbUnavailable):
        client.submit(_bodies())


def test_the_transparency_report_counts_by_category_source_and_automation() -> None:
    from datetime import timedelta

    from moderation.core.audit import report_table, transparency_report

    t0 = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
    records = [
        _record(1, at=t0),  # an automated block
        _record(2, at=t0, decision="review", category_id="restricted_logo"),
        _record(
            2,
            at=t0 + timedelta(minutes=10),
            kind="human",
            decision="remove",
            actor="rv_0123456789abcdef",
            source=DecisionSource.TRUSTED_FLAGGER,
            details={"reviewer_position": 1},
        ),
        _record(3, at=t0, decision="allow"),
        _record(
            3,
            at=t0 + timedelta(minutes=30),
            kind="human",
            decision="allow",
            actor="rv_0123456789abcdef",
            source=DecisionSource.USER_REPORT,
            details={"reviewer_position": 1},
        ),
        _record(
            4,
            at=t0 + timedelta(hours=2),
            kind="human",
            decision="allow",
            actor="rv_fedcba9876543210",
            source=DecisionSource.APPEAL,
            details={"reviewer_position": 1},
        ),
        _record(5, at=t0, decision="error"),  # errors are not decisions
    ]
    report = transparency_report(records)
    assert report["automated_decisions"] == {"allow": 1, "block": 1, "review": 1}
    assert report["human_decisions"] == {"allow": 2, "remove": 1}
    assert report["restrictions"]["total"] == 2
    assert report["restrictions"]["by_source"] == {"automated": 1, "trusted_flagger": 1}
    assert report["restrictions"]["by_automation"] == {
        "AUTOMATED_DECISION_FULLY": 1,
        "AUTOMATED_DECISION_NOT_AUTOMATED": 1,
    }
    assert report["appeals"] == {"total": 1, "by_outcome": {"allow": 1}}
    assert report["median_seconds_to_human_decision"] == {
        "trusted_flagger": 600.0,
        "user_report": 1800.0,
    }
    table = report_table(report)
    assert "trusted_flagger" in table and "Appeals (1)" in table
