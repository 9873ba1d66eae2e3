"""``moderation bank``: hash banks of known-bad images (PDQ), in Redis.

::

    moderation bank create NAME [--description TEXT]
    moderation bank import NAME FILE [--format te|tx|hma|lines] [--source S] [--label L]
    moderation bank add NAME IMAGE... | --hash HEX... [--label L] [--source S] [--reference-id R]
    moderation bank remove NAME [ENTRY_ID...] [--hash HEX...]
    moderation bank list [NAME] [--limit N]
    moderation bank export NAME [--format te|tx|hma|lines] [--tsv] [--out FILE]
    moderation bank match IMAGE... [--bank NAME...] [--max-distance 31] [--json]   (exit 0: a match)
    moderation bank delete NAME --yes
    moderation bank sync [NAME...] [--every | --interval SECONDS]   (banks.exchanges: NCMEC, TE, ..)
    moderation bank hash-video VIDEO [--format text|signal]          (a video's vPDQ hash)
    moderation bank import-video NAME FILE --video KEY [--format text|signal] [--label L] ...
    moderation bank export-video NAME KEY [--format text|signal]
    moderation bank remove-video NAME KEY

Video banks hold vPDQ hashes (ThreatExchange's formats: the reference ``vpdq``'s per-video text,
``frame_number,quality,hash,timestamp`` per line, or ``VPDQSignal``'s JSON signal string); a
policy matches them with ``bank: {name: ..., vpdq: {query_share: 80, indexed_share: 0}}``.

Workers pick every change up within ``banks.reload_s`` seconds, without a restart.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Column, Table

from moderation.cli.common import err, fail, load_settings, out, read_image_file
from moderation.core.banks import EntryData
from moderation.exceptions import BankError, ModerationError
from moderation.settings import Settings

if TYPE_CHECKING:
    from moderation.pipeline.banks import BankService
    from moderation.pipeline.video_banks import VpdqFormat

__all__ = ["bank_app"]

bank_app = typer.Typer(no_args_is_help=True, help="Hash banks of known-bad images (PDQ).")

FORMATS = ["te", "tx", "hma", "lines"]


def _service(settings: Settings) -> BankService:
    from moderation.compose.banks import build_banks
    from moderation.compose.stores import command_database, open_bank_store

    if not settings.redis_url and settings.database.url is None:
        raise fail(
            BankError(
                "set MODERATION_DATABASE__URL (or MODERATION_REDIS_URL) to where the banks live"
            )
        )
    try:
        database = command_database(settings)
    except ModerationError as exc:
        raise fail(exc) from exc
    return build_banks(settings, open_bank_store(settings, database=database))


@bank_app.command()
def sync(
    names: Annotated[
        list[str] | None, typer.Argument(help="Synced banks (banks.exchanges); default: all.")
    ] = None,
    every: Annotated[
        bool,
        typer.Option(help="Keep syncing, each bank every banks.exchanges.<name>.interval_s."),
    ] = False,
    interval: Annotated[
        float | None,
        typer.Option(
            metavar="SECONDS",
            help="Keep syncing every SECONDS (> 0) instead of each bank's interval_s"
            " (implies --every).",
        ),
    ] = None,
) -> None:
    """Fetch synced banks' updates from their exchanges (incremental, from the checkpoint in
    PostgreSQL; one syncer per bank at a time)."""
    import time

    from moderation.adapters.exchanges import open_exchange_feed
    from moderation.compose.banks import open_exchange_sync
    from moderation.compose.stores import command_database
    from moderation.exceptions import ExchangeBusy, TransientError

    if interval is not None and not (interval > 0 and interval != float("inf")):
        raise fail(BankError(f"--interval must be a number of seconds > 0, not {interval}"), 2)
    every = every or interval is not None
    settings = load_settings()
    configured = settings.banks.exchanges
    chosen = names or sorted(configured)
    unknown = [n for n in chosen if n not in configured]
    if unknown or not chosen:
        raise fail(BankError(f"not in banks.exchanges: {', '.join(unknown) or '(none set)'}"), 2)
    try:
        database = command_database(settings)
    except ModerationError as exc:
        raise fail(exc) from exc
    if database is None:
        raise fail(BankError("exchange sync keeps its checkpoints in PostgreSQL: set database.url"))
    syncer = open_exchange_sync(database, _service(settings))
    due = dict.fromkeys(chosen, 0.0)
    failed = False
    while True:
        for name in chosen:
            if time.monotonic() < due[name]:
                continue
            conf = configured[name]
            period = conf.interval_s if interval is None else interval
            due[name] = time.monotonic() + period
            try:
                report = syncer.sync(name, open_exchange_feed(name, conf), bank=conf.bank or None)
            except (ExchangeBusy, TransientError) as exc:
                err.print(f"{name}: {exc} (next try in {period:.0f} s)")
                failed = True
                continue
            except ModerationError as exc:
                if not every:
                    raise fail(exc, 1) from exc
                err.print(f"{name}: {exc}")
                failed = True
                continue
            out.print(
                f"{name} -> bank {report.bank}: {report.added} added, {report.removed} removed,"
                f" {report.ignored} ignored (other signal types), {report.batches} batches",
                soft_wrap=True,
            )
        if not every:
            raise typer.Exit(1 if failed else 0)
        time.sleep(max(1.0, min(due.values()) - time.monotonic()))


def _progress(label: str) -> Progress:
    return Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        disable=not sys.stderr.isatty(),
        transient=True,
    )


@bank_app.command()
def create(
    name: Annotated[str, typer.Argument(help="Lower-case letters, digits, _ . -")],
    description: Annotated[str, typer.Option(help="What the bank holds.")] = "",
) -> None:
    """Create an empty bank."""
    try:
        info = _service(load_settings()).create(name, description=description)
    except ModerationError as exc:
        raise fail(exc, 1) from exc
    out.print(f"created bank {info.name}", soft_wrap=True)


@bank_app.command("import")
def import_(
    name: Annotated[str, typer.Argument(help="The bank.")],
    file: Annotated[Path, typer.Argument(help="CSV/TSV of PDQ hashes (see --format).")],
    fmt: Annotated[
        str | None,
        typer.Option("--format", help="te | tx | hma | lines (default: detected)"),
    ] = None,
    source: Annotated[str | None, typer.Option(help="Source of rows without one.")] = None,
    label: Annotated[str, typer.Option(help="Label of rows without one.")] = "",
) -> None:
    """Import a bank file, all or nothing (problems as file:line); duplicates skipped."""
    from moderation.pipeline.bank_files import BankFormat, EntryDefaults, data_rows

    if fmt is not None and fmt not in FORMATS:
        raise fail(BankError(f"--format must be one of {', '.join(FORMATS)}"), 2)
    try:
        text = file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise fail(BankError(f"cannot read {file}: {exc}"), 1) from exc
    service = _service(load_settings())
    rows = data_rows(text)
    try:
        with _progress("{task.description}") as bar:
            checking = bar.add_task("checking rows", total=rows)
            writing = bar.add_task(f"importing into {name}", total=rows, start=False)

            def written(n: int) -> None:
                bar.update(checking, completed=rows)
                bar.start_task(writing)
                bar.advance(writing, n)

            report = service.import_text(
                name,
                text,
                source=str(file),
                fmt=BankFormat(fmt) if fmt else None,
                defaults=EntryDefaults(source=source or f"file:{file.name}", label=label),
                progress=written,
                checked=lambda n: bar.advance(checking, n),
            )
    except ModerationError as exc:
        raise fail(exc, 1) from exc
    out.print(
        f"{report.bank}: {report.added} added, {report.already_in_bank} already in the bank, "
        f"{report.duplicates_in_file} repeated in the file ({report.rows} rows, format "
        f"{report.format.value})",
        soft_wrap=True,
    )


@bank_app.command()
def add(
    name: Annotated[str, typer.Argument(help="The bank.")],
    images: Annotated[list[Path] | None, typer.Argument(help="Image files to hash.")] = None,
    hashes: Annotated[
        list[str] | None, typer.Option("--hash", help="A PDQ hash (64 hex digits).")
    ] = None,
    label: Annotated[str, typer.Option(help="What the content is.")] = "",
    source: Annotated[str, typer.Option(help="Where it came from.")] = "cli",
    reference_id: Annotated[str | None, typer.Option(help="Its id in the source.")] = None,
) -> None:
    """Add images (hashed as workers hash them) or hashes to a bank."""
    from moderation.adapters.images import SafeDecoder
    from moderation.pipeline.banks import image_feature
    from moderation.signals.hash_bank import QUALITY_THRESHOLD, parse_pdq

    settings = load_settings()
    service = _service(settings)
    entries: list[tuple[str, EntryData]] = []
    try:
        for value in hashes or []:
            entries.append(
                (
                    value,
                    EntryData(
                        pdq=parse_pdq(value),
                        source=source,
                        label=label,
                        reference_id=reference_id,
                    ),
                )
            )
        decoder = SafeDecoder(settings.images)
        for path in images or []:
            feature = image_feature(decoder, read_image_file(path, settings.images.max_bytes))
            if feature.quality < QUALITY_THRESHOLD:
                raise BankError(
                    f"{path}: PDQ quality {feature.quality} is below {QUALITY_THRESHOLD} (a flat "
                    "or featureless image): its hash would match unrelated images"
                )
            entries.append(
                (
                    str(path),
                    EntryData(
                        pdq=feature.hex,
                        source=source,
                        label=label,
                        reference_id=reference_id,
                        quality=feature.quality,
                    ),
                )
            )
        if not entries:
            raise BankError("give image files or --hash values")
        report = service.add(name, [e for _, e in entries])
    except ModerationError as exc:
        raise fail(exc, 1) from exc
    for (what, entry), entry_id, new in zip(entries, report.ids, report.new, strict=True):
        state = "added" if new else "already in the bank"
        out.print(
            f"{name} #{entry_id}: {entry.pdq}  {what}  ({state})", highlight=False, soft_wrap=True
        )


@bank_app.command()
def remove(
    name: Annotated[str, typer.Argument(help="The bank.")],
    ids: Annotated[list[int] | None, typer.Argument(help="Entry ids.")] = None,
    hashes: Annotated[list[str] | None, typer.Option("--hash", help="Remove by hash.")] = None,
) -> None:
    """Remove entries (by id or hash). Workers stop matching them within seconds."""
    try:
        removed = _service(load_settings()).remove(name, ids=ids or [], hashes=hashes or [])
    except ModerationError as exc:
        raise fail(exc, 1) from exc
    out.print(f"{name}: {removed} entries removed", soft_wrap=True)
    raise typer.Exit(0 if removed else 1)


@bank_app.command("list")
def list_(
    name: Annotated[str | None, typer.Argument(help="A bank: list its entries.")] = None,
    limit: Annotated[int, typer.Option(help="Entries shown.")] = 50,
) -> None:
    """Banks with their sizes, or the entries of one bank."""
    service = _service(load_settings())
    try:
        if name is None:
            table = Table("bank", "entries", "removed", "version", "created", "description")
            for info in service.banks():
                table.add_row(
                    info.name,
                    str(info.entries),
                    str(info.removed),
                    str(info.version),
                    info.created_at.strftime("%Y-%m-%d %H:%M"),
                    info.description,
                )
            out.print(table)
            return
        info = service.info(name)
        table = Table(
            "id",
            Column("pdq", no_wrap=True, min_width=64),
            "label",
            "source",
            "added",
            "reference",
            "quality",
        )
        for count, entry in enumerate(service.entries(name)):
            if count >= limit:
                break
            table.add_row(
                str(entry.id),
                entry.pdq,
                entry.label,
                entry.source,
                entry.added_at.strftime("%Y-%m-%d"),
                entry.reference_id or "",
                "" if entry.quality is None else str(entry.quality),
            )
        out.print(table)
        out.print(f"{info.entries} entries in {name} (showing up to {limit})", soft_wrap=True)
    except ModerationError as exc:
        raise fail(exc, 1) from exc


@bank_app.command()
def export(
    name: Annotated[str, typer.Argument(help="The bank.")],
    fmt: Annotated[str, typer.Option("--format", help="te | tx | hma | lines")] = "te",
    tsv: Annotated[bool, typer.Option("--tsv", help="Tab-separated.")] = False,
    out_path: Annotated[Path | None, typer.Option("--out", help="File (default stdout).")] = None,
) -> None:
    """Export a bank's live entries in a ThreatExchange / HMA format."""
    from moderation.pipeline.bank_files import BankFormat

    if fmt not in FORMATS:
        raise fail(BankError(f"--format must be one of {', '.join(FORMATS)}"), 2)
    try:
        chunks = _service(load_settings()).export(
            name, BankFormat(fmt), delimiter="\t" if tsv else ","
        )
        if out_path is None:
            for chunk in chunks:
                sys.stdout.write(chunk)
        else:
            with out_path.open("w", encoding="utf-8", newline="") as handle:
                for chunk in chunks:
                    handle.write(chunk)
    except ModerationError as exc:
        raise fail(exc, 1) from exc


