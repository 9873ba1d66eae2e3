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
spooled and not yet uploaded. More than one orphan: the others are drained and removed. A new
chain is created and locked as ``.new-{chain_id}`` and then renamed, so that a process starting
beside it cannot adopt it; one left by a crash in between (empty, unlocked, older than a minute)
is removed.

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

import logging
import os
import shutil
import threading
import time
from pathlib import Path

from moderation.adapters.support.audit_spool import Chain, new_chain_id, try_lock
from moderation.adapters.support.files import fsync_dir
from moderation.core.audit import AuditRecord
from moderation.exceptions import AuditError, AuditSinkUnavailable, ModerationError
from moderation.metrics import metrics
from moderation.ports import SegmentStore
from moderation.settings import AuditSettings

__all__ = ["AuditLog"]

log = logging.getLogger(__name__)


#: A ``.new-*`` staging folder older than this, and not locked, was left by a process that died
#: between creating and renaming its new chain (a live one is renamed within milliseconds).
STALE_STAGING_S = 60.0


def _remove_stale_staging(staging: Path) -> None:
    """Remove an abandoned ``.new-*`` folder (it never holds records: the chain's files are
    created only after the rename). Young or locked ones belong to a process starting now."""
    try:
        if time.time() - staging.stat().st_mtime < STALE_STAGING_S:
            return
        lock_fd = try_lock(staging)
    except OSError:
        return
    if lock_fd is None:
        return
    try:
        shutil.rmtree(staging, ignore_errors=True)
        log.info("audit: removed abandoned chain staging folder %s", staging.name)
    finally:
        os.close(lock_fd)


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
        self._opened = time.monotonic()
        spool_dir.mkdir(parents=True, exist_ok=True)
        own: Chain | None = None
        self._orphans: list[Chain] = []
        for folder in sorted(spool_dir.glob("chain-*")):
            if not folder.is_dir() or (lock_fd := try_lock(folder)) is None:
                continue
            chain = Chain(folder, lock_fd, file_max_bytes=spool_file_max_bytes)
            if own is None:
                own = chain
                log.info("audit: continuing chain %s from its spool", chain.chain_id)
            else:
                log.info("audit: draining orphaned chain %s", chain.chain_id)
                self._orphans.append(chain)
        for staging in spool_dir.glob(".new-*"):
            _remove_stale_staging(staging)
        if own is None:
            # Locked under a name no scan looks at, then renamed: another process starting on
            # the same spool at the same moment cannot take the new chain for an orphan.
            chain_id = new_chain_id()
            staging = spool_dir / f".new-{chain_id}"
            staging.mkdir()
            lock_fd = try_lock(staging)
            if lock_fd is None:
                raise AuditError(f"cannot lock new audit chain {staging}", code="audit_spool")
            folder = spool_dir / f"chain-{chain_id}"
            staging.rename(folder)
            fsync_dir(spool_dir)
            own = Chain(folder, lock_fd, file_max_bytes=spool_file_max_bytes)
            log.info("audit: started chain %s", own.chain_id)
        self._chain = own
        self._thread = threading.Thread(target=self._run, name="audit-uploader", daemon=True)
        self._thread.start()

    @property
    def chain_id(self) -> str:
        return self._chain.chain_id

    def write(self, record: AuditRecord) -> None:
        """Append one record; see :meth:`write_many`."""
        self.write_many([record])

    def write_many(self, records: list[AuditRecord]) -> None:
        """Append ``records``, in order, to this process's chain; returns once they are fsync'd
        in the spool (one fsync for all).

        Raises:
            AuditError: the log is closed.
            AuditSinkUnavailable: the spool cannot be written (disk full, I/O error).
        """
        if self._closed:
            raise AuditError("audit log is closed", code="audit_closed")
        try:
            self._chain.append_many(records)
        except OSError as exc:
            raise AuditSinkUnavailable(f"audit spool write failed: {exc.strerror}") from exc
        with self._cond:
            self._cond.notify_all()

    def backlog(self) -> bool:
        """Whether any spooled record is not uploaded yet."""
        return any(c.has_unsent() for c in [self._chain, *self._orphans])

    def backlog_age_s(self) -> float:
        """Seconds the oldest record not uploaded yet has waited (0: the spool is drained). A
        spool inherited from an earlier process counts from when this one opened it."""
        now = time.monotonic()
        ages = [
            now - (c.oldest_unsent or self._opened)
            for c in [self._chain, *self._orphans]
            if c.has_unsent()
        ]
        return max(ages, default=0.0)

    def backlog_bytes(self) -> int:
        """Bytes spooled and not uploaded yet."""
        return sum(c.unsent_bytes() for c in [self._chain, *self._orphans])

    def _report(self) -> None:
        m = metrics()
        m.audit_spool_age.set(self.backlog_age_s())
        m.audit_spool_bytes.set(self.backlog_bytes())
        m.audit_upload_failing.set(1 if self.last_error is not None else 0)

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

    def _due(self, chain: Chain) -> bool:
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

    def _full_segment_waiting(self, chain: Chain) -> bool:
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
                self._report()
            except Exception:  # metrics must never stop the uploader
                log.debug("audit: cannot report the spool backlog", exc_info=True)
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

    @classmethod
    def open(cls, store: SegmentStore, settings: AuditSettings) -> AuditLog:
        """This process's audit sink (spool + chain + uploader thread) on ``store``.

        Raises:
            AuditError: the spool folder cannot be created, locked or read.
        """
        try:
            return cls(
                store,
                spool_dir=settings.spool_dir,
                prefix=settings.prefix,
                segment_max_records=settings.segment_max_records,
                segment_max_age_s=settings.segment_max_age_s,
                spool_file_max_bytes=settings.spool_file_max_bytes,
                retry_max_s=settings.retry_max_s,
            )
        except OSError as exc:
            raise AuditError(
                f"audit spool {settings.spool_dir}: {exc.strerror}", code="audit_spool"
            ) from exc
