"""The aggregate transparency report (EU DSA Art. 15, 24) from audit records. Pure.

:func:`transparency_report` counts, over a period, the decisions that restricted content by
statement category, by source (the model's own detection, users' notices, trusted flaggers'
notices, appeals), by automation (fully automated, human with automated detection, human
only), the human decisions by outcome, the appeals by outcome, and the median seconds from the
automated verdict to the human decision, per source. :func:`report_table` renders it as text.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from moderation.core.audit.dsa import dsa_statement
from moderation.core.audit.records import AuditRecord
from moderation.core.notices import NOT_REVIEWABLE
from moderation.core.sources import DecisionSource

__all__ = ["report_table", "transparency_report"]


def transparency_report(
    records: Iterable[AuditRecord],
    *,
    start: datetime | None = None,
    end: datetime | None = None,
) -> dict[str, Any]:
    """Counts and median times of the decisions in ``records`` (one record per decision and
    reviewer; the first reviewer's record stands for a human decision)."""
    restricting_by_category: Counter[str] = Counter()
    restricting_by_source: Counter[str] = Counter()
    restricting_by_automation: Counter[str] = Counter()
    automated: Counter[str] = Counter()
    human: Counter[str] = Counter()
    appeals: Counter[str] = Counter()
    verdict_at: dict[str, datetime] = {}
    waits: dict[str, list[float]] = {}
    human_records: list[AuditRecord] = []
    for record in records:
        if record.kind == "automated":
            if record.decision in ("error", NOT_REVIEWABLE):  # no decision on the content
                continue
            automated[record.decision] += 1
            verdict_at.setdefault(record.job_id, record.at)
        elif record.kind == "human":
            if record.details.get("reviewer_position", 1) != 1 or record.decision == "add_to_bank":
                continue
            human_records.append(record)
        else:
            continue
        source = (record.source or DecisionSource.AUTOMATED).value
        if record.kind == "human":
            human[record.decision] += 1
            if record.source is DecisionSource.APPEAL:
                appeals[record.decision] += 1
        statement = dsa_statement(record)
        if statement is not None:
            restricting_by_category[statement["category"]] += 1
            restricting_by_source[source] += 1
            restricting_by_automation[statement["automated_decision"]] += 1
    for record in human_records:
        first = verdict_at.get(record.job_id)
        if first is not None and record.at >= first:
            source = (record.source or DecisionSource.AUTOMATED).value
            waits.setdefault(source, []).append((record.at - first).total_seconds())
    return {
        "period": {
            "from": start.isoformat() if start else None,
            "to": end.isoformat() if end else None,
        },
        "automated_decisions": dict(sorted(automated.items())),
        "human_decisions": dict(sorted(human.items())),
        "restrictions": {
            "total": sum(restricting_by_category.values()),
            "by_category": dict(restricting_by_category.most_common()),
            "by_source": dict(restricting_by_source.most_common()),
            "by_automation": dict(restricting_by_automation.most_common()),
        },
        "appeals": {"total": sum(appeals.values()), "by_outcome": dict(sorted(appeals.items()))},
        "median_seconds_to_human_decision": {
            source: round(statistics.median(values), 1) for source, values in sorted(waits.items())
        },
    }


def report_table(report: dict[str, Any]) -> str:
    """The report as a readable plain-text table."""
    lines = ["Transparency report"]
    period = report["period"]
    lines.append(f"  period: {period['from'] or 'start'} .. {period['to'] or 'now'}")

    def section(title: str, counts: dict[str, Any]) -> None:
        lines.append(f"{title}:")
        if not counts:
            lines.append("  (none)")
        width = max((len(k) for k in counts), default=0)
        lines.extend(f"  {k.ljust(width)}  {v:>8}" for k, v in counts.items())

    section("Automated decisions", report["automated_decisions"])
    section("Human decisions", report["human_decisions"])
    lines.append(f"Restrictions: {report['restrictions']['total']}")
    section("  by category", report["restrictions"]["by_category"])
    section("  by source", report["restrictions"]["by_source"])
    section("  by automation", report["restrictions"]["by_automation"])
    section(f"Appeals ({report['appeals']['total']})", report["appeals"]["by_outcome"])
    section("Median seconds to a human decision", report["median_seconds_to_human_decision"])
    return "\n".join(lines)