@bank_app.command()
def match(
    images: Annotated[list[Path], typer.Argument(help="Image files.")],
    banks: Annotated[list[str] | None, typer.Option("--bank", help="Only these banks.")] = None,
    max_distance: Annotated[int, typer.Option(help="Largest Hamming distance.")] = 31,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per image.")] = False,
) -> None:
    """The bank entries each image matches; exit status 0 if one did, 1 if none (like grep).

    Images are hashed exactly as workers hash them."""
    from moderation.adapters.images import SafeDecoder
    from moderation.pipeline.banks import image_feature
    from moderation.signals import LoadedBanks
    from moderation.signals.hash_bank import QUALITY_THRESHOLD

    settings = load_settings()
    service = _service(settings)
    decoder = SafeDecoder(settings.images)
    loaded = LoadedBanks()
    any_match = False
    try:
        from moderation.pipeline.bank_index import load_index

        for bank in banks or [b.name for b in service.banks()]:
            loaded.put(load_index(service.store, bank, flat_max=service.flat_max))
        for path in images:
            feature = image_feature(decoder, read_image_file(path, settings.images.max_bytes))
            hits = service.match(feature, loaded.names(), max_distance=max_distance, loaded=loaded)
            any_match |= bool(hits)
            row = {
                "path": str(path),
                "pdq": feature.hex,
                "quality": feature.quality,
                "matches": [
                    {
                        "bank": h.bank,
                        "entry_id": h.entry.id,
                        "distance": h.distance,
                        "label": h.entry.label,
                        "source": h.entry.source,
                        "added_at": h.entry.added_at.isoformat(),
                        "reference_id": h.entry.reference_id,
                        "variant": h.variant,
                    }
                    for h in hits
                ],
            }
            if as_json:
                print(json.dumps(row), flush=True)
                continue
            low = feature.quality < QUALITY_THRESHOLD
            out.print(
                f"{path}: PDQ {feature.hex} quality {feature.quality}"
                + (" (too low to match)" if low else ""),
                highlight=False,
                soft_wrap=True,
            )
            for h in hits:
                out.print(
                    f"  {h.bank} #{h.entry.id} distance {h.distance}: {h.entry.label or '-'} "
                    f"(source {h.entry.source or '-'}, added {h.entry.added_at:%Y-%m-%d}"
                    + (f", ref {h.entry.reference_id}" if h.entry.reference_id else "")
                    + ")",
                    highlight=False,
                    soft_wrap=True,
                )
            if not hits and not low:
                out.print("  no match", highlight=False)
    except ModerationError as exc:
        raise fail(exc, 1) from exc
    raise typer.Exit(0 if any_match else 1)


