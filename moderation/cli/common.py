"""What every CLI module shares: the consoles, building Settings at the entry point, turning a
ModerationError into a clear message and an exit status, and the local-file helpers."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from moderation.exceptions import (
    ImageFetchError,
    ImageTooLargeError,
    ModerationError,
)
from moderation.logs import configure_logging
from moderation.settings import Settings

__all__ = [
    "IMAGE_SUFFIXES",
    "Found",
    "api_url",
    "client_key",
    "err",
    "expand",
    "fail",
    "load_settings",
    "out",
    "progress",
    "progress_later",
    "read_image_file",
    "warn_insecure",
]

out = Console()
err = Console(stderr=True)

#: Libraries whose INFO lines are per-request noise on a terminal.
_QUIET = ("httpx", "httpcore", "botocore", "boto3", "urllib3", "s3transfer", "pgserver")
#: File suffixes a folder walk picks up as images.
IMAGE_SUFFIXES = frozenset(
    {
        ".jpg",
        ".jpeg",
        ".png",
        ".webp",
        ".gif",
        ".bmp",
        ".tif",
        ".tiff",
        ".heic",
        ".heif",
        ".avif",
    }
)


def load_settings() -> Settings:
    """Settings from the environment, with logging configured from them."""
    settings = Settings()
    configure_logging(settings.log_level)  # client strings in records are escaped
    for name in _QUIET:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))
    return settings


def fail(exc: ModerationError, code: int = 2) -> typer.Exit:
    """Print ``exc`` as an error line and return the Exit to raise."""
    err.print(f"[bold red]error[/]: {exc}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def warn_insecure(settings: Settings) -> None:
    """Fail closed on unsafe secrets: in production, exit with every problem named; in
    development mode, warn loudly about each.

    Raises:
        typer.Exit: production with weak secrets or keys (status 2).
    """
    try:
        problems = settings.enforce_security()
    except ModerationError as exc:
        raise fail(exc) from exc
    if problems:
        err.print(
            "[bold yellow]DEVELOPMENT MODE[/] (MODERATION_ENVIRONMENT=development): "
            "these settings would be refused in production:",
            highlight=False,
        )
    for problem in problems:
        err.print(f"[bold yellow]warning[/]: {problem}", highlight=False, soft_wrap=True)


def client_key(settings: Settings) -> str | None:
    """The API key the CLI client sends: the first configured one, if any."""
    return settings.api_keys[0].key.get_secret_value() if settings.api_keys else None


def api_url(settings: Settings, url: str | None) -> str:
    return url or f"http://{settings.api_host}:{settings.api_port}"


@dataclass(frozen=True, slots=True)
class Found:
    """A path named on the command line or found in a folder; ``skipped`` says why a folder
    entry is not scored."""

    path: Path
    from_folder: bool
    skipped: str | None = None


def expand(inputs: Sequence[Path]) -> Iterator[Found]:
    """Files as given; folders walked recursively. A folder's files without an image suffix are
    reported as skipped, never silently dropped."""
    for item in inputs:
        if item.is_dir():
            for path in sorted(item.rglob("*")):
                if not path.is_file():
                    continue
                if path.suffix.lower() in IMAGE_SUFFIXES:
                    yield Found(path, True)
                else:
                    yield Found(path, True, f"not an image suffix ({path.suffix or 'none'})")
        else:
            yield Found(item, False)


def read_image_file(path: Path, max_bytes: int) -> bytes:
    """A local image file's bytes.

    Raises:
        ImageTooLargeError: larger than ``max_bytes``.
        ImageFetchError: missing or unreadable (code ``unreadable``).
    """
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise ImageTooLargeError(f"{size} bytes exceeds the {max_bytes}-byte limit")
        return path.read_bytes()
    except OSError as exc:
        raise ImageFetchError(
            f"cannot read file: {exc.strerror or exc}", code="unreadable"
        ) from exc


@contextmanager
def progress(what: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr when it is a terminal; yields ``advance(n)``."""
    with Progress(
        TextColumn(what),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        disable=not sys.stderr.isatty(),
        transient=True,
    ) as bar:
        task = bar.add_task(what, total=total)
        yield lambda n: bar.advance(task, n)


@contextmanager
def progress_later(what: str) -> Iterator[tuple[Callable[[int], None], Callable[[int], None]]]:
    """A progress bar whose total is known only once the work is planned; yields
    ``(set_total(n), advance(n))``."""
    with Progress(
        TextColumn(what),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        disable=not sys.stderr.isatty(),
        transient=True,
    ) as bar:
        task = bar.add_task(what, total=None)
        yield (lambda n: bar.update(task, total=n)), (lambda n: bar.advance(task, n))
