"""Bank files in the formats of the ThreatExchange ecosystem: read (strictly, every problem as
``file:line: column: message``) and write.

Formats (CSV, or TSV when the first line has a tab; detected from the first line)::

    te     ThreatExchange descriptors, as ``threatexchange api fb_threatexchange query`` writes
           them: a header naming at least ``indicator``; also read: ``type`` (must be
           HASH_PDQ), ``id`` (-> reference id), ``tags`` (-> label), ``added_on``, ``status``
           (NON_MALICIOUS is refused), ``owner_id`` (-> source), and this project's ``label``,
           ``source``, ``quality``. Other columns are ignored.
    tx     ``threatexchange dataset -P --csv``: signal_type,signal_str,collab,category,tags
           (signal type ``pdq``; category NEGATIVE_CLASS is refused; collab -> source).
    hma    HMA's serialization of fetched hashes (``threatexchange.cli.dataset.
           simple_serialization.HMASerialization``), no header:
           indicator,indicator_id,first_descriptor_id,added_on,labels
    lines  one hash per line, optionally prefixed by its signal type (``pdq <hash>``), as
           ThreatExchange's local-file exchange reads them; ``#`` starts a comment.

A file is read whole and validated before anything is written: one bad row refuses the file.
Hashes repeated within a file are kept once. A row the CSV reader cannot read (a cell longer than
the csv module's field limit, 128 Ki characters; a stray NUL) refuses the file with its line
and row number.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum

from pydantic import TypeAdapter, ValidationError

from moderation.core.banks import EntryData
from moderation.exceptions import BankFileError, InvalidHashError, PolicyIssue
from moderation.signals.hash_bank import parse_pdq

__all__ = [
    "BankFormat",
    "EntryDefaults",
    "ParsedBankFile",
    "data_rows",
    "parse_bank_text",
    "write_bank_file",
]

MAX_FILE_ERRORS = 1000


class BankFormat(str, Enum):
    TE = "te"
    TX = "tx"
    HMA = "hma"
    LINES = "lines"


@dataclass(frozen=True, slots=True)
class EntryDefaults:
    """Metadata for rows that do not carry their own."""

    source: str = ""
    label: str = ""
    added_at: datetime | None = None


@dataclass
class ParsedBankFile:
    format: BankFormat
    entries: list[EntryData] = field(default_factory=list)
    #: Rows whose hash appeared earlier in the same file.
    duplicates: int = 0


_DATETIME = TypeAdapter(datetime)
_PDQ_TYPES = {"hash_pdq", "pdq"}


class _Reader:
    def __init__(
        self, source: str, defaults: EntryDefaults, progress: Callable[[int], object] | None
    ) -> None:
        self.source = source
        self.defaults = defaults
        self.progress = progress
        self.rows = 0
        self.now = defaults.added_at or datetime.now(UTC)
        self.issues: list[PolicyIssue] = []
        self.parsed: ParsedBankFile | None = None
        self._seen: set[str] = set()

    def issue(self, line: int, column: str, message: str) -> None:
        self.issues.append(
            PolicyIssue(source=self.source, line=line, field=column, message=message)
        )

    def add(
        self,
        line: int,
        *,
        pdq: str,
        column: str,
        source: str = "",
        label: str = "",
        added: str = "",
        reference_id: str = "",
        quality: str = "",
    ) -> None:
        assert self.parsed is not None
        self.rows += 1
        if self.progress is not None and self.rows % 10_000 == 0:
            self.progress(10_000)
        errors = len(self.issues)
        try:
            value = parse_pdq(pdq)
        except InvalidHashError as exc:
            self.issue(line, column, str(exc))
            value = ""
        when = self.now
        if added.strip():
            try:
                when = _DATETIME.validate_python(added.strip())
            except ValidationError:
                self.issue(line, "added_on", f"not a date or time: {added.strip()!r}")
            else:
                when = when if when.tzinfo else when.replace(tzinfo=UTC)
        q: int | None = None
        if quality.strip():
            if not quality.strip().isdigit() or not 0 <= int(quality) <= 100:
                self.issue(line, "quality", f"must be an integer 0-100, got {quality.strip()!r}")
            else:
                q = int(quality)
        if len(self.issues) > errors:
            return
        if value in self._seen:
            self.parsed.duplicates += 1
            return
        self._seen.add(value)
        try:
            entry = EntryData(
                pdq=value,
                source=source.strip() or self.defaults.source,
                label=label.strip() or self.defaults.label,
                added_at=when,
                reference_id=reference_id.strip() or None,
                quality=q,
            )
        except ValidationError as exc:
            for error in exc.errors():
                self.issue(line, ".".join(str(p) for p in error["loc"]), str(error["msg"]))
            return
        self.parsed.entries.append(entry)


def _delimiter(first: str) -> str:
    return "\t" if "\t" in first else ","


def _detect(cells: list[str]) -> BankFormat | None:
    lowered = [c.strip().lower() for c in cells]
    if "indicator" in lowered:
        return BankFormat.TE
    if "signal_str" in lowered:
        return BankFormat.TX
    if len(cells) == 1:
        return BankFormat.LINES
    head = lowered[0]
    if len(head) == 64 and all(c in "0123456789abcdef" for c in head):
        return BankFormat.HMA
    return None


def data_rows(text: str) -> int:
    """How many rows of entries a bank file has (for progress bars): non-empty lines, less the
    header of the formats that have one."""
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    if not lines:
        return 0
    try:
        first = next(csv.reader([lines[0]], delimiter=_delimiter(lines[0])))
    except csv.Error:
        return len(lines)  # parse_bank_text says what is wrong
    return len(lines) - (_detect(first) in (BankFormat.TE, BankFormat.TX))


def _csv_problem(exc: csv.Error, row: int) -> str:
    if "field larger than field limit" in str(exc):
        return f"row {row}: a cell is longer than {csv.field_size_limit()} characters"
    return f"row {row}: not readable as CSV ({exc})"


def _csv_rows(reader: _Reader, text: str, delimiter: str) -> Iterator[tuple[int, list[str]]]:
    """(row number, cells) of each CSV row. A row the csv module cannot read becomes an issue
    naming its line and row, and ends the file (the reader cannot resynchronise)."""
    rows = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    number = 0
    while True:
        number += 1
        try:
            row = next(rows)
        except StopIteration:
            return
        except csv.Error as exc:
            reader.issue(rows.line_num, "", _csv_problem(exc, number))
            return
        yield number, row


def parse_bank_text(
    text: str,
    *,
    source: str = "<string>",
    fmt: BankFormat | None = None,
    defaults: EntryDefaults | None = None,
    progress: Callable[[int], object] | None = None,
) -> ParsedBankFile:
    """Every entry of a bank file, validated.

    Args:
        text: the file's text.
        source: the file name used in messages.
        fmt: the format (default: detected from the first line).
        defaults: metadata for rows without their own.
        progress: called with the number of rows read, every 10,000 rows.

    Raises:
        BankFileError: with every problem found (up to 1,000), each as ``file:line: column:
            message``; nothing should be imported.
    """
    reader = _Reader(source, defaults or EntryDefaults(), progress)
    lines = text.splitlines()
    first_index = next(
        (i for i, line in enumerate(lines) if line.strip() and not line.startswith("#")), None
    )
    if first_index is None:
        raise BankFileError([PolicyIssue(source=source, line=1, field="", message="empty file")])
    delimiter = _delimiter(lines[first_index])
    try:
        first_cells = next(csv.reader([lines[first_index]], delimiter=delimiter))
    except csv.Error as exc:
        raise BankFileError(
            [
                PolicyIssue(
                    source=source,
                    line=first_index + 1,
                    field="",
                    message=_csv_problem(exc, first_index + 1),
                )
            ]
        ) from exc
    detected = fmt or _detect(first_cells)
    if detected is None:
        raise BankFileError(
            [
                PolicyIssue(
                    source=source,
                    line=first_index + 1,
                    field="",
                    message="unrecognised bank file: expected a ThreatExchange CSV header "
                    "(indicator,...), a threatexchange dataset header (signal_type,signal_str"
                    ",...), HMA rows (hash,indicator_id,...) or one PDQ hash per line",
                )
            ]
        )
    reader.parsed = ParsedBankFile(format=detected)
    if detected is BankFormat.LINES:
        _read_lines(reader, lines)
    else:
        rows = _csv_rows(reader, text, delimiter)
        if detected is BankFormat.HMA:
            _read_hma(reader, rows)
        else:
            _read_with_header(reader, rows, detected)
    if reader.issues:
        raise BankFileError(reader.issues[:MAX_FILE_ERRORS])
    return reader.parsed


def _read_lines(reader: _Reader, lines: list[str]) -> None:
    for number, raw in enumerate(lines, start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        kind, _, rest = line.partition(" ")
        if rest:
            if kind.lower() not in _PDQ_TYPES:
                reader.issue(number, "signal_type", f"{kind!r} is not a PDQ hash type")
                continue
            line = rest.strip()
        reader.add(number, pdq=line, column="hash")
        if len(reader.issues) >= MAX_FILE_ERRORS:
            return


def _read_hma(reader: _Reader, rows: Iterable[tuple[int, list[str]]]) -> None:
    for number, row in rows:
        if not any(c.strip() for c in row):
            continue
        if len(row) < 2 or len(row) > 5:
            reader.issue(
                number,
                "",
                f"{len(row)} columns; HMA rows are indicator,indicator_id,first_descriptor_id,"
                "added_on,labels",
            )
            continue
        cells = [*row, "", "", ""][:5]
        reader.add(
            number,
            pdq=cells[0],
            column="indicator",
            reference_id=cells[1],
            added=cells[3],
            label=cells[4],
        )
        if len(reader.issues) >= MAX_FILE_ERRORS:
            return


def _read_with_header(
    reader: _Reader, rows: Iterator[tuple[int, list[str]]], fmt: BankFormat
) -> None:
    header: list[str] | None = None
    for number, row in rows:
        if not any(c.strip() for c in row):
            continue
        if header is None:
            header = [c.strip().lower() for c in row]
            if len(set(header)) != len(header):
                reader.issue(number, "", "a column is named twice in the header")
                return
            continue
        if len(row) != len(header):
            reader.issue(number, "", f"{len(row)} columns, the header has {len(header)}")
            continue
        cell = dict(zip(header, row, strict=True))
        if fmt is BankFormat.TE:
            _te_row(reader, number, cell)
        else:
            _tx_row(reader, number, cell)
        if len(reader.issues) >= MAX_FILE_ERRORS:
            return


def _te_row(reader: _Reader, number: int, cell: dict[str, str]) -> None:
    kind = cell.get("type", "").strip()
    if kind and kind.lower() not in _PDQ_TYPES:
        reader.issue(number, "type", f"{kind!r} is not HASH_PDQ")
        return
    if cell.get("status", "").strip().upper() == "NON_MALICIOUS":
        reader.issue(number, "status", "NON_MALICIOUS: not a known-bad hash (filter it out)")
        return
    owner = cell.get("owner_id", "").strip()
    reader.add(
        number,
        pdq=cell.get("indicator", ""),
        column="indicator",
        source=cell.get("source", "") or (f"threatexchange:{owner}" if owner else ""),
        label=cell.get("label", "") or cell.get("tags", ""),
        added=cell.get("added_on", ""),
        reference_id=cell.get("id", ""),
        quality=cell.get("quality", ""),
    )


def _tx_row(reader: _Reader, number: int, cell: dict[str, str]) -> None:
    kind = cell.get("signal_type", "pdq").strip()
    if kind.lower() not in _PDQ_TYPES:
        reader.issue(number, "signal_type", f"{kind!r} is not pdq")
        return
    if cell.get("category", "").strip().upper() == "NEGATIVE_CLASS":
        reader.issue(number, "category", "NEGATIVE_CLASS: not a known-bad hash (filter it out)")
        return
    reader.add(
        number,
        pdq=cell.get("signal_str", ""),
        column="signal_str",
        source=cell.get("collab", ""),
        label=cell.get("tags", ""),
    )


_TE_COLUMNS = ["id", "indicator", "type", "status", "tags", "added_on", "source", "quality"]
_TX_COLUMNS = ["signal_type", "signal_str", "collab", "category", "tags"]


def write_bank_file(
    entries: Iterable[EntryData], fmt: BankFormat = BankFormat.TE, *, delimiter: str = ","
) -> Iterator[str]:
    """The text of a bank file, chunk by chunk (a header first where the format has one)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter, lineterminator="\n")

    def flush() -> str:
        text = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        return text

    if fmt is BankFormat.TE:
        writer.writerow(_TE_COLUMNS)
    elif fmt is BankFormat.TX:
        writer.writerow(_TX_COLUMNS)
    for count, e in enumerate(entries, start=1):
        added = e.added_at.isoformat()
        if fmt is BankFormat.TE:
            quality = "" if e.quality is None else str(e.quality)
            reference = e.reference_id or ""
            writer.writerow(
                [reference, e.pdq, "HASH_PDQ", "MALICIOUS", e.label, added, e.source, quality]
            )
        elif fmt is BankFormat.TX:
            writer.writerow(["pdq", e.pdq, e.source, "POSITIVE_CLASS", e.label])
        elif fmt is BankFormat.HMA:
            writer.writerow([e.pdq, e.reference_id or "", 0, added, e.label])
        else:
            buffer.write(f"pdq {e.pdq}\n")
        if count % 10_000 == 0:
            yield flush()
    yield flush()
