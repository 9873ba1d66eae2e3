"""The durable local spool of one audit chain: a locked folder of append-only JSON Lines files
plus an upload cursor. Used by :class:`moderation.adapters.audit_log.AuditLog`.

``append`` returns only after the record is fsync'd (group commit: concurrent writers share one
fsync). The cursor records the next segment's seq, creation time and byte range *before* it is
uploaded, so after a crash the same segment is rebuilt byte for byte and put to the same key.
A torn last line (never acknowledged) is dropped on open.
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
import socket
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from moderation.adapters.support.files import atomic_write, fsync_dir
from moderation.core.audit import (
    GENESIS_HASH,
    AuditRecord,
    encode_segment,
    seal,
    segment_key,
)
from moderation.exceptions import AuditError
from moderation.ports import SegmentStore

__all__ = ["Chain", "new_chain_id", "try_lock"]

log = logging.getLogger(__name__)

_FILE = re.compile(r"records-(\d{8})\.jsonl")
Position = tuple[int, int]  # (spool file index, byte offset)


def _write_json_durably(path: Path, value: dict[str, Any]) -> None:
    atomic_write(path, json.dumps(value).encode())


def new_chain_id() -> str:
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


class Chain:
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
        self.append_many([record])

    def append_many(self, records: list[AuditRecord]) -> None:
        """Link and write records in order; returns once all are fsync'd (one fsync for all,
        shared with concurrent writers)."""
        if not records:
            return
        with self._lock:
            for record in records:
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
        fsync_dir(self.folder)

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

    def unsent_bytes(self) -> int:
        """Bytes between the upload cursor and the synced end (across spool files)."""
        (file, offset), (end_file, end_offset) = self.cursor.position, self.synced_pos
        if (file, offset) >= (end_file, end_offset):
            return 0
        if file == end_file:
            return end_offset - offset
        total = end_offset - offset
        for index in range(file, end_file):
            path = self._path(index)
            total += path.stat().st_size if path.exists() else 0
        return max(total, 0)

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


def try_lock(folder: Path) -> int | None:
    fd = os.open(folder / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd
