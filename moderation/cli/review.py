"""``moderation review``: reviewer accounts, queue stats and the labelled-dataset export."""

from __future__ import annotations

import csv
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer
from rich.table import Table

from moderation.cli.common import err, fail, load_settings, out
from moderation.exceptions import ModerationError
from moderation.ports import ReviewerStore, ReviewQueue
from moderation.settings import Settings

if TYPE_CHECKING:
    from psycopg_pool import ConnectionPool

__all__ = ["review_app"]

review_app = typer.Typer(no_args_is_help=True, help="Human review: accounts, stats, export.")
user_app = typer.Typer(no_args_is_help=True, help="Reviewer and admin accounts.")
review_app.add_typer(user_app, name="user")

CSV_FIELDS = [
    "review_id",
    "job_id",
    "image",
    "content_sha256",
    "policy_id",
    "policy_version",
    "category",
    "signal",
    "severity",
    "human_label",
    "reason_code",
    "model_score",
    "model_decision",
    "scores",
    "model",
    "reviewers",
    "decided_at",
    "source",
    "appeal_outcome",
    "appeal_reason_code",
    "original_human_label",
]


def _database(settings: Settings) -> ConnectionPool | None:
    """The database holding the review queue and accounts (None: they are in Redis)."""
    from moderation.compose.stores import command_database

    if not settings.redis_url and settings.database.url is None:
        err.print(
            "[bold red]error[/]: set MODERATION_DATABASE__URL (or MODERATION_REDIS_URL) to "
            "where the review queue lives"
        )
        raise typer.Exit(2)
    try:
        return command_database(settings)
    except ModerationError as exc:
        raise fail(exc) from exc


def _users(settings: Settings) -> ReviewerStore:
    from moderation.compose.stores import open_reviewers

    return open_reviewers(settings, database=_database(settings))


def _queue(settings: Settings) -> ReviewQueue:
    from moderation.compose.stores import open_review_queue

    return open_review_queue(settings, database=_database(settings))


def _fail(exc: ModerationError) -> typer.Exit:
    return fail(exc, 1)


@user_app.command("add")
def user_add(
    username: Annotated[str, typer.Argument(help="Lower-case login name.")],
    role: Annotated[
        Literal["reviewer", "senior", "admin"],
        typer.Option(help="reviewer, senior (also works the escalation queue) or admin"),
    ] = "reviewer",
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from stdin.")
    ] = False,
) -> None:
    """Create an account; the password is stored only as an argon2id hash."""
    from moderation.adapters.passwords import hash_password
    from moderation.core.reviewers import ReviewerAccount, Role, check_username

    settings = load_settings()
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    try:
        account = ReviewerAccount(
            username=check_username(username),
            role=Role(role),
            password_hash=hash_password(password),
            disabled=False,
            created_at=time.time(),
        )
        _users(settings).create(account)
    except ModerationError as exc:
        raise _fail(exc) from exc
    out.print(f"added {role} {username}", highlight=False)


@user_app.command("list")
def user_list() -> None:
    """List accounts (name, role, status, pseudonymous id)."""
    from moderation.core.review import pseudonym

    settings = load_settings()
    secret = settings.review.pseudonym_secret.get_secret_value()
    from moderation.core.reviewers import allowed_queues

    table = Table("username", "role", "queues", "status", "reviewer id")
    try:
        accounts = _users(settings).all()
    except ModerationError as exc:
        raise _fail(exc) from exc
    for a in accounts:
        table.add_row(
            a.username,
            a.role.value,
            ", ".join(allowed_queues(a)),
            "disabled" if a.disabled else "active",
            pseudonym(secret, a.username),
        )
    out.print(table)


def _end_sessions(settings: Settings, users: ReviewerStore, username: str) -> int:
    from moderation.compose.access import build_reviewer_auth
    from moderation.compose.stores import open_audit

    audit = open_audit(settings)
    try:
        return build_reviewer_auth(settings, users, audit=audit).end_sessions(username, by="cli")
    finally:
        audit.close()


@user_app.command("disable")
def user_disable(
    username: str,
    enable: Annotated[bool, typer.Option("--enable", help="Re-enable instead.")] = False,
) -> None:
    """Disable (or re-enable) an account; disabling ends its open sessions at once."""
    settings = load_settings()
    ended = 0
    try:
        users = _users(settings)
        users.set_disabled(username, not enable)
        if not enable:
            ended = _end_sessions(settings, users, username)
    except ModerationError as exc:
        raise _fail(exc) from exc
    what = "enabled" if enable else f"disabled (ended {ended} session(s))"
    out.print(f"{username}: {what}", highlight=False)


@user_app.command("queues")
def user_queues(
    username: str,
    queue: Annotated[
        list[str] | None,
        typer.Option("--queue", help="A queue to grant (repeat); none: take every grant back."),
    ] = None,
) -> None:
    """Grant an account review queues on top of its role's (replacing earlier grants)."""
    from moderation.core.reviewers import allowed_queues, check_queue_name

    settings = load_settings()
    try:
        names = [check_queue_name(q) for q in queue or []]
        users = _users(settings)
        users.set_queues(username, names)
        account = users.get(username)
    except ModerationError as exc:
        raise _fail(exc) from exc
    allowed = ", ".join(allowed_queues(account)) if account else ""
    out.print(f"{username} works: {allowed}", highlight=False)


