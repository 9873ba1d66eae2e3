"""``moderation policy``: validate, compile, test and describe policies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from moderation.cli.common import err, expand, fail, load_settings, out, read_image_file
from moderation.cli.score import DECISION_STYLE
from moderation.exceptions import ModerationError, PolicyError

__all__ = ["policy_app"]

policy_app = typer.Typer(no_args_is_help=True, help="Validate, compile and inspect policies.")

BANDS = ("allow", "review", "block")


@policy_app.command("check")
def policy_check(
    paths: Annotated[list[Path] | None, typer.Argument(help="Files or folders.")] = None,
) -> None:
    """Validate policy files; print every problem as file:line: field: message."""
    from moderation.adapters.images import SafeDecoder
    from moderation.adapters.policy_files import load_policies
    from moderation.compose.registries import build_signals, image_check

    settings = load_settings()
    try:
        policies = load_policies(
            paths or settings.policy_paths,
            signals=build_signals(settings),
            check_image=image_check(SafeDecoder(settings.images)),
        )
    except PolicyError as exc:
        raise fail(exc, 1) from exc
    for p, source in policies.every():
        signals = sorted({c.signal for c in p.categories})
        out.print(
            f"[green]ok[/] {source}: {p.id} v{p.version}, "
            f"{len(p.categories)} categories ({', '.join(signals)})"
            f"{'' if p.active else ' (inactive)'}{' (shadow)' if p.shadow else ''}",
            highlight=False,
        )


@policy_app.command("compile")
def policy_compile(
    paths: Annotated[list[Path] | None, typer.Argument(help="Files or folders.")] = None,
    skip_without_model: Annotated[
        bool,
        typer.Option(
            "--skip-without-model",
            help="When the model cannot be loaded (no weights yet), say why and exit 0 (a "
            "pod's init step: the worker then stays not ready with the reason on /readyz "
            "instead of the pod crash-looping).",
        ),
    ] = False,
) -> None:
    """Compile policies into prompt embeddings in the cache (reused when unchanged)."""
    from moderation.compose.scoring import compile_policies
    from moderation.exceptions import ModelUnavailableError

    settings = load_settings()
    try:
        report = compile_policies(settings, paths)
    except ModelUnavailableError as exc:
        if not skip_without_model:
            raise fail(exc, 1) from exc
        err.print(f"policies not compiled: {exc}", highlight=False)
        return
    except ModerationError as exc:
        raise fail(exc, 1) from exc
    if report.model.note:
        err.print(f"[bold yellow]warning[/]: {report.model.note}", highlight=False)
    for item, path in zip(report.compiled, report.files, strict=True):
        out.print(
            f"{item.id} v{item.version} -> {path} ({item.compiled_hash[:12]})", highlight=False
        )
    out.print(
        f"{len(report.compiled)} policies, {report.cache_hits} from cache, "
        f"{report.texts_encoded} texts encoded, model {report.model.encoder.identity.id}"
    )


@policy_app.command("test")
def policy_test(
    policy: Annotated[Path, typer.Argument(help="The draft policy file to test.")],
    cases: Annotated[
        Path,
        typer.Option(help="Folder with allow/, review/ and block/ subfolders of example images."),
    ],
    against: Annotated[
        list[Path] | None,
        typer.Option(help="The live policy file/folder, to list decisions the draft changes."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Test a policy before it goes live: every labelled example must get its expected decision.

    Exit status 1 when any example is decided otherwise (or cannot be read).
    """
    from moderation.compose.scoring import build_scoring
    from moderation.pipeline.score import score_local

    settings = load_settings()
    labelled = [
        (found.path, band)
        for band in BANDS
        if (cases / band).is_dir()
        for found in expand([cases / band])
        if not found.skipped
    ]
    if not labelled:
        err.print(f"[red]error[/]: no images under {cases}/{{allow,review,block}}/")
        raise typer.Exit(2)
    max_bytes = settings.images.max_bytes
    items = [(str(p), lambda p=p: read_image_file(p, max_bytes)) for p, _ in labelled]
    try:
        scoring = build_scoring(settings, policy_paths=[policy])
        if scoring.model.note:
            err.print(f"[bold yellow]warning[/]: {scoring.model.note}", highlight=False)
        draft = list(score_local(items, scoring.moderator))
        live = (
            list(score_local(items, scoring.moderator, compiled=scoring.compile(against).current))
            if against
            else [None] * len(items)
        )
    except ModerationError as exc:
        raise fail(exc) from exc
    confusion = {e: dict.fromkeys((*BANDS, "error"), 0) for e in BANDS}
    failures = 0
    table = Table("example", "expected", "draft", "score", "live", "")
    for (path, expected), result, before in zip(labelled, draft, live, strict=True):
        got = result.verdict.decision.value if result.verdict else "error"
        score = result.verdict.score if result.verdict else 0.0
        confusion[expected][got] += 1
        ok = got == expected
        failures += not ok
        was = (before.verdict.decision.value if before.verdict else "error") if before else ""
        if as_json:
            print(
                json.dumps(
                    {
                        "path": str(path),
                        "expected": expected,
                        "decision": got,
                        "score": score if result.verdict else None,
                        "live": was or None,
                        "ok": ok,
                    }
                )
            )
        else:
            table.add_row(
                str(path.relative_to(cases)),
                expected,
                f"[{DECISION_STYLE.get(got, 'red')}]{got}[/]",
                f"{score:.3f}",
                f"{was}{' (changed)' if was and was != got else ''}",
                "[green]ok[/]" if ok else "[bold red]FAIL[/]",
            )
    if not as_json:
        out.print(table)
        matrix = Table("expected \\ draft", *BANDS, "error", title="confusion")
        for expected in BANDS:
            matrix.add_row(expected, *(str(confusion[expected][b]) for b in (*BANDS, "error")))
        out.print(matrix)
        out.print(f"{len(labelled)} examples, {failures} failed")
    raise typer.Exit(1 if failures else 0)


@policy_app.command("publish")
def policy_publish(
    paths: Annotated[list[Path] | None, typer.Argument(help="Files or folders.")] = None,
    by: Annotated[str | None, typer.Option(help="Who publishes (default: your user name).")] = None,
) -> None:
    """Publish policy files to the policy store (``policy_source: database``): live and shadow
    versions by their ``mode``, exemplar images to the object store. A live version changes
    only by ``policy promote``; publishing the same files again changes nothing."""
    import getpass

    from moderation.compose.policies import publish_policy_files

    settings = load_settings()
    actor = by or getpass.getuser()
    try:
        done = publish_policy_files(settings, paths or settings.policy_paths, actor=actor)
    except ModerationError as exc:
        raise fail(exc, 1) from exc
    for item in done:
        doc = item.document
        state = "published" if item.changed else "unchanged"
        out.print(
            f"{state}: {doc.policy_id} v{doc.version} {doc.slot} (document {doc.id})",
            highlight=False,
        )


@policy_app.command("schema")
def policy_schema() -> None:
    """Print the policy JSON Schema (for editor autocompletion)."""
    from moderation.core.policy import Policy

    schema = Policy.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Moderation policy"
    print(json.dumps(schema, indent=2))
