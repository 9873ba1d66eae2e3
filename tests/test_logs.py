"""Log forging: a client string with CR/LF (or other control characters) never starts a new log
line, in a message or in an exception's message; tracebacks keep their lines."""

from __future__ import annotations

import logging
import subprocess
import sys

from moderation.logs import FORMAT, EscapingFormatter, escape_controls
from tests.pipeline_support import ROOT

HOSTILE = "inv-1\r\nERROR moderation.api: admin signed in\x1b[2K\u2028x\x85y\x00"


def _record(msg: str, *args: object, exc: BaseException | None = None) -> logging.LogRecord:
    info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    return logging.LogRecord("moderation.test", logging.WARNING, __file__, 1, msg, args, info)


def test_control_characters_are_escaped_visibly() -> None:
    assert escape_controls(HOSTILE) == (
        "inv-1\\r\\nERROR moderation.api: admin signed in\\x1b[2K\\u2028x\\x85y\\x00"
    )
    assert escape_controls("plain text, tabs\tand ünïcödé") == "plain text, tabs\\tand ünïcödé"


def test_a_record_with_a_hostile_argument_is_one_line() -> None:
    text = EscapingFormatter(FORMAT).format(_record("job %s: callback failed", HOSTILE))
    assert "\n" not in text and "\r" not in text and "\x1b" not in text
    assert text.startswith("WARNING moderation.test: job inv-1\\r\\nERROR moderation.api")


def test_a_traceback_keeps_its_lines_but_not_the_exceptions_own() -> None:
    try:
        try:
            raise KeyError(HOSTILE)
        except KeyError as inner:
            raise ValueError(f"bad id {HOSTILE}") from inner
    except ValueError as exc:
        text = EscapingFormatter(FORMAT).format(_record("unexpected error", exc=exc))
    lines = text.split("\n")
    assert lines[0] == "WARNING moderation.test: unexpected error"
    assert lines[1] == "Traceback (most recent call last):"
    assert "The above exception was the direct cause of the following exception:" in lines
    assert lines[-1] == (
        "ValueError: bad id inv-1\\r\\nERROR moderation.api: admin signed in\\x1b[2K\\u2028x"
        "\\x85y\\x00"
    )
    assert not [line for line in lines if line.startswith("ERROR moderation.api")]
    assert sum(line.startswith("  File ") for line in lines) == 2  # both frames shown


def test_every_cli_process_logs_through_the_escaping_formatter() -> None:
    """The processes (API, worker, tools) configure logging in ``load_settings``."""
    code = (
        "import logging\n"
        "from moderation.cli.common import load_settings\n"
        "load_settings()\n"
        f"logging.getLogger('moderation.api').warning('id %s refused', {HOSTILE!r})\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(ROOT), "MODERATION_ENVIRONMENT": "development"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stderr.splitlines()
    assert lines == [
        "WARNING moderation.api: id inv-1\\r\\nERROR moderation.api: admin signed in\\x1b[2K"
        "\\u2028x\\x85y\\x00 refused"
    ]