@user_app.command("logout")
def user_logout(username: str) -> None:
    """End every session of an account (it must sign in again); audited."""
    settings = load_settings()
    try:
        users = _users(settings)
        if users.get(username) is None:
            raise ModerationError(f"no reviewer {username!r}", code="review_unknown_user")
        ended = _end_sessions(settings, users, username)
    except ModerationError as exc:
        raise _fail(exc) from exc
    out.print(f"ended {ended} session(s) of {username}", highlight=False)


@review_app.command("stats")
def stats(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Queue depth and oldest open item per policy; decisions per reviewer today."""
    settings = load_settings()
    try:
        queue = _queue(settings)
        rows = queue.stats()
        today = queue.decisions_on()
        undelivered = len(queue.undelivered())
    except ModerationError as exc:
        raise _fail(exc) from exc
    if as_json:
        print(
            json.dumps(
                {
                    "queues": [
                        {
                            "policy_id": s.policy_id,
                            "waiting": s.waiting,
                            "in_review": s.in_review,
                            "oldest_age_s": s.oldest_age_s,
                        }
                        for s in rows
                    ],
                    "decisions_today": today,
                    "undelivered": undelivered,
                }
            )
        )
        return
    table = Table("policy", "waiting", "in review", "oldest")
    for s in rows:
        oldest = "-" if s.oldest_age_s is None else f"{s.oldest_age_s:.0f} s"
        table.add_row(s.policy_id, str(s.waiting), str(s.in_review), oldest)
    out.print(table)
    out.print(
        f"decisions today: {sum(today.values())} by {len(today)} reviewers; "
        f"undelivered final decisions: {undelivered}"
    )


@review_app.command("appeals")
def appeals_report(
    days: Annotated[float, typer.Option(help="Appeals decided in the last N days.")] = 90.0,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Appeal outcomes as a quality signal: the overturn rate per category and per policy
    version (a high rate: the model or the reviewers get that category wrong), and the appeals
    waiting now."""
    from moderation.compose.appeals import open_appeal_store
    from moderation.core.appeals import overturn_rates

    settings = load_settings()
    database = _database(settings)
    store = open_appeal_store(settings, database=database)
    if store is None:
        err.print("[bold red]error[/]: appeals live in the database: set MODERATION_DATABASE__URL")
        raise typer.Exit(2)
    try:
        decided = store.decided(since=time.time() - days * 86400)
        waiting, oldest = store.backlog()
    except ModerationError as exc:
        raise _fail(exc) from exc
    groups = {by: overturn_rates(decided, by=by) for by in ("category", "policy_version")}
    if as_json:
        print(
            json.dumps(
                {
                    by: [
                        {
                            "key": r.key,
                            "decided": r.decided,
                            "overturned": r.overturned,
                            "overturn_rate": round(r.rate, 4),
                        }
                        for r in rows
                    ]
                    for by, rows in groups.items()
                }
                | {"open": waiting, "oldest_open_age_s": oldest, "days": days}
            )
        )
        return
    for by, rows in groups.items():
        table = Table(by.replace("_", " "), "decided", "overturned", "overturn rate")
        for r in rows:
            table.add_row(r.key, str(r.decided), str(r.overturned), f"{r.rate:.1%}")
        out.print(table)
    age = "-" if oldest is None else f"{oldest / 3600:.1f} h"
    out.print(
        f"appeals decided in {days:g} days: {len(decided)}; open now: {waiting} (oldest {age})"
    )


@review_app.command("export")
def export(
    out_path: Annotated[Path, typer.Option("--out", help="Output file (.jsonl or .csv).")],
    fmt: Annotated[
        Literal["auto", "jsonl", "csv"], typer.Option("--format", help="Default: from suffix.")
    ] = "auto",
) -> None:
    """Write reviewed items as a labelled dataset (image ref, category, human label, model
    scores) for threshold calibration."""
    settings = load_settings()
    kind = fmt if fmt != "auto" else ("csv" if out_path.suffix.lower() == ".csv" else "jsonl")
    n = 0
    try:
        rows = _queue(settings).export()
        with out_path.open("w", encoding="utf-8", newline="") as fh:
            if kind == "csv":
                writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
                writer.writeheader()
                for row in rows:
                    row["scores"] = json.dumps(row["scores"], sort_keys=True)
                    row["reviewers"] = " ".join(row["reviewers"])
                    writer.writerow(row)
                    n += 1
            else:
                for row in rows:
                    fh.write(json.dumps(row, sort_keys=True) + "\n")
                    n += 1
    except ModerationError as exc:
        raise _fail(exc) from exc
    err.print(f"wrote {n} reviewed items to {out_path} ({kind})", highlight=False)
