"""The ``moderation`` command line. Each command builds Settings once and passes it down."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from moderation.cli_audit import audit_app
from moderation.cli_common import err, out
from moderation.cli_common import fail as _fail
from moderation.cli_common import load_settings as _settings
from moderation.cli_pipeline import pipeline_app
from moderation.cli_review import review_app
from moderation.exceptions import ModerationError, PolicyError
from moderation.settings import Settings

if TYPE_CHECKING:
    from moderation.bootstrap import Runtime

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
policy_app = typer.Typer(no_args_is_help=True, help="Validate, compile and inspect policies.")
testmodel_app = typer.Typer(no_args_is_help=True, help="The bundled synthetic test model.")
app.add_typer(policy_app, name="policy")
app.add_typer(testmodel_app, name="testmodel")
app.add_typer(audit_app, name="audit")
app.add_typer(review_app, name="review")
app.add_typer(pipeline_app)  # top level: demo, api, worker, submit, dlq


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}




# --- score -----------------------------------------------------------------------------------


def _expand(inputs: Sequence[Path]) -> Iterator[tuple[Path, bool]]:
    """(path, came_from_folder). Folders are walked recursively for image suffixes."""
    for item in inputs:
        if item.is_dir():
            for path in sorted(item.rglob("*")):
                if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
                    yield path, True
        else:
            yield item, False


def _runtime(settings: Settings, policy_paths: Sequence[Path] | None) -> Runtime:
    from moderation.bootstrap import build_runtime

    runtime = build_runtime(settings, policy_paths=policy_paths)
    if runtime.model.note:
        err.print(f"[bold yellow]warning[/]: {runtime.model.note}", highlight=False)
    return runtime


def score_paths(
    paths: Sequence[Path], runtime: Runtime, *, progress: bool, batch_size: int = 32
) -> Iterator[dict[str, Any]]:
    """Score files; yields one result dict per path (``decision`` or ``error``), in order."""
    from moderation.adapters.images import decode_image
    from moderation.service import most_severe

    settings = runtime.settings
    moderator = runtime.moderator
    encoder = runtime.model.encoder

    def load(path: Path) -> tuple[list[Any] | None, str | None, str | None]:
        try:
            size = path.stat().st_size
            if size > settings.images.max_bytes:
                return None, "image_too_large", f"{size} bytes exceeds the limit"
            frames = decode_image(path.read_bytes(), settings.images, min_side=encoder.image_size)
            return [encoder.prepare(f) for f in frames], None, None
        except ModerationError as exc:
            return None, exc.code, str(exc)
        except OSError as exc:
            return None, "unreadable", f"cannot read file: {exc.strerror or exc}"

    threads = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(threads) as pool, Progress(
        TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=err, disable=not progress, transient=True,
    ) as bar:
        task = bar.add_task("score", total=len(paths))
        for start in range(0, len(paths), batch_size):
            chunk = paths[start : start + batch_size]
            loaded = list(pool.map(load, chunk))
            flat = [t for frames, _, _ in loaded if frames for t in frames]
            found = moderator.verdicts_for_embeddings(moderator.embed(flat)) if flat else []
            cursor = 0
            for path, (frames, code, message) in zip(chunk, loaded, strict=True):
                if frames is None:
                    yield {"path": str(path), "error": code, "message": message}
                else:
                    verdict = most_severe(found[cursor : cursor + len(frames)])
                    cursor += len(frames)
                    yield {
                        "path": str(path),
                        "decision": verdict.decision.value,
                        "score": round(verdict.score, 4),
                        "policy": verdict.policy_id,
                        "category": verdict.category_id,
                        "severity": verdict.severity.value if verdict.severity else None,
                        "reason_code": verdict.reason_code,
                        "explanation": verdict.explain(),
                        "verdict": verdict.model_dump(mode="json"),
                    }
                bar.advance(task)


_STYLE = {"allow": "green", "review": "yellow", "block": "bold red"}


@app.command()
def score(
    inputs: Annotated[list[Path], typer.Argument(help="Image files or folders.")],
    policy: Annotated[
        list[Path] | None, typer.Option("--policy", "-p", help="Policy file or folder.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per input.")] = False,
    batch_size: Annotated[int, typer.Option(min=1, max=1024)] = 32,
) -> None:
    """Score images against policies; exit 1 if any input could not be scored."""
    settings = _settings()
    expanded = list(_expand(inputs))
    paths = [p for p, _ in expanded]
    show_progress = any(from_dir for _, from_dir in expanded) and sys.stderr.isatty()
    failed = 0
    table = Table("path", "decision", "score", "category", "why", show_lines=False)
    try:
        runtime = _runtime(settings, policy)
        for result in score_paths(paths, runtime, progress=show_progress, batch_size=batch_size):
            failed += "error" in result
            if as_json:
                print(json.dumps(result), flush=True)
            elif "error" in result:
                table.add_row(result["path"], "[red]error[/]", "", result["error"],
                              result["message"])
            else:
                table.add_row(
                    result["path"],
                    f"[{_STYLE[result['decision']]}]{result['decision']}[/]",
                    f"{result['score']:.3f}",
                    f"{result['policy']}/{result['category']}",
                    result["explanation"],
                )
    except ModerationError as exc:
        raise _fail(exc) from exc
    if not as_json:
        out.print(table)
        out.print(f"{len(paths)} inputs, {failed} failed")
    raise typer.Exit(1 if failed else 0)


# --- policy ----------------------------------------------------------------------------------


@policy_app.command("check")
def policy_check(
    paths: Annotated[list[Path] | None, typer.Argument(help="Files or folders.")] = None,
) -> None:
    """Validate policy files; print every problem as file:line: field: message."""
    from moderation.policy_files import load_policies

    settings = _settings()
    try:
        policies = load_policies(paths or settings.policy_paths)
    except PolicyError as exc:
        raise _fail(exc, 1) from exc
    for policy_id in policies:
        p = policies[policy_id]
        out.print(
            f"[green]ok[/] {policies.source(policy_id)}: {p.id} v{p.version}, "
            f"{len(p.categories)} categories{'' if p.active else ' (inactive)'}",
            highlight=False,
        )


@policy_app.command("compile")
def policy_compile(
    paths: Annotated[list[Path] | None, typer.Argument(help="Files or folders.")] = None,
) -> None:
    """Compile policies into prompt embeddings in the cache (reused when unchanged)."""
    from moderation.adapters.compile_cache import CompileCache
    from moderation.bootstrap import compile_all, load_model, policy_paths_for
    from moderation.policy_files import load_policies

    settings = _settings()
    try:
        model = load_model(settings.model)
        if model.note:
            err.print(f"[bold yellow]warning[/]: {model.note}", highlight=False)
        policies = load_policies(paths or policy_paths_for(settings, model))
        cache = CompileCache(settings.cache_dir)
        before = model.encoder.texts_encoded
        compiled, hits = compile_all(policies, model.encoder, cache)
    except ModerationError as exc:
        raise _fail(exc, 1) from exc
    for item in compiled:
        out.print(
            f"{item.id} v{item.version} -> {cache.path_for(item.policy, item.model)} "
            f"({item.compiled_hash[:12]})",
            highlight=False,
        )
    out.print(
        f"{len(compiled)} policies, {hits} from cache, "
        f"{model.encoder.texts_encoded - before} texts encoded, model {model.encoder.identity.id}"
    )


BANDS = ("allow", "review", "block")


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
    settings = _settings()
    labelled = [
        (path, band)
        for band in BANDS
        for path, _ in _expand([cases / band])
        if (cases / band).is_dir()
    ]
    if not labelled:
        err.print(f"[red]error[/]: no images under {cases}/{{allow,review,block}}/")
        raise typer.Exit(2)
    try:
        draft = list(score_paths([p for p, _ in labelled], _runtime(settings, [policy]),
                                 progress=sys.stderr.isatty()))
        live = (
            list(score_paths([p for p, _ in labelled], _runtime(settings, against),
                             progress=False))
            if against else [None] * len(labelled)
        )
    except ModerationError as exc:
        raise _fail(exc) from exc
    confusion = {e: dict.fromkeys((*BANDS, "error"), 0) for e in BANDS}
    failures = 0
    table = Table("example", "expected", "draft", "score", "live", "")
    for (path, expected), result, before in zip(labelled, draft, live, strict=True):
        got = result.get("decision", "error")
        confusion[expected][got] += 1
        ok = got == expected
        failures += not ok
        was = before.get("decision", "error") if before else ""
        if as_json:
            print(json.dumps({"path": str(path), "expected": expected, "decision": got,
                              "score": result.get("score"), "live": was or None, "ok": ok}))
        else:
            table.add_row(
                str(path.relative_to(cases)), expected,
                f"[{_STYLE.get(got, 'red')}]{got}[/]", f"{result.get('score', 0):.3f}",
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


@policy_app.command("schema")
def policy_schema() -> None:
    """Print the policy JSON Schema (for editor autocompletion)."""
    from moderation.policy import Policy

    schema = Policy.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Moderation policy"
    print(json.dumps(schema, indent=2))


# --- test model ------------------------------------------------------------------------------


@testmodel_app.command("eval")
def testmodel_eval(
    n_per_class: Annotated[int, typer.Option(min=1)] = 20,
    seed: Annotated[int, typer.Option()] = 12345,
) -> None:
    """Zero-shot accuracy of the bundled test model on a fresh held-out synthetic set."""
    from moderation.testmodel.evaluate import evaluate

    print(json.dumps(evaluate(n_per_class=n_per_class, seed=seed), indent=2))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
