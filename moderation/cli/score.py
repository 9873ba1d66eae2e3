"""``moderation score``: moderate local images without the queue."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from moderation.cli.common import err, expand, fail, load_settings, out, read_image_file
from moderation.exceptions import ModerationError
from moderation.pipeline.score import LocalResult

__all__ = ["DECISION_STYLE", "result_dict", "score"]

DECISION_STYLE = {"allow": "green", "review": "yellow", "block": "bold red", "error": "red"}


def result_dict(result: LocalResult) -> dict[str, Any]:
    """One scored input as printed by ``--json``."""
    if result.verdict is None:
        error = result.error
        return {
            "path": result.name,
            "error": error.code if error else "error",
            "message": str(error) if error else "",
        }
    v = result.verdict
    return {
        "path": result.name,
        "decision": v.decision.value,
        "score": round(v.score, 4),
        "policy": v.policy_id,
        "category": v.category_id,
        "severity": v.severity.value if v.severity else None,
        "reason_code": v.reason_code,
        "explanation": v.explain(),
        "content_sha256": result.content_sha256,
        "verdict": v.to_dict(),
    }


def score(
    inputs: Annotated[list[Path], typer.Argument(help="Image files or folders.")],
    policy: Annotated[
        list[Path] | None, typer.Option("--policy", "-p", help="Policy file or folder.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per input.")] = False,
    batch_size: Annotated[int, typer.Option(min=1, max=1024)] = 32,
) -> None:
    """Score images against policies; exit 1 if any input could not be scored.

    Files in a folder without an image suffix are listed as skipped, with the reason.
    """
    from moderation.compose.scoring import build_scoring
    from moderation.pipeline.score import score_local

    settings = load_settings()
    found = list(expand(inputs))
    skipped = [f for f in found if f.skipped]
    wanted = [f for f in found if not f.skipped]
    failed = 0
    table = Table("path", "decision", "score", "category", "why", show_lines=False)
    try:
        scoring = build_scoring(settings, policy_paths=policy)
        if scoring.model.note:
            err.print(f"[bold yellow]warning[/]: {scoring.model.note}", highlight=False)
        max_bytes = settings.images.max_bytes
        items = [(str(f.path), lambda p=f.path: read_image_file(p, max_bytes)) for f in wanted]
        show = any(f.from_folder for f in wanted) and sys.stderr.isatty()
        with Progress(
            TextColumn("scoring"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err,
            disable=not show,
            transient=True,
        ) as bar:
            task = bar.add_task("score", total=len(items))
            for result in score_local(
                items,
                scoring.moderator,
                batch_size=batch_size,
                on_done=lambda n: bar.advance(task, n),
            ):
                row = result_dict(result)
                failed += "error" in row
                if as_json:
                    print(json.dumps(row), flush=True)
                elif "error" in row:
                    table.add_row(row["path"], "[red]error[/]", "", row["error"], row["message"])
                else:
                    style = DECISION_STYLE[row["decision"]]
                    table.add_row(
                        row["path"],
                        f"[{style}]{row['decision']}[/]",
                        f"{row['score']:.3f}",
                        f"{row['policy']}/{row['category']}",
                        row["explanation"],
                    )
    except ModerationError as exc:
        raise fail(exc) from exc
    for item in skipped:
        if as_json:
            print(json.dumps({"path": str(item.path), "skipped": item.skipped}), flush=True)
        else:
            err.print(
                f"[yellow]skipped[/] {item.path}: {item.skipped}", highlight=False, soft_wrap=True
            )
    if not as_json:
        out.print(table)
        out.print(f"{len(wanted)} inputs, {failed} failed, {len(skipped)} skipped")
    raise typer.Exit(1 if failed else 0)
