"""Policy quality: ``moderation eval``, ``moderation calibrate``, ``moderation policy backtest``
and ``moderation policy promote``.

Each one runs through the same use cases and scoring code as live traffic (see
:mod:`moderation.pipeline.evaluate`, ``calibrate``, ``backtest``, ``promote``).
"""

from __future__ import annotations

import difflib
import getpass
import json
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.syntax import Syntax
from rich.table import Table

from moderation.cli.common import err, fail, load_settings, out, progress, progress_later
from moderation.exceptions import ModerationError, QualityError

if TYPE_CHECKING:
    from moderation.compose.scoring import Scoring
    from moderation.core.evaluation import Dataset
    from moderation.core.policy import Policy
    from moderation.pipeline.calibrate import CalibrationReport
    from moderation.pipeline.evaluate import AppealQuality, EvaluationReport, ScoredItem

__all__ = ["backtest", "calibrate", "evaluate", "parse_since", "promote"]

Targets = Annotated[float, typer.Option(min=0.0, max=1.0)]
Confidence = Annotated[
    float,
    typer.Option(
        min=0.0,
        max=0.999,
        help="Confidence of the intervals (and of calibration's lower bounds); 0: point values.",
    ),
]


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def parse_since(value: str, *, now: datetime | None = None) -> float:
    """``7d``, ``24h``, ``30m``, ``90s`` ago, or an ISO date/time (UTC unless it says), as unix
    seconds.

    Raises:
        typer.BadParameter: neither.
    """
    now = now or datetime.now(UTC)
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", value)
    if match:
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[match.group(2)]
        return (now - timedelta(seconds=float(match.group(1)) * unit)).timestamp()
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError as exc:
        raise typer.BadParameter(
            f"{value!r}: give a duration (7d, 24h, 30m) or an ISO date/time"
        ) from exc
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _score(
    dataset_path: Path, policy: list[Path] | None, batch_size: int
) -> tuple[Scoring, Dataset, list[ScoredItem]]:
    """Read a dataset and score it against ``policy`` (default: the live policies)."""
    from moderation.adapters.datasets import load_dataset
    from moderation.compose.scoring import build_scoring
    from moderation.pipeline.evaluate import fetcher, score_dataset

    settings = load_settings()
    dataset = load_dataset(dataset_path)
    scoring = build_scoring(settings, policy_paths=policy)
    if scoring.model.note:
        err.print(f"[bold yellow]warning[/]: {scoring.model.note}", highlight=False)
    fetch = fetcher(scoring.sources())
    with progress("scoring", len(dataset.items)) as advance:
        scored = score_dataset(
            dataset, scoring.moderator, fetch, batch_size=batch_size, on_done=advance
        )
    failed = sum(s.error is not None for s in scored)
    if failed:
        err.print(
            f"[yellow]warning[/]: {failed} of {len(scored)} images could not be scored "
            "(listed in the report)",
            highlight=False,
        )
    if failed == len(scored):
        first = next(s.error for s in scored if s.error is not None)
        raise QualityError(f"no image of {dataset.source} could be scored; first: {first}")
    return scoring, dataset, scored