@bank_app.command()
def delete(
    name: Annotated[str, typer.Argument(help="The bank.")],
    yes: Annotated[bool, typer.Option("--yes", help="Really delete it.")] = False,
) -> None:
    """Delete a bank and every entry in it."""
    if not yes:
        raise fail(BankError("deleting a bank cannot be undone: add --yes"), 2)
    try:
        deleted = _service(load_settings()).delete(name)
    except ModerationError as exc:
        raise fail(exc, 1) from exc
    out.print(f"deleted bank {name}" if deleted else f"no bank {name}", soft_wrap=True)
    raise typer.Exit(0 if deleted else 1)


VPDQ_FORMATS = ["text", "signal"]


def _vpdq_format(fmt: str | None) -> VpdqFormat | None:
    from moderation.pipeline.video_banks import VpdqFormat

    if fmt is None:
        return None
    if fmt not in VPDQ_FORMATS:
        raise fail(BankError(f"--format must be one of {', '.join(VPDQ_FORMATS)}"), 2)
    return VpdqFormat(fmt)


@bank_app.command("hash-video")
def hash_video_(
    video: Annotated[Path, typer.Argument(help="A video (MP4/MOV, Matroska/WebM) or animation.")],
    fmt: Annotated[str, typer.Option("--format", help="text | signal")] = "text",
) -> None:
    """Print a video's vPDQ hash (one PDQ hash per sampled frame), hashed as uploads are."""
    from moderation.compose.registries import media_decoder
    from moderation.core.vpdq import format_signal, format_text
    from moderation.pipeline.video_banks import VpdqFormat, hash_video

    wanted = _vpdq_format(fmt)
    try:
        frames = hash_video(media_decoder(load_settings()), video.read_bytes())
    except OSError as exc:
        raise fail(BankError(f"cannot read {video}: {exc}"), 1) from exc
    except ModerationError as exc:
        raise fail(exc, 1) from exc
    text = format_signal(frames) + "\n" if wanted is VpdqFormat.SIGNAL else format_text(frames)
    sys.stdout.write(text)


