"""``moderation audit``: verify, show, export and flush the append-only audit log.

Works on the configured store: the S3 bucket (``MODERATION_AUDIT__BUCKET``) or, without one,
the local folder ``settings.audit.local_dir``.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, TextIO

import typer

from moderation.cli.common import err, fail, out
from moderation.cli.common import load_settings as _settings
from moderation.core.appeals import statement_after_appeal
from moderation.core.audit import (
    DSA_FIELDS,
    AuditRecord,
    dedupe,
    dsa_statement,
    report_table,
    tdb_body,
    transparency_report,
)
from moderation.exceptions import ModerationError, PolicyError
from moderation.settings import Settings

__all__ = ["audit_app"]

audit_app = typer.Typer(no_args_is_help=True, help="Verify, show and export the audit log.")


_FORMATS = ["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M"]
From = Annotated[datetime | None, typer.Option("--from", formats=_FORMATS, help="UTC start.")]
To = Annotated[datetime | None, typer.Option("--to", formats=_FORMATS, help="UTC end.")]


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _fail(exc: ModerationError) -> typer.Exit:
    return fail(exc, 2)


@audit_app.command("verify")
def verify(
    start: From = None,
    end: To = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Check every hash link, gap, edit, reordering and Object Lock retention in a time range.

    Exit 0: intact; 1: problems found (each printed with segment key and record); 2: the store
    could not be read.
    """
    from moderation.compose.stores import open_segment_store
    from moderation.pipeline.audit import verify_store

    settings = _settings()
    try:
        store = open_segment_store(settings)
        report = verify_store(store, _utc(start), _utc(end))
    except ModerationError as exc:
        raise _fail(exc) from exc
    if as_json:
        print(
            json.dumps(
                {
                    "store": store.describe(),
                    "ok": report.ok,
                    "segments": report.segments,
                    "records": report.records,
                    "chains": report.chains,
                    "problems": [
                        {
                            "kind": p.kind,
                            "key": p.key,
                            "record_index": p.record_index,
                            "record_id": p.record_id,
                            "message": p.message,
                        }
                        for p in report.problems
                    ],
                }
            )
        )
    else:
        for problem in report.problems:
            out.print(f"[red]{problem}[/]", highlight=False, soft_wrap=True)
        verdict = "[green]ok[/]" if report.ok else f"[red]{len(report.problems)} problems[/]"
        out.print(
            f"{verdict}: {report.segments} segments, {report.records} records, "
            f"{len(report.chains)} chains in {store.describe()}",
            highlight=False,
        )
    raise typer.Exit(0 if report.ok else 1)


def _records(
    settings: Settings, start: datetime | None = None, end: datetime | None = None
) -> Iterator[AuditRecord]:
    from moderation.compose.stores import open_segment_store
    from moderation.pipeline.audit import iter_records

    store = open_segment_store(settings)
    return dedupe(record for _, record in iter_records(store, _utc(start), _utc(end)))


@audit_app.command("show")
def show(
    job_id: Annotated[str, typer.Argument(help="The job id (DSA puid).")],
    as_json: Annotated[bool, typer.Option("--json", help="Full records as JSON Lines.")] = False,
) -> None:
    """Print the full decision history of one item: every automated and human decision."""
    settings = _settings()
    found: list[AuditRecord] = []
    try:
        found = [r for r in _records(settings) if r.job_id == job_id]
    except ModerationError as exc:
        raise _fail(exc) from exc
    if not found:
        err.print(f"no audit records for job {job_id}")
        raise typer.Exit(1)
    for record in sorted(found, key=lambda r: r.at):
        if as_json:
            print(record.model_dump_json())
            continue
        score = record.scores.get(f"{record.policy_id}/{record.category_id}")
        out.print(
            f"{record.at.isoformat()}  {record.kind:<9} {record.actor:<20} "
            f"{record.decision:<8} {record.policy_id}/{record.category_id}"
            f"{'' if score is None else f' score {score:.3f}'}"
            f"{'' if not record.reason_code else f' {record.reason_code}'}"
            f"  [dim]{record.record_id}[/]",
            highlight=False,
        )


def _dsa_categories(settings: Settings) -> dict[tuple[str, str], str]:
    """(policy id, category id) -> dsa_category from the configured policy files, if readable."""
    from moderation.adapters.policy_files import load_policies

    try:
        policies = load_policies(settings.policy_paths)
    except (PolicyError, OSError):
        return {}
    found: dict[tuple[str, str], str] = {}
    for policy_id in policies:
        for category in policies[policy_id].categories:
            if category.dsa_category:
                found[(policy_id, category.id)] = category.dsa_category
    return found


