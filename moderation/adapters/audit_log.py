"""The audit sink: a durable local spool per writer process, uploaded in order as segments.

::

    write(record) ─► chain (prev_hash) ─► spool file (append, group-commit fsync) ─► returns
                                             │
                        uploader thread ◄────┘  reads from the upload cursor, packs up to
                                                segment_max_records (or what is older than
                                                segment_max_age_s) into one segment, writes the
                                                segment's intent to the cursor, puts it to the
                                                store, then advances the cursor.

Each process owns one chain (``chain_id``), kept in ``{spool_dir}/chain-{chain_id}/`` and held
with an exclusive ``flock``. A process that starts while an unlocked chain folder exists (its
writer exited or crashed) adopts it: it continues that chain and first uploads whatever was
spooled and not yet uploaded. More than one orphan: the others are drained and removed.

Crash safety: ``write`` returns only after the record is fsync'd. The cursor records the next
segment's seq, creation time and byte range *before* it is uploaded, so after a crash the same
segment is rebuilt byte for byte and put to the same key: nothing is lost, and a segment is never
stored twice under two keys. Records may be written twice (a retried task), and are deduplicated
by ``record_id`` when read.

Memory is bounded: the uploader holds one segment at a time and streams the spool from disk, so
an S3 outage only grows the spool folder. Open the sink in the process that uses it (for Celery
prefork workers: in ``worker_process_init``), never before a fork.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from moderation.audit import (
    GENESIS_HASH,
    AuditRecord,
    ChainVerifier,
    SegmentStore,
    VerifyReport,
    decode_segment,
    encode_segment,
    seal,
    segment_key,
)
from moderation.exceptions import AuditError, AuditSinkUnavailable, ModerationError
from moderation.settings import Settings

__all__ = [
    "AuditLog",
    "iter_records",
    "open_audit_sink",
    "open_segment_store",
    "verify_store",
]

log = logging.getLogger(__name__)

_FILE = re.compile(r"records-(\d{8})\.jsonl")
Position = tuple[int, int]  # (spool file index, byte offset)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json_durably(path: Path, value: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as fh:
        json.dump(value, fh)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)
    _fsync_dir(path.parent)


def _new_chain_id() -> str:
    host = re.sub(r"[^A-Za-z0-9.]", "", socket.gethostname())[:40] or "host"
    return f"{host}.{os.getpid()}.{secrets.token_hex(4)}"


@dataclass
class _Cursor:
    """Upload progress of one chain, persisted in ``cursor.json`` after every change."""

    file: int = 0
    offset: int = 0
    next_seq: int = 0
    prev_segment_hash: str = GENESIS_HASH
    last_record_hash: str = GENESIS_HASH
    last_created: str | None = None
    #: The segment being uploaded: {"seq", "created", "end_file", "end_offset"}.
    pending: dict[str, Any] | None = None

    @property
    def position(self) -> Position:
        return (self.file, self.offset)


class _Chain:
    """One chain's spool folder, locked by this process. Not thread-safe on its own for the
    upload side (only the uploader thread calls ``upload_one``); ``append`` is thread-safe."""

    def __init__(self, folder: Path, lock_fd: int, *, file_max_bytes: int) -> None:
        self.folder = folder
        self.chain_id = folder.name.removeprefix("chain-")
        self._lock_fd = lock_fd
        self._file_max_bytes = file_max_bytes
        self._lock = threading.Lock()  # append side
        self._sync = threading.Condition()  # group commit
        self._syncing = False
        self._written = 0  # records appended by this process
        self._synced = 0
        self._retired_fds: list[int] = []
        cursor_path = folder / "cursor.json"
        self.cursor = (
            _Cursor(**json.loads(cursor_path.read_text())) if cursor_path.exists() else _Cursor()
        )
        files = self._files()
        self._file = files[-1] if files else max(self.cursor.file, 0)
        self._last_hash = self._recover_tail(files)
        path = self._path(self._file)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._size = os.fstat(self._fd).st_size
        os.fsync(self._fd)
        self.synced_pos: Position = (self._file, self._size)
        self.oldest_unsent: float | None = None if self.synced_pos <= self.cursor.position else 0.0

    # --- spool files ------------------------------------------------------------------------

    def _path(self, index: int) -> Path:
        return self.folder / f"records-{index:08d}.jsonl"

    def _files(self) -> list[int]:
        return sorted(
            int(m[1]) for p in self.folder.iterdir() if (m := _FILE.fullmatch(p.name)) is not None
        )

    def _recover_tail(self, files: list[int]) -> str:
        """Drop a torn last line (never acknowledged) and return the chain's last record hash."""
        for index in reversed(files):
            path = self._path(index)
            with path.open("rb+") as fh:
                size = fh.seek(0, os.SEEK_END)
                if size == 0:
                    continue
                back = min(size, 1 << 20)
                fh.seek(size - back)
                tail = fh.read(back)
                end = tail.rfind(b"\n")
                if end != len(tail) - 1:
                    log.warning("audit spool %s: dropping a torn last line", path.name)
                    fh.truncate(size - back + end + 1)
                    fh.flush()
                    os.fsync(fh.fileno())
                    tail = tail[: end + 1]
                    if end < 0:
                        continue
                start = tail.rfind(b"\n", 0, len(tail) - 1) + 1
                return hashlib.sha256(tail[start:-1]).hexdigest()
        return self.cursor.last_record_hash

    # --- write side -------------------------------------------------------------------------

    def append(self, record: AuditRecord) -> None:
        with self._lock:
            line, digest = seal(record, self._last_hash)
            data = line + b"\n"
            if self._size and self._size + len(data) > self._file_max_bytes:
                self._rotate()
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
            self._last_hash = digest
            self._size += len(data)
            self._written += 1
            ticket = self._written
            if self.oldest_unsent is None:
                self.oldest_unsent = time.monotonic()
        self._wait_synced(ticket)

    def _rotate(self) -> None:
        """Start the next spool file (caller holds ``_lock``); the old one is fsync'd first."""
        os.fsync(self._fd)
        with self._sync:
            self.synced_pos = max(self.synced_pos, (self._file, self._size))
        self._retired_fds.append(self._fd)
        self._file += 1
        self._fd = os.open(self._path(self._file), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._size = 0
        _fsync_dir(self.folder)

    def _wait_synced(self, ticket: int) -> None:
        """Group commit: one thread fsyncs for every record appended before it started."""
        with self._sync:
            while self._synced < ticket:
                if self._syncing:
                    self._sync.wait()
                    continue
                self._syncing = True
                self._sync.release()
                try:
                    with self._lock:
                        fd, target, pos = self._fd, self._written, (self._file, self._size)
                    os.fsync(fd)  # retired fds stay open until close, so fd is valid
                finally:
                    self._sync.acquire()
                    self._syncing = False
                    self._sync.notify_all()
                self._synced = max(self._synced, target)
                self.synced_pos = max(self.synced_pos, pos)

    def close_files(self) -> None:
        for fd in [*self._retired_fds, self._fd]:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._retired_fds = []

    def release(self) -> None:
        self.close_files()
        with contextlib.suppress(OSError):
            os.close(self._lock_fd)

    # --- upload side ------------------------------------------------------------------------

    def has_unsent(self) -> bool:
        return self.cursor.position < self.synced_pos

    def reset_age_if_drained(self) -> None:
        """Forget the age of the oldest unsent record once everything is uploaded."""
        with self._lock:
            if not self.has_unsent():
                self.oldest_unsent = None

    def read_lines(
        self, start: Position, end: Position | None, limit: int
    ) -> tuple[list[bytes], Position]:
        """Up to ``limit`` record lines from ``start`` (within one spool file), not past ``end``
        (or the synced end when None)."""
        file, offset = start
        bound = end or self.synced_pos
        if (file, offset) >= bound:
            return [], start
        stop = bound[1] if file == bound[0] else None
        lines: list[bytes] = []
        with self._path(file).open("rb") as fh:
            fh.seek(offset)
            while len(lines) < limit and (stop is None or offset < stop):
                line = fh.readline()
                if not line.endswith(b"\n"):
                    break
                lines.append(line[:-1])
                offset += len(line)
        return lines, (file, offset)

    def _normalize(self) -> None:
        """Move the cursor past fully uploaded spool files, deleting them."""
        while self.cursor.file < self.synced_pos[0]:
            path = self._path(self.cursor.file)
            size = path.stat().st_size if path.exists() else 0
            if self.cursor.offset < size:
                return
            self.cursor.file += 1
            self.cursor.offset = 0
            _write_json_durably(self.folder / "cursor.json", self.cursor.__dict__)
            path.unlink(missing_ok=True)

    def upload_one(self, store: SegmentStore, prefix: str, max_records: int) -> bool:
        """Upload the next segment (the pending one first). Returns False if nothing to send.

        Raises:
            AuditSinkUnavailable: the store is unreachable (the cursor stays; retry later).
            AuditError: the store refused the segment.
        """
        self._normalize()
        cursor = self.cursor
        if cursor.pending is None:
            lines, end = self.read_lines(cursor.position, None, max_records)
            if not lines:
                return False
            now = datetime.now(UTC)
            if cursor.last_created is not None:
                now = max(
                    now, datetime.fromisoformat(cursor.last_created) + timedelta(microseconds=1)
                )
            cursor.pending = {
                "seq": cursor.next_seq,
                "created": now.isoformat(),
                "end_file": end[0],
                "end_offset": end[1],
            }
            _write_json_durably(self.folder / "cursor.json", cursor.__dict__)
        else:
            end = (cursor.pending["end_file"], cursor.pending["end_offset"])
            lines, reached = self.read_lines(cursor.position, end, 1 << 62)
            if reached != end:
                raise AuditError(
                    f"audit spool {self.folder} lost data of the pending segment",
                    code="audit_spool",
                )
        created = datetime.fromisoformat(cursor.pending["created"])
        seq = int(cursor.pending["seq"])
        data, seg_hash, header = encode_segment(
            chain_id=self.chain_id,
            seq=seq,
            prev_segment_hash=cursor.prev_segment_hash,
            lines=lines,
            created=created,
        )
        store.put(segment_key(prefix, created, self.chain_id, seq), data, created=created)
        cursor.file, cursor.offset = end
        cursor.next_seq = seq + 1
        cursor.prev_segment_hash = seg_hash
        cursor.last_record_hash = header.last_record_hash
        cursor.last_created = created.isoformat()
        cursor.pending = None
        _write_json_durably(self.folder / "cursor.json", cursor.__dict__)
        self._normalize()
        return True


def _try_lock(folder: Path) -> int | None:
    fd = os.open(folder / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


class AuditLog:
    """The :class:`moderation.ports.AuditSink` of one process: spool, chain and uploader.

    Thread-safe: ``write`` may be called from many threads at once.
    """

    def __init__(
        self,
        store: SegmentStore,
        *,
        spool_dir: Path,
        prefix: str,
        segment_max_records: int = 1000,
        segment_max_age_s: float = 5.0,
        spool_file_max_bytes: int = 64 * 1024 * 1024,
        retry_max_s: float = 30.0,
    ) -> None:
        self.store = store
        self.prefix = prefix
        self._max_records = segment_max_records
        self._max_age_s = segment_max_age_s
        self._retry_max_s = retry_max_s
        self._closed = False
        self._stop = False
        self._flushing = 0
        self._cond = threading.Condition()
        self.last_error: str | None = None
        spool_dir.mkdir(parents=True, exist_ok=True)
        own: _Chain | None = None
        self._orphans: list[_Chain] = []
        for folder in sorted(spool_dir.glob("chain-*")):
            if not folder.is_dir() or (lock_fd := _try_lock(folder)) is None:
                continue
            chain = _Chain(folder, lock_fd, file_max_bytes=spool_file_max_bytes)
            if own is None:
                own = chain
                log.info("audit: continuing chain %s from its spool", chain.chain_id)
            else:
                log.info("audit: draining orphaned chain %s", chain.chain_id)
                self._orphans.append(chain)
        if own is None:
            folder = spool_dir / f"chain-{_new_chain_id()}"
            folder.mkdir()
            _fsync_dir(spool_dir)
            lock_fd = _try_lock(folder)
            if lock_fd is None:
                raise AuditError(f"cannot lock new audit chain {folder}", code="audit_spool")
            own = _Chain(folder, lock_fd, file_max_bytes=spool_file_max_bytes)
            log.info("audit: started chain %s", own.chain_id)
        self._chain = own
        self._thread = threading.Thread(target=self._run, name="audit-uploader", daemon=True)
        self._thread.start()

    @property
    def chain_id(self) -> str:
        return self._chain.chain_id

    def write(self, record: AuditRecord) -> None:
        """Append ``record`` to this process's chain; returns once it is fsync'd in the spool.

        Raises:
            AuditError: the log is closed.
            AuditSinkUnavailable: the spool cannot be written (disk full, I/O error).
        """
        if self._closed:
            raise AuditError("audit log is closed", code="audit_closed")
        try:
            self._chain.append(record)
        except OSError as exc:
            raise AuditSinkUnavailable(f"audit spool write failed: {exc.strerror}") from exc
        with self._cond:
            self._cond.notify_all()

    def backlog(self) -> bool:
        """Whether any spooled record is not uploaded yet."""
        return any(c.has_unsent() for c in [self._chain, *self._orphans])

    def flush(self, timeout: float = 30.0) -> bool:
        """Upload everything spooled so far; True when done within ``timeout`` seconds."""
        targets = [(c, c.synced_pos) for c in [self._chain, *self._orphans]]
        deadline = time.monotonic() + timeout
        with self._cond:
            self._flushing += 1
            self._cond.notify_all()
            try:
                while any(c.cursor.position < pos for c, pos in targets):
                    left = deadline - time.monotonic()
                    if left <= 0 or not self._thread.is_alive():
                        return False
                    self._cond.wait(min(left, 0.5))
                return True
            finally:
                self._flushing -= 1

    def close(self, timeout: float = 10.0) -> bool:
        """Stop accepting records, upload what can be uploaded within ``timeout``, stop the
        uploader and release the chain. Records not uploaded stay in the spool for the next
        process. Returns whether everything was uploaded."""
        if self._closed:
            return not self.backlog()
        self._closed = True
        done = self.flush(timeout)
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(timeout=max(1.0, timeout))
        for chain in [self._chain, *self._orphans]:
            chain.release()
        return done

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- uploader ---------------------------------------------------------------------------

    def _due(self, chain: _Chain) -> bool:
        if not chain.has_unsent():
            return False
        if chain is not self._chain or self._flushing or self._stop:
            return True
        since = chain.oldest_unsent
        if since is None:  # appended after the last drain: its age starts now
            chain.oldest_unsent = since = time.monotonic()
        if time.monotonic() - since >= self._max_age_s:
            return True
        # A full segment is waiting: cheap estimate from the bytes behind the cursor.
        return chain.synced_pos[0] > chain.cursor.file or (
            chain.synced_pos[1] - chain.cursor.offset >= self._max_records * 256
            and self._full_segment_waiting(chain)
        )

    def _full_segment_waiting(self, chain: _Chain) -> bool:
        lines, _ = chain.read_lines(chain.cursor.position, None, self._max_records)
        return len(lines) >= self._max_records

    def _upload_due(self) -> bool:
        """One pass: upload the due segments of every chain. True if anything was uploaded."""
        uploaded = False
        for chain in [self._chain, *self._orphans]:
            while self._due(chain):
                if not chain.upload_one(self.store, self.prefix, self._max_records):
                    break
                uploaded = True
                with self._cond:
                    self._cond.notify_all()
            chain.reset_age_if_drained()
        for chain in [c for c in self._orphans if not c.has_unsent()]:
            self._orphans.remove(chain)
            chain.release()
            shutil.rmtree(chain.folder, ignore_errors=True)
            log.info("audit: orphaned chain %s fully uploaded", chain.chain_id)
        return uploaded

    def _run(self) -> None:
        backoff = 0.1
        while True:
            try:
                self._upload_due()
                backoff = 0.1
                if self.last_error is not None:
                    log.info("audit: store %s reachable again", self.store.describe())
                    self.last_error = None
            except ModerationError as exc:
                if self.last_error != exc.code:
                    log.warning(
                        "audit: upload to %s failed (%s: %s); records stay in the spool, retrying",
                        self.store.describe(),
                        exc.code,
                        exc,
                    )
                self.last_error = exc.code
                with self._cond:
                    if self._stop:
                        return
                    self._cond.wait(backoff)
                backoff = min(backoff * 2, self._retry_max_s)
                continue
            except Exception:  # keep the uploader alive whatever happens; the spool keeps records
                log.exception("audit: uploader error; retrying")
                with self._cond:
                    if self._stop:
                        return
                    self._cond.wait(self._retry_max_s)
                continue
            with self._cond:
                if self._stop:
                    return
                if not any(self._due(c) for c in [self._chain, *self._orphans]):
                    self._cond.wait(min(self._max_age_s, 0.5) if self.backlog() else 1.0)


# --- wiring and reading -----------------------------------------------------------------------


def open_segment_store(settings: Settings) -> SegmentStore:
    """The configured store: S3 when ``settings.audit.bucket`` is set, else ``local_dir``."""
    if settings.audit.bucket:
        from moderation.adapters.s3_audit import S3SegmentStore

        return S3SegmentStore(settings.s3, settings.audit)
    from moderation.adapters.local_audit import LocalSegmentStore

    return LocalSegmentStore(settings.audit.local_dir, prefix=settings.audit.prefix)


def open_audit_sink(settings: Settings, *, store: SegmentStore | None = None) -> AuditLog:
    """This process's audit sink (spool + chain + uploader thread) for ``settings``.

    Raises:
        AuditError: the spool folder cannot be locked or read.
    """
    cfg = settings.audit
    try:
        return AuditLog(
            store or open_segment_store(settings),
            spool_dir=cfg.spool_dir,
            prefix=cfg.prefix,
            segment_max_records=cfg.segment_max_records,
            segment_max_age_s=cfg.segment_max_age_s,
            spool_file_max_bytes=cfg.spool_file_max_bytes,
            retry_max_s=cfg.retry_max_s,
        )
    except OSError as exc:
        raise AuditError(
            f"audit spool {cfg.spool_dir}: {exc.strerror}", code="audit_spool"
        ) from exc


def verify_store(
    store: SegmentStore, start: datetime | None = None, end: datetime | None = None
) -> VerifyReport:
    """Walk the segments created in ``[start, end]`` and check every link (see ChainVerifier).

    Raises:
        AuditSinkUnavailable: the store cannot be reached.
    """
    lock = store.object_lock
    verifier = ChainVerifier(from_start=start is None, object_lock=lock)
    for key in store.list_keys(start, end):
        verifier.check(key, store.get(key), store.retention(key) if lock else None)
    return verifier.finish()


def iter_records(
    store: SegmentStore, start: datetime | None = None, end: datetime | None = None
) -> Iterator[tuple[str, AuditRecord]]:
    """(segment key, record) for every readable record, in key then chain order (not deduped;
    wrap with :func:`moderation.audit.dedupe`). Unreadable segments are skipped with a warning.

    Raises:
        AuditSinkUnavailable: the store cannot be reached.
    """
    for key in store.list_keys(start, end):
        try:
            records = decode_segment(store.get(key)).records()
        except AuditError as exc:
            log.warning("audit: skipping unreadable segment %s: %s", key, exc)
            continue
        for record in records:
            yield key, record