def evaluate(
    dataset: Annotated[
        Path,
        typer.Argument(help="A labels file, a folder with one, or a review export (.jsonl/.csv)."),
    ],
    policy: Annotated[
        list[Path] | None,
        typer.Option("--policy", "-p", help="Policy file or folder (default: the live ones)."),
    ] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Report folder.")] = Path("eval-report"),
    confidence: Confidence = 0.95,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    batch_size: Annotated[int, typer.Option(min=1, max=1024)] = 32,
    appeals_days: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="With a database: the overturn rate of appeals decided in the last N days, "
            "per category and policy version (0: leave it out).",
        ),
    ] = 90.0,
) -> None:
    """Measure policies on labelled images: per category precision, recall and F1 at the current
    thresholds, ROC AUC, average precision, review load and a confusion table, with confidence
    intervals; PR curves and score histograms (PNG) and one self-contained HTML report. With a
    database, the appeals' overturn rate per category and policy version (a production quality
    signal) goes beside them."""
    import dataclasses

    from moderation.adapters.eval_report import write_report
    from moderation.pipeline.evaluate import evaluate as evaluate_use_case

    try:
        scoring, data, scored = _score(dataset, policy, batch_size)
        report = evaluate_use_case(
            scored, scoring.policies.current, dataset=data, confidence=confidence
        )
    except ModerationError as exc:
        raise fail(exc) from exc
    if appeals_days > 0:
        quality = _appeal_quality(
            [str(p["id"]) for p in report.policies], days=appeals_days, confidence=confidence
        )
        report = dataclasses.replace(report, appeals=quality)
    files = write_report(report, out_dir, title=f"Policy evaluation: {dataset.name}")
    if as_json:
        print(json.dumps(report.to_dict()))
    else:
        table = Table(
            "category",
            "viol./benign",
            "review/block",
            "block P",
            "block R",
            "F1",
            "flagged R",
            "review load",
            "AUC",
            "AP",
            title=f"{report.n_scored} images scored",
        )
        for c in report.categories:
            table.add_row(
                c.key + (" [yellow](small)[/]" if c.small_sample else ""),
                f"{c.positives}/{c.negatives}",
                f"{c.review_threshold:.3f}/{c.block_threshold:.3f}",
                _pct(c.block.precision),
                _pct(c.block.recall),
                "–" if c.block.f1 is None else f"{c.block.f1:.3f}",
                _pct(c.flagged.recall),
                _pct(c.review_load),
                "–" if c.roc_auc is None else f"{c.roc_auc:.3f}",
                "–" if c.average_precision is None else f"{c.average_precision:.3f}",
            )
        out.print(table)
        if report.combined:
            out.print(_combined_table(report))
        if report.videos:
            out.print(_video_table(report))
        if report.accuracy is not None:
            out.print(f"top-1 accuracy {_pct(report.accuracy.top1)} over {report.accuracy.n}")
        for note in report.notes:
            out.print(f"[yellow]note[/]: {note}", highlight=False)
        if report.unlabelled:
            out.print(f"no labelled images for: {', '.join(report.unlabelled)}", highlight=False)
        if report.appeals is not None:
            out.print(_overturn_table(report.appeals))
    err.print(f"report: {files.html} ({len(files.images)} plots, {files.json.name})")


def _appeal_quality(
    policy_ids: list[str], *, days: float, confidence: float
) -> AppealQuality | None:
    """The appeals' overturn rates of ``policy_ids`` (None without a database; a database that
    cannot be read is a warning: the evaluation stands without them)."""
    import time

    from moderation.compose.appeals import open_appeal_store
    from moderation.compose.stores import command_database
    from moderation.pipeline.evaluate import appeal_quality

    settings = load_settings()
    try:
        store = open_appeal_store(settings, database=command_database(settings))
        if store is None:
            return None
        decided = store.decided(since=time.time() - days * 86400)
    except ModerationError as exc:
        err.print(f"[yellow]warning[/]: no overturn rates: {exc}", highlight=False)
        return None
    return appeal_quality(decided, policy_ids=policy_ids, days=days, confidence=confidence)


def _overturn_table(quality: AppealQuality) -> Table:
    table = Table(
        "category / policy version",
        "appeals decided",
        "overturned",
        "overturn rate",
        title=f"appeals decided in the last {quality.days:g} days",
    )
    for rows in (quality.by_category, quality.by_policy_version):
        for r in rows:
            table.add_row(r.key, str(r.decided), str(r.overturned), _pct(r.rate))
    if not quality.by_category:
        table.add_row("(none)", "0", "0", "–")
    return table