@audit_app.command("export")
def export(
    fmt: Annotated[str, typer.Option("--format", help="Only 'dsa' for now.")] = "dsa",
    out_file: Annotated[Path | None, typer.Option("--out", help="Default: stdout.")] = None,
    as_csv: Annotated[bool, typer.Option("--csv", help="CSV instead of JSON Lines.")] = False,
    start: From = None,
    end: To = None,
) -> None:
    """EU DSA statements of reasons for every decision that restricted content."""
    if fmt != "dsa":
        err.print(f"unknown export format {fmt!r}; known: dsa")
        raise typer.Exit(2)
    settings = _settings()
    categories = _dsa_categories(settings)
    stream: TextIO = out_file.open("w", newline="") if out_file else sys.stdout
    count = 0
    try:
        writer = csv.DictWriter(stream, fieldnames=DSA_FIELDS) if as_csv else None
        if writer is not None:
            writer.writeheader()
        # An appeal's outcome updates the statement of the decision it was against.
        appeal_outcomes: dict[str, AuditRecord] = {}
        for record in _records(settings, start, None):
            if record.details.get("appeal_of"):
                seen = appeal_outcomes.get(record.job_id)
                if seen is None or seen.at <= record.at:
                    appeal_outcomes[record.job_id] = record
        for record in _records(settings, start, end):
            if record.dsa_category is None and record.policy_id and record.category_id:
                mapped = categories.get((record.policy_id, record.category_id))
                if mapped:
                    record = record.model_copy(update={"dsa_category": mapped})
            statement = dsa_statement(record)
            if statement is None:
                continue
            outcome = appeal_outcomes.get(record.job_id)
            if outcome is not None and outcome.at >= record.at:
                statement = statement_after_appeal(statement, outcome)
            count += 1
            if writer is not None:
                writer.writerow(
                    {k: ",".join(v) if isinstance(v, list) else v for k, v in statement.items()}
                )
            else:
                stream.write(json.dumps(statement) + "\n")
    except ModerationError as exc:
        raise _fail(exc) from exc
    finally:
        if out_file:
            stream.close()
    err.print(f"{count} statements of reasons", highlight=False)


@audit_app.command("report")
def report(
    start: From = None,
    end: To = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of a table.")] = False,
) -> None:
    """The aggregate transparency report: restrictions by category, source and automation,
    human decisions and appeals by outcome, median time to a human decision."""
    settings = _settings()
    try:
        found = transparency_report(_records(settings, start, end), start=start, end=end)
    except ModerationError as exc:
        raise _fail(exc) from exc
    out.print(json.dumps(found, indent=2) if as_json else report_table(found), highlight=False)


@audit_app.command("submit-dsa")
def submit_dsa(
    start: From = None,
    end: To = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the request bodies; send nothing.")
    ] = False,
) -> None:
    """Submit the statements of reasons to the EU DSA Transparency Database
    (``transparency_db.url`` and ``.token``), 100 per request."""
    from moderation.adapters.transparency_db import TransparencyDbClient

    settings = _settings()
    tdb = settings.transparency_db
    categories = _dsa_categories(settings)
    bodies = []
    try:
        for record in _records(settings, start, end):
            if record.dsa_category is None and record.policy_id and record.category_id:
                mapped = categories.get((record.policy_id, record.category_id))
                if mapped:
                    record = record.model_copy(update={"dsa_category": mapped})
            statement = dsa_statement(record)
            if statement is None:
                continue
            suffix = "" if record.kind == "automated" else f"_h{record.record_id[:8]}"
            scope = tdb.territorial_scope or None
            bodies.append(
                tdb_body(statement, puid_suffix=suffix)
                if scope is None
                else tdb_body(statement, territorial_scope=scope, puid_suffix=suffix)
            )
        if dry_run:
            for body in bodies:
                out.print(json.dumps(body), highlight=False, soft_wrap=True)
            return
        with TransparencyDbClient(tdb) as client:
            created = client.submit(bodies)
    except ModerationError as exc:
        raise _fail(exc) from exc
    err.print(f"{len(created)} statements of reasons created", highlight=False)


@audit_app.command("flush")
def flush(
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the upload.")] = 60.0,
) -> None:
    """Upload what is left in the local spool (e.g. after a crash); exit 1 if some remains."""
    from moderation.compose.stores import open_audit

    settings = _settings()
    try:
        sink = open_audit(settings)
    except ModerationError as exc:
        raise _fail(exc) from exc
    done = sink.close(timeout)
    out.print("spool uploaded" if done else "[red]spool not fully uploaded[/] (store unreachable?)")
    raise typer.Exit(0 if done else 1)
