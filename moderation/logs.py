"""Log records that cannot be forged: one record is one line, whatever its arguments carry.

Log messages interpolate client-provided strings (job ids, URLs, file names, exception messages
that quote them). A CR or LF in such a string would start what looks like a new log record
("log forging"), and other control characters can rewrite a terminal. :class:`EscapingFormatter`
escapes them where the record is rendered, so every call site is covered: in the message, C0
and C1 control characters, DEL and the Unicode line and paragraph separators become ``\\r``,
``\\n``, ``\\t``, ``\\x1b``, ``\\u2028``...; in a traceback, the lines of the traceback itself stay
lines, while each exception's own message is escaped the same way.

:func:`configure_logging` installs it on the root logger of every process the CLI starts (API,
worker, demo, tools).
"""

from __future__ import annotations

import logging
import re
import traceback

__all__ = ["FORMAT", "EscapingFormatter", "configure_logging", "escape_controls"]

#: The line format of every process.
FORMAT = "%(levelname)s %(name)s: %(message)s"

_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u0085]")
_NAMED = {"\r": "\\r", "\n": "\\n", "\t": "\\t"}


def escape_controls(text: str) -> str:
    """``text`` with every control character (and U+2028/U+2029) written as an escape."""

    def escaped(match: re.Match[str]) -> str:
        char = match.group()
        return _NAMED.get(char) or (
            f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"
        )

    return _CONTROLS.sub(escaped, text)


def _exception_lines(exc: BaseException, seen: set[int]) -> list[str]:
    """The traceback of ``exc`` (and the exceptions it was raised from), with each exception's
    own message escaped."""
    seen.add(id(exc))
    lines: list[str] = []
    cause, context = exc.__cause__, exc.__context__
    if cause is not None and id(cause) not in seen:
        lines += _exception_lines(cause, seen)
        lines += ["", "The above exception was the direct cause of the following exception:", ""]
    elif context is not None and not exc.__suppress_context__ and id(context) not in seen:
        lines += _exception_lines(context, seen)
        lines += ["", "During handling of the above exception, another exception occurred:", ""]
    if exc.__traceback__ is not None:
        lines.append("Traceback (most recent call last):")
        lines += "".join(traceback.format_tb(exc.__traceback__)).rstrip("\n").split("\n")
    only = "".join(traceback.format_exception_only(type(exc), exc)).rstrip("\n")
    lines.append(escape_controls(only))
    return lines


class EscapingFormatter(logging.Formatter):
    """A :class:`logging.Formatter` whose records are one line each (see the module
    docstring); tracebacks keep their own line structure."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        record.message = escape_controls(record.message)
        return super().formatMessage(record)

    def formatException(self, ei: object) -> str:  # noqa: N802 (logging's name)
        exc = ei[1] if isinstance(ei, tuple) and len(ei) == 3 else None
        if not isinstance(exc, BaseException):
            return super().formatException(ei)  # type: ignore[arg-type]
        return "\n".join(_exception_lines(exc, set()))

    def formatStack(self, stack_info: str) -> str:  # noqa: N802 (logging's name)
        return stack_info  # the code's own frames: no client text


def configure_logging(level: str | int) -> None:
    """Log to stderr at ``level`` through :class:`EscapingFormatter` (once per process: a root
    logger that already has handlers is left alone, as :func:`logging.basicConfig` does)."""
    handler = logging.StreamHandler()
    handler.setFormatter(EscapingFormatter(FORMAT))
    logging.basicConfig(level=level, handlers=[handler])