def _combined_table(report: EvaluationReport) -> Table:
    """Combined categories: each member's signal alone, then the rule, on the same labels."""
    table = Table(
        "combined category",
        "decided by",
        "viol./benign",
        "block P",
        "block R",
        "flagged P",
        "flagged R",
        "review load",
        title="combined categories: each signal alone and the rule",
    )
    for c in report.combined:
        for m in c.members:
            table.add_row(
                c.key,
                f"{m.key} alone",
                f"{m.positives}/{m.negatives}",
                _pct(m.block.precision),
                _pct(m.block.recall),
                _pct(m.flagged.precision),
                _pct(m.flagged.recall),
                _pct(m.review_load),
            )
        table.add_row(
            c.key + (" [yellow](small)[/]" if c.small_sample else ""),
            "[bold]the rule[/]",
            f"{c.positives}/{c.negatives}",
            _pct(c.block.precision),
            _pct(c.block.recall),
            _pct(c.flagged.precision),
            _pct(c.flagged.recall),
            _pct(c.review_load),
        )
    return table


def _calibration_table(report: CalibrationReport) -> Table:
    """Current -> proposed thresholds per category, and per combined category its members'."""
    table = Table(
        "category",
        "viol./benign",
        "review",
        "block",
        "block precision (low)",
        "block recall",
        "flagged recall (low)",
        "review load",
        title=f"{report.policy_id}: target precision {report.target_precision:.1%}, recall "
        f"{report.target_recall:.1%}, {report.confidence:.0%} confidence",
    )
    for p in report.proposals:
        flag = "" if p.supported else " [bold red](unsupported)[/]"
        table.add_row(
            p.key + flag,
            f"{p.positives}/{p.negatives}",
            f"{p.current_review:.4f} → {p.review:.4f}",
            f"{p.current_block:.4f} → {p.block:.4f}",
            f"{_pct(p.current_block_precision)} → {_pct(p.block_precision)} "
            f"({_pct(p.block_precision_low)})",
            _pct(p.block_recall),
            f"{_pct(p.current_flagged_recall)} → {_pct(p.flagged_recall)} "
            f"({_pct(p.flagged_recall_low)})",
            f"{_pct(p.current_review_load)} → {_pct(p.review_load)}",
        )
    for c in report.combined:
        flag = "" if c.supported else " [bold red](unsupported)[/]"
        table.add_row(
            f"{c.key} (combined){flag}",
            f"{c.positives}/{c.negatives}",
            "\n".join(
                f"{m.key.partition('/')[2]} {m.current_review:.4f} → {m.review:.4f}"
                for m in c.members
            ),
            "\n".join(
                f"{m.key.partition('/')[2]} {m.current_block:.4f} → {m.block:.4f}"
                for m in c.members
            ),
            f"{_pct(c.current_block_precision)} → {_pct(c.block_precision)} "
            f"({_pct(c.block_precision_low)})",
            _pct(c.block_recall),
            f"{_pct(c.current_flagged_recall)} → {_pct(c.flagged_recall)} "
            f"({_pct(c.flagged_recall_low)})",
            f"{_pct(c.current_review_load)} → {_pct(c.review_load)}",
        )
    return table


def _video_table(report: EvaluationReport) -> Table:
    """Per-video metrics: each labelled video counts once, under its policy's video rule."""
    table = Table(
        "category",
        "viol./benign",
        "rule (frames, s)",
        "block P",
        "block R",
        "flagged R",
        "blocked/review/allowed",
        title=f"per video ({report.n_videos} videos)",
    )
    for v in report.videos:
        table.add_row(
            v.key,
            f"{v.positives}/{v.negatives}",
            f"≥{v.min_block_frames}, ≥{v.min_block_seconds:g} s",
            _pct(v.block_precision),
            _pct(v.block_recall),
            _pct(v.flagged_recall),
            f"{v.blocked}/{v.reviewed}/{v.allowed}",
        )
    return table


def _next_version_path(source: Path, policy_id: str, version: int, out: Path | None) -> Path:
    if out is not None:
        return out
    return source.parent / f"{source.stem}.v{version}{source.suffix}"