@bank_app.command("import-video")
def import_video_(
    name: Annotated[str, typer.Argument(help="The video bank.")],
    file: Annotated[Path, typer.Argument(help="The video's vPDQ hash (text or signal string).")],
    video: Annotated[str, typer.Option(help="The video's key in the bank.")],
    fmt: Annotated[
        str | None, typer.Option("--format", help="text | signal (default: detected)")
    ] = None,
    label: Annotated[str, typer.Option(help="What it is.")] = "",
    source: Annotated[str | None, typer.Option(help="Where it came from.")] = None,
    reference_id: Annotated[str | None, typer.Option(help="Its id at the source.")] = None,
) -> None:
    """Bank one video's vPDQ hash (all its frames, or nothing)."""
    from moderation.pipeline.video_banks import import_video, parse_vpdq

    wanted = _vpdq_format(fmt)
    try:
        text = file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise fail(BankError(f"cannot read {file}: {exc}"), 1) from exc
    try:
        frames = parse_vpdq(text, wanted, source=str(file))
        report = import_video(
            _service(load_settings()).store,
            name,
            frames,
            video=video,
            source=source or f"file:{file.name}",
            label=label,
            reference_id=reference_id,
        )
    except ModerationError as exc:
        raise fail(exc, 1) from exc
    out.print(
        f"{report.bank}: video {report.video} banked, {report.frames} frames"
        f" ({report.matching_frames} of quality 50 or more, each hash once, match)",
        soft_wrap=True,
    )


@bank_app.command("export-video")
def export_video_(
    name: Annotated[str, typer.Argument(help="The video bank.")],
    video: Annotated[str, typer.Argument(help="The video's key.")],
    fmt: Annotated[str, typer.Option("--format", help="text | signal")] = "text",
) -> None:
    """Print a banked video's vPDQ hash."""
    from moderation.pipeline.video_banks import VpdqFormat, export_video

    wanted = _vpdq_format(fmt) or VpdqFormat.TEXT
    try:
        text = export_video(_service(load_settings()).store, name, video, wanted)
    except ModerationError as exc:
        raise fail(exc, 1) from exc
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


@bank_app.command("remove-video")
def remove_video_(
    name: Annotated[str, typer.Argument(help="The video bank.")],
    video: Annotated[str, typer.Argument(help="The video's key.")],
) -> None:
    """Remove a banked video (all its frames). Workers stop matching it within seconds."""
    from moderation.pipeline.video_banks import remove_video

    try:
        removed = remove_video(_service(load_settings()).store, name, video)
    except ModerationError as exc:
        raise fail(exc, 1) from exc
    out.print(f"{name}: video {video} removed ({removed} frames)", soft_wrap=True)
    raise typer.Exit(0 if removed else 1)
