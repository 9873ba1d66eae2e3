"""Statements of reasons in the EU DSA Transparency Database's API format (Art. 24(5)). Pure.

:func:`tdb_body` turns one statement (:func:`~moderation.core.audit.dsa.dsa_statement`) into the
JSON body of ``POST /api/v1/statement`` as the database's "API and Schema" documentation
(https://transparency.dsa.ec.europa.eu/page/api-documentation) lists the fields: the decision
(``decision_visibility``, an array), ``decision_ground`` with its ``incompatible_content_*`` or
``illegal_content_*`` fields, ``content_type`` (an array), ``category``, ``territorial_scope``
(EU/EEA country codes, required), ``content_date`` and ``application_date`` (``YYYY-MM-DD``),
``decision_facts``, ``source_type``, ``automated_detection`` (``Yes``/``No``),
``automated_decision`` and ``puid`` (the platform's unique id: letters, digits, ``-`` and ``_``
only, at most 500 characters). Bodies go to the database 100 at a time
(``POST /api/v1/statements``, ``{"statements": [...]}``; the adapter
:mod:`moderation.adapters.transparency_db`).

No personal data: the puid is derived from the job id (a tenant's ``/`` becomes ``__``; other
characters outside the allowed set become ``-``), and no reviewer or reporter is named.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

__all__ = ["EU_COUNTRIES", "MAX_BATCH", "tdb_body", "tdb_puid"]

#: The most statements one ``POST /api/v1/statements`` may carry.
MAX_BATCH = 100
#: The EU member states (the documentation's "For European Union (EU) use" list).
EU_COUNTRIES = (
    "AT", "BE", "BG", "CY", "CZ", "DE", "DK", "EE", "ES", "FI", "FR", "GR", "HR", "HU",
    "IE", "IT", "LT", "LU", "LV", "MT", "NL", "PL", "PT", "RO", "SE", "SI", "SK",
)  # fmt: skip
_PUID_BAD = re.compile(r"[^A-Za-z0-9_-]")


def tdb_puid(job_id: str, *, suffix: str = "") -> str:
    """The puid of a job's statement (allowed characters only, at most 500)."""
    puid = _PUID_BAD.sub("-", job_id.replace("/", "__")) + suffix
    return puid[:500]


def _clip(text: str | None, limit: int) -> str | None:
    return None if text is None else text[:limit]


def tdb_body(
    statement: dict[str, Any],
    *,
    territorial_scope: Sequence[str] = EU_COUNTRIES,
    content_language: str | None = None,
    puid_suffix: str = "",
) -> dict[str, Any]:
    """The Transparency Database request body of one statement of reasons.

    ``puid_suffix`` tells apart two statements of one job (an overturn after an appeal: a new
    statement, its own puid).
    """
    illegal = statement["decision_ground"] == "DECISION_GROUND_ILLEGAL_CONTENT"
    facts = str(statement["decision_facts"])
    body: dict[str, Any] = {
        "decision_visibility": list(statement["decision_visibility"]),
        "decision_ground": statement["decision_ground"],
        "content_type": list(statement["content_type"]),
        "category": statement["category"],
        "territorial_scope": sorted(set(territorial_scope)),
        "content_date": statement["content_date"],
        "application_date": statement["application_date"],
        "decision_facts": facts[:5000],
        "source_type": statement["source_type"],
        "automated_detection": statement["automated_detection"],
        "automated_decision": statement["automated_decision"],
        "puid": tdb_puid(str(statement["puid"]), suffix=puid_suffix),
    }
    if illegal:
        body["illegal_content_legal_ground"] = _clip(
            str(statement.get("illegal_content_legal_ground") or "unspecified"), 500
        )
        body["illegal_content_explanation"] = _clip(facts, 2000)
    else:
        body["incompatible_content_ground"] = _clip(
            str(statement.get("incompatible_content_ground") or "terms of service"), 500
        )
        body["incompatible_content_explanation"] = _clip(facts, 2000)
    if content_language:
        body["content_language"] = content_language.upper()
    return body