def calibrate(
    dataset: Annotated[
        Path,
        typer.Argument(help="A labels file, a folder with one, or a review export (.jsonl/.csv)."),
    ],
    policy: Annotated[Path, typer.Option("--policy", "-p", help="The policy file to calibrate.")],
    target_precision: Targets = 0.95,
    target_recall: Targets = 0.95,
    confidence: Confidence = 0.95,
    category: Annotated[
        list[str] | None, typer.Option("--category", help="Only these categories.")
    ] = None,
    out_file: Annotated[
        Path | None,
        typer.Option("--out", help="The new version's file (default: POLICY's folder, .vN)."),
    ] = None,
    partial: Annotated[
        bool,
        typer.Option(
            help="Write the new version even if some targets are unsupported (those "
            "thresholds stay as they are)."
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    batch_size: Annotated[int, typer.Option(min=1, max=1024)] = 32,
) -> None:
    """Propose thresholds that meet a target precision for automatic blocking and a target
    recall for the review band, and write them as a NEW policy version (``mode: shadow``,
    version + 1) with a diff against the old one. The live file is never changed.

    Exit status 1 (and nothing written, unless --partial) when the data cannot support a target.
    """
    from moderation.adapters.policy_files import (
        edit_policy_text,
        load_policy_file,
        load_policy_text,
        write_text_atomic,
    )
    from moderation.core.policy import PolicyMode
    from moderation.pipeline.calibrate import calibrate as calibrate_use_case

    if not policy.is_file():
        raise fail(QualityError(f"{policy}: calibrate takes one policy file"))
    try:
        scoring, data, scored = _score(dataset, [policy], batch_size)
        compiled = scoring.policies.current
        (policy_id,) = compiled.ids_for(None) or (None,)
        if policy_id is None:
            raise QualityError(f"{policy}: no active policy in it")
        report = calibrate_use_case(
            scored,
            compiled,
            policy_id,
            dataset=data,
            target_precision=target_precision,
            target_recall=target_recall,
            confidence=confidence,
            categories=category,
        )
    except ModerationError as exc:
        raise fail(exc) from exc
    if as_json:
        print(json.dumps(report.to_dict()))
    table = _calibration_table(report)
    (err if as_json else out).print(table)
    rule = report.video_rule
    if rule is not None:
        flag = "" if rule.supported else " [bold red](unsupported)[/]"
        (err if as_json else out).print(
            f"video rule{flag} on {rule.videos} labelled videos: "
            f"≥{rule.current.min_block_frames} frames, ≥{rule.current.min_block_seconds:g} s → "
            f"≥{rule.proposed.min_block_frames} frames, ≥{rule.proposed.min_block_seconds:g} s; "
            f"per-video block precision {_pct(rule.current.precision)} → "
            f"{_pct(rule.proposed.precision)} ({_pct(rule.proposed.precision_low)}), "
            f"recall {_pct(rule.current.recall)} → {_pct(rule.proposed.recall)}",
            highlight=False,
        )
    for note in report.notes:
        err.print(f"[yellow]note[/]: {note}", highlight=False)
    for problem in report.problems:
        err.print(f"[bold red]unsupported[/]: {problem}", highlight=False, soft_wrap=True)
    if not report.supported and not partial:
        err.print("nothing written (use --partial to keep the unsupported thresholds as they are)")
        raise typer.Exit(1)
    try:
        old_text = policy.read_text(encoding="utf-8")
        old = load_policy_file(policy)
        version = max([old.version, *(p.version for _, p in _versions(old.id, policy.parent))])
        version += 1
        target = _next_version_path(policy, old.id, version, out_file)
        if target.exists():
            raise QualityError(f"{target} exists; remove it or choose another --out")
        shadows = [f for f, p in _versions(old.id, target.parent) if p.shadow]
        if shadows:
            raise QualityError(
                f"{shadows[0]} is already a shadow version of {old.id!r} in that folder (promote "
                "or remove it first, or write elsewhere with --out)"
            )
        new_text = edit_policy_text(
            old_text,
            version=version,
            mode=PolicyMode.SHADOW,
            thresholds=report.thresholds,
            video=(
                report.video_rule.rule
                if report.video_rule is not None and report.video_rule.supported
                else None
            ),
            source=str(policy),
        )
        load_policy_text(new_text, source=str(target), base_dir=target.parent)
        write_text_atomic(target, new_text)
    except ModerationError as exc:
        raise fail(exc) from exc
    diff = "".join(
        difflib.unified_diff(
            old_text.splitlines(keepends=True),
            new_text.splitlines(keepends=True),
            fromfile=str(policy),
            tofile=str(target),
        )
    )
    console = err if as_json else out
    if console.is_terminal:
        console.print(Syntax(diff, "diff", theme="ansi_dark", word_wrap=True))
    else:  # a pipe or a file: the diff as is, never wrapped (it applies as a patch)
        (sys.stderr if as_json else sys.stdout).write(diff)
    err.print(
        f"wrote {target}: {old.id} v{version}, mode shadow (deploy it to measure it on live "
        f"traffic; `moderation policy promote {old.id}` makes it live)",
        highlight=False,
    )
    raise typer.Exit(0 if report.supported else 1)


def _versions(policy_id: str, folder: Path) -> list[tuple[Path, Policy]]:
    """The readable files of ``folder`` that hold a version of ``policy_id``."""
    from moderation.adapters.policy_files import find_policy_files, load_policy_file

    found = []
    for file in find_policy_files([folder]):
        try:
            policy = load_policy_file(file)
        except ModerationError:
            continue
        if policy.id == policy_id:
            found.append((file, policy))
    return found


def backtest(
    new_version: Annotated[Path, typer.Argument(help="The candidate policy file (any mode).")],
    since: Annotated[str, typer.Option(help="Start: 7d, 24h, 30m ago or an ISO date/time.")],
    until: Annotated[str | None, typer.Option(help="End (default: now).")] = None,
    tenant: Annotated[
        str | None, typer.Option(help="Only this tenant's traffic (default: every tenant).")
    ] = None,
    examples: Annotated[int, typer.Option(min=0, help="Changed items to list.")] = 20,
    on: Annotated[
        str,
        typer.Option(
            help="Where to score: local (this process), workers (Celery tasks on the running "
            "workers, one per shard group) or auto (workers when there is more than one group, "
            "the history is in S3 and a worker is alive)."
        ),
    ] = "auto",
    shards_per_task: Annotated[
        int, typer.Option(min=1, max=10_000, help="History shards per group (per task).")
    ] = 8,
    parallel: Annotated[
        int | None,
        typer.Option(min=1, max=1024, help="Tasks in flight at once (default: 2 per worker)."),
    ] = None,
    task_timeout: Annotated[
        float, typer.Option(min=1.0, help="Seconds a group's task may take on the workers.")
    ] = 300.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Re-score stored embeddings of past traffic with NEW_VERSION in place of its live version,
    without re-encoding any image, and report which decisions would change."""
    from moderation.compose.backtest import backtest_runner
    from moderation.compose.scoring import build_scoring
    from moderation.compose.stores import open_history
    from moderation.core.jobs import TENANT_PATTERN
    from moderation.pipeline.backtest import backtest as backtest_use_case

    if on not in ("auto", "local", "workers"):
        raise typer.BadParameter(f"{on!r}: choose auto, local or workers", param_hint="--on")
    if tenant is not None and not re.match(TENANT_PATTERN, tenant):
        raise typer.BadParameter(f"{tenant!r} is not a tenant name", param_hint="--tenant")
    start = parse_since(since)
    end = parse_since(until) if until else None
    settings = load_settings()
    for warning in settings.embeddings.deprecations():
        err.print(f"[bold yellow]warning[/]: {warning}", highlight=False)
    try:
        scoring = build_scoring(settings)
        if scoring.model.note:
            err.print(f"[bold yellow]warning[/]: {scoring.model.note}", highlight=False)
        drafts = scoring.compile([new_version]).current
        candidate = next(iter(drafts.by_id.values()))
        runner = backtest_runner(
            settings,
            on=on,  # type: ignore[arg-type]
            parallel=parallel,
            timeout_s=task_timeout,
            candidate_has_exemplars=any(
                c.exemplars is not None for c in candidate.policy.categories
            ),
        )
        with progress_later("backtest (shards)") as (set_total, advance):
            report = backtest_use_case(
                open_history(settings),
                live=scoring.policies.current,
                candidate=candidate,
                candidate_text=new_version.read_text(encoding="utf-8"),
                since=start,
                until=end,
                tenant=tenant,
                examples=examples,
                shards_per_group=shards_per_task,
                runner=runner,
                on_plan=lambda shards, _: set_total(shards),
                on_progress=advance,
            )
    except ModerationError as exc:
        raise fail(exc) from exc
    except OSError as exc:
        raise fail(QualityError(f"{new_version}: cannot read ({exc.strerror or exc})")) from exc
    if as_json:
        print(json.dumps(report.to_dict()))
        return
    live = "not live" if report.live_version is None else f"v{report.live_version}"
    who = f", tenant {report.tenant}" if report.tenant else ""
    out.print(
        f"{report.policy_id} v{report.candidate_version} against {live}, model {report.model}, "
        f"since {report.since}{who}: {report.shards} shards in {report.groups} groups on "
        f"{report.where}, {report.read} stored, {report.scored} re-scored, "
        f"[bold]{report.changed} decisions change[/] ({report.seconds:.2f} s)",
        highlight=False,
    )
    if report.refused:
        refused = ", ".join(f"{n} of {m}" for m, n in report.refused.items())
        err.print(f"[yellow]refused (another model)[/]: {refused}", highlight=False)
    if report.missing:
        err.print(
            f"[yellow]warning[/]: {report.missing} shards were gone when read (deleted by the "
            "retention sweep meanwhile, or not in a store the workers share: use --on local)",
            highlight=False,
        )
    extra = {
        "unaffected (policy not applied)": report.unaffected,
        "duplicates": report.duplicates,
        "unscorable (policy gone)": report.unscorable,
        "recorded decision differs from the live re-score": report.drift,
    }
    for name, count in extra.items():
        if count:
            out.print(f"{name}: {count}", highlight=False)
    if report.transitions:
        table = Table("change", "items", title="transitions")
        for name, count in report.transitions.items():
            table.add_row(name, str(count))
        out.print(table)
        table = Table("category", "items", title="by category")
        for name, count in report.by_category.items():
            table.add_row(name, str(count))
        out.print(table)
    if report.examples:
        table = Table("job", "at", "image", "live", "candidate", title="examples (earliest)")
        for change in report.examples:
            table.add_row(
                change.job_id,
                change.at[:19],
                (change.image or "")[:60],
                f"{change.before.decision} {change.before.category or ''} "
                f"{change.before.score:.3f}",
                f"{change.after.decision} {change.after.category or ''} {change.after.score:.3f}",
            )
        out.print(table)


def promote(
    policy_id: Annotated[str, typer.Argument(help="The policy whose shadow version goes live.")],
    by: Annotated[str | None, typer.Option(help="Who promotes (default: your user name).")] = None,
    note: Annotated[str | None, typer.Option(help="Why, for the audit log.")] = None,
) -> None:
    """Make a policy's shadow version the live one, and record the promotion in the audit log
    first. With ``policy_source: files`` the files under MODERATION_POLICY_PATHS change; with
    ``policy_source: database`` the policy store does. Workers follow either way, no restart."""
    from moderation.compose.policies import open_policy_files
    from moderation.compose.stores import open_audit
    from moderation.pipeline.promote import promote as promote_use_case

    settings = load_settings()
    actor = by or getpass.getuser()
    try:
        files = open_policy_files(settings, actor=actor)
        audit = open_audit(settings)
        try:
            done = promote_use_case(policy_id, files=files, audit=audit, actor=actor, note=note)
        finally:
            audit.close()
    except ModerationError as exc:
        raise fail(exc, 1) from exc
    was = "new" if done.previous_version is None else f"v{done.previous_version}"
    out.print(
        f"promoted {policy_id} v{done.version} (was {was}) by {actor}: live in "
        f"{done.files['live_file']}"
        + (
            f"; old version kept in {done.files['retired_file']}"
            if done.files["retired_file"]
            else ""
        )
        + f"; audit record {done.record.record_id}",
        highlight=False,
    )
