"""Hash banks on Redis (the :class:`~moderation.ports.BankStore` port).

Keys (``P`` = ``settings.banks.key_prefix``, ``B`` = the bank's name)::

    P banks              set of bank names
    P version            INCR on every change of any bank (workers poll it)
    P B:info             hash: description, created_at, version, next_id, next_segment,
                         entries (live), removed
    P B:segments         hash: segment number -> "first_id:count" (committed segments only)
    P B:seg:<n>          string: the segment's hashes, 32 bytes each, in id order
    P B:meta:<n>         hash: entry id -> metadata JSON (source, label, added_at, reference id,
                         quality)
    P B:removed          set of removed entry ids (tombstones)
    P B:written          set of every segment number ever written (committed or an orphan of a
                         failed import): what delete() deletes, with no SCAN
    P B:lock             the write lock (SET NX PX + token; refreshed while an import runs)
    P request:<review>   a reviewer's pending "add to bank" request (TTL)

Atomicity: an addition writes its new segments' hashes and metadata first, under keys no reader
looks at (a segment is read only once ``B:segments`` names it), then commits in one MULTI/EXEC:
segment counts, ``next_id``, the bank's and the store's versions. A crash before the commit leaves
orphan keys that the failed call deletes (or the next writer overwrites), never half an import.
Small additions append to the last segment inside the commit transaction itself. Removals add
tombstones and move the versions in one transaction. Writers of a bank are serialised by its lock.

Redis errors become :class:`~moderation.exceptions.QueueUnavailable` (transient).
"""

from __future__ import annotations

import contextlib
import json
import secrets
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, cast

import redis

from moderation.adapters.support.redis import connect, redis_errors
from moderation.core.banks import (
    BankEntry,
    BankInfo,
    BankManifest,
    EntryData,
    Segment,
    is_bank_name,
)
from moderation.core.legacy_state import LegacyBankEntry
from moderation.exceptions import BankBusy, BankExists, BankNotFound
from moderation.ports import BankRequest

__all__ = ["SEGMENT_ROWS", "RedisBankStore"]

#: Most entries in one segment (2 MiB of hashes).
SEGMENT_ROWS = 65_536
#: Additions up to this size go into the last segment, inside the commit transaction.
SMALL_APPEND = 1_000
_HASH = 32
_WRITE_BATCH = 5_000

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_REFRESH = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


class RedisBankStore:
    """Thread-safe (redis-py pools connections)."""

    LOCK_MS = 30_000

    def __init__(self, client: redis.Redis, *, prefix: str = "mod:bank:") -> None:
        self.redis = client
        self.prefix = prefix
        self._release = client.register_script(_RELEASE)
        self._refresh = client.register_script(_REFRESH)

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "mod:bank:") -> RedisBankStore:
        return cls(connect(url), prefix=prefix)

    def _k(self, bank: str, *parts: object) -> str:
        return ":".join([f"{self.prefix}{bank}", *map(str, parts)])

    def _check(self, name: str) -> None:
        if not is_bank_name(name):
            raise BankNotFound(f"{name!r} is not a bank name (lowercase letters, digits, _ . -)")

    # --- banks -------------------------------------------------------------------------------

    def create(self, name: str, *, description: str = "") -> BankInfo:
        """Raises:
        BankExists: a bank of that name exists.
        BankNotFound: ``name`` is not a valid bank name.
        """
        self._check(name)
        now = datetime.now(UTC).isoformat()
        with redis_errors("bank store"):
            added = self.redis.sadd(f"{self.prefix}banks", name)
            if not added:
                raise BankExists(f"bank {name!r} already exists")
            with self.redis.pipeline() as pipe:
                pipe.hset(
                    self._k(name, "info"),
                    mapping={
                        "description": description,
                        "created_at": now,
                        "version": 1,
                        "next_id": 0,
                        "next_segment": 0,
                        "entries": 0,
                        "removed": 0,
                    },
                )
                pipe.incr(f"{self.prefix}version")
                pipe.execute()
        return self.info(name)

    def delete(self, name: str) -> bool:
        """Delete a bank and every key it has, named from its own records (never a SCAN of the
        keyspace): the segment numbers it ever wrote (``B:written``), the committed ones and
        every number below ``next_segment``."""
        self._check(name)
        with redis_errors("bank store"):
            with self.redis.pipeline(transaction=True) as pipe:
                pipe.hget(self._k(name, "info"), "next_segment")
                pipe.hkeys(self._k(name, "segments"))
                pipe.smembers(self._k(name, "written"))
                next_segment, committed, written = pipe.execute()
            numbers = set(range(int(next_segment or 0)))
            numbers |= {int(n) for n in cast(list[bytes], committed)}
            numbers |= {int(n) for n in cast(set[bytes], written)}
            keys = [self._k(name, part) for part in ("info", "segments", "removed", "written")]
            keys += [self._k(name, kind, n) for n in sorted(numbers) for kind in ("seg", "meta")]
            with self.redis.pipeline() as pipe:
                pipe.srem(f"{self.prefix}banks", name)
                for start in range(0, len(keys), 1000):
                    pipe.delete(*keys[start : start + 1000])
                pipe.incr(f"{self.prefix}version")
                removed = pipe.execute()[0]
        return bool(removed)

    def info(self, name: str) -> BankInfo:
        self._check(name)
        with redis_errors("bank store"):
            h = cast(dict[bytes, bytes], self.redis.hgetall(self._k(name, "info")))
        if not h:
            raise BankNotFound(f"no bank {name!r}")
        return _info(name, h)

    def banks(self) -> list[BankInfo]:
        with redis_errors("bank store"):
            members = cast(set[bytes], self.redis.smembers(f"{self.prefix}banks"))
            names = sorted(n.decode() for n in members)
            with self.redis.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.hgetall(self._k(name, "info"))
                infos = pipe.execute()
        return [_info(n, h) for n, h in zip(names, infos, strict=True) if h]

    def version(self) -> int:
        with redis_errors("bank store"):
            value = self.redis.get(f"{self.prefix}version")
        return int(value or 0)

    def manifest(self, name: str) -> BankManifest:
        self._check(name)
        with redis_errors("bank store"), self.redis.pipeline(transaction=True) as pipe:
            pipe.hmget(self._k(name, "info"), ["version", "created_at"])
            pipe.hgetall(self._k(name, "segments"))
            pipe.smembers(self._k(name, "removed"))
            (version, created), segments, removed = pipe.execute()
        if version is None:
            raise BankNotFound(f"no bank {name!r}")
        return BankManifest(
            name=name,
            epoch=created.decode() if created else "",
            version=int(version),
            segments=tuple(sorted(_segments(segments), key=lambda s: s.first_id)),
            removed=frozenset(int(i) for i in removed),
        )

    def read_hashes(self, name: str, segment: Segment, start: int = 0) -> bytes:
        if start >= segment.count:
            return b""
        with redis_errors("bank store"):
            data = self.redis.getrange(
                self._k(name, "seg", segment.number), start * _HASH, segment.count * _HASH - 1
            )
        return bytes(cast(bytes, data))

    # --- writing -----------------------------------------------------------------------------

    @contextmanager
    def writing(self, name: str) -> Iterator[None]:
        """Hold the bank's write lock, refreshed in the background while held.

        Raises:
            BankBusy: another writer holds it.
            BankNotFound: no such bank.
        """
        self.info(name)
        key, token = self._k(name, "lock"), secrets.token_hex(16)
        with redis_errors("bank store"):
            if not self.redis.set(key, token, nx=True, px=self.LOCK_MS):
                raise BankBusy(f"bank {name!r} is being written by another import or edit")
        stop = threading.Event()

        def keep() -> None:
            while not stop.wait(self.LOCK_MS / 3000):
                try:
                    self._refresh(keys=[key], args=[token, self.LOCK_MS])
                except redis.RedisError:
                    continue

        keeper = threading.Thread(target=keep, name=f"bank-lock-{name}", daemon=True)
        keeper.start()
        try:
            yield
        finally:
            stop.set()
            keeper.join(5)
            with redis_errors("bank store"):
                self._release(keys=[key], args=[token])

    def append(
        self,
        name: str,
        entries: Sequence[EntryData],
        *,
        progress: Callable[[int], object] | None = None,
    ) -> list[int]:
        """Add entries atomically (see the module docstring); call under :meth:`writing`."""
        if not entries:
            return []
        info_key = self._k(name, "info")
        with redis_errors("bank store"):
            info = cast(dict[bytes, bytes], self.redis.hgetall(info_key))
            if not info:
                raise BankNotFound(f"no bank {name!r}")
            next_id, next_segment = int(info[b"next_id"]), int(info[b"next_segment"])
            segments = sorted(
                _segments(self.redis.hgetall(self._k(name, "segments"))), key=lambda s: s.first_id
            )
        tail = segments[-1] if segments else None
        ids = list(range(next_id, next_id + len(entries)))
        if (
            tail is not None
            and len(entries) <= SMALL_APPEND
            and tail.end_id == next_id
            and tail.count + len(entries) <= SEGMENT_ROWS
        ):
            self._commit(name, entries, ids, tail=tail, new=[], next_segment=next_segment)
            if progress is not None:
                progress(len(entries))
            return ids
        new: list[Segment] = []
        written: list[str] = []
        try:
            for start in range(0, len(entries), SEGMENT_ROWS):
                chunk = entries[start : start + SEGMENT_ROWS]
                segment = Segment(
                    number=next_segment + len(new), first_id=ids[start], count=len(chunk)
                )
                written += [
                    self._k(name, "seg", segment.number),
                    self._k(name, "meta", segment.number),
                ]
                self._write_segment(name, segment, chunk, progress)
                new.append(segment)
            self._commit(name, [], [], tail=None, new=new, next_segment=next_segment + len(new))
        except BaseException:
            # Orphans under unlisted segment numbers: delete them (the next writer overwrites
            # whatever a failed delete leaves).
            with contextlib.suppress(redis.RedisError):
                if written:
                    self.redis.delete(*written)
            raise
        return ids

    def _write_segment(
        self,
        name: str,
        segment: Segment,
        chunk: Sequence[EntryData],
        progress: Callable[[int], object] | None,
    ) -> None:
        seg_key = self._k(name, "seg", segment.number)
        meta_key = self._k(name, "meta", segment.number)
        with redis_errors("bank store"):
            # Named before it is written, so delete() finds an orphan of a failed import too.
            self.redis.sadd(self._k(name, "written"), segment.number)
            self.redis.delete(seg_key, meta_key)  # an orphan of a failed import may be there
            for start in range(0, len(chunk), _WRITE_BATCH):
                part = chunk[start : start + _WRITE_BATCH]
                with self.redis.pipeline(transaction=False) as pipe:
                    pipe.append(seg_key, b"".join(bytes.fromhex(e.pdq) for e in part))
                    pipe.hset(
                        meta_key,
                        mapping={
                            str(segment.first_id + start + i): json.dumps(e.meta())
                            for i, e in enumerate(part)
                        },
                    )
                    pipe.execute()
                if progress is not None:
                    progress(len(part))

    def _commit(
        self,
        name: str,
        entries: Sequence[EntryData],
        ids: Sequence[int],
        *,
        tail: Segment | None,
        new: Sequence[Segment],
        next_segment: int,
    ) -> None:
        added = len(entries) + sum(s.count for s in new)
        last = ids[-1] + 1 if ids else max(s.end_id for s in new)
        with redis_errors("bank store"), self.redis.pipeline(transaction=True) as pipe:
            if tail is not None and entries:
                pipe.append(
                    self._k(name, "seg", tail.number),
                    b"".join(bytes.fromhex(e.pdq) for e in entries),
                )
                pipe.hset(
                    self._k(name, "meta", tail.number),
                    mapping={
                        str(i): json.dumps(e.meta()) for i, e in zip(ids, entries, strict=True)
                    },
                )
                pipe.hset(
                    self._k(name, "segments"),
                    str(tail.number),
                    f"{tail.first_id}:{tail.count + len(entries)}",
                )
            for segment in new:
                pipe.hset(
                    self._k(name, "segments"),
                    str(segment.number),
                    f"{segment.first_id}:{segment.count}",
                )
            info = self._k(name, "info")
            pipe.hset(info, mapping={"next_id": last, "next_segment": next_segment})
            pipe.hincrby(info, "entries", added)
            pipe.hincrby(info, "version", 1)
            pipe.incr(f"{self.prefix}version")
            pipe.execute()

    def remove(self, name: str, ids: Iterable[int]) -> int:
        manifest = self.manifest(name)
        live = sorted({i for i in ids if manifest.live(i)})
        if not live:
            return 0
        info = self._k(name, "info")
        with redis_errors("bank store"), self.redis.pipeline(transaction=True) as pipe:
            pipe.sadd(self._k(name, "removed"), *live)
            pipe.hincrby(info, "entries", -len(live))
            pipe.hincrby(info, "removed", len(live))
            pipe.hincrby(info, "version", 1)
            pipe.incr(f"{self.prefix}version")
            pipe.execute()
        return len(live)

    # --- reading entries ---------------------------------------------------------------------

    def entries(self, name: str, ids: Sequence[int]) -> dict[int, BankEntry]:
        self._check(name)
        if not ids:
            return {}
        with redis_errors("bank store"), self.redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(self._k(name, "segments"))
            pipe.smismember(self._k(name, "removed"), list(ids))
            raw_segments, removed = pipe.execute()
        segments = _segments(raw_segments)

        def segment_of(entry_id: int) -> Segment | None:
            return next((s for s in segments if s.first_id <= entry_id < s.end_id), None)

        wanted = [(i, segment_of(i)) for i, gone in zip(ids, removed, strict=True) if not gone]
        found = [(i, s) for i, s in wanted if s is not None]
        if not found:
            return {}
        with redis_errors("bank store"), self.redis.pipeline(transaction=False) as pipe:
            for i, segment in found:
                pipe.hget(self._k(name, "meta", segment.number), str(i))
                offset = (i - segment.first_id) * _HASH
                pipe.getrange(self._k(name, "seg", segment.number), offset, offset + _HASH - 1)
            answers = pipe.execute()
        out: dict[int, BankEntry] = {}
        for k, (i, _) in enumerate(found):
            meta, digest = answers[2 * k], answers[2 * k + 1]
            if meta is None or len(digest) != _HASH:
                continue
            data = EntryData.from_meta(bytes(digest).hex(), json.loads(meta))
            out[i] = BankEntry.of(name, i, data)
        return out

    def scan(self, name: str) -> Iterator[BankEntry]:
        manifest = self.manifest(name)
        for segment in manifest.segments:
            hashes = self.read_hashes(name, segment)
            with redis_errors("bank store"):
                metas = cast(
                    dict[bytes, bytes], self.redis.hgetall(self._k(name, "meta", segment.number))
                )
            for offset in range(segment.count):
                entry_id = segment.first_id + offset
                if entry_id in manifest.removed:
                    continue
                raw = metas.get(str(entry_id).encode())
                digest = hashes[offset * _HASH : (offset + 1) * _HASH].hex()
                data = EntryData.from_meta(digest, json.loads(raw) if raw else {})
                yield BankEntry.of(name, entry_id, data)

    def segment_entries(self, name: str, segment: Segment) -> list[LegacyBankEntry]:
        """Every entry of a committed segment in id order, tombstoned ones flagged (what the
        importer into PostgreSQL copies, ids kept)."""
        self._check(name)
        ids = list(range(segment.first_id, segment.end_id))
        if not ids:
            return []
        hashes = self.read_hashes(name, segment)
        with redis_errors("bank store"), self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self._k(name, "meta", segment.number))
            pipe.smismember(self._k(name, "removed"), ids)
            raw_metas, gone = pipe.execute()
        metas = cast(dict[bytes, bytes], raw_metas)
        out = []
        for offset, entry_id in enumerate(ids):
            digest = hashes[offset * _HASH : (offset + 1) * _HASH]
            if len(digest) != _HASH:
                break
            raw = metas.get(str(entry_id).encode())
            data = EntryData.from_meta(digest.hex(), json.loads(raw) if raw else {})
            out.append(LegacyBankEntry(id=entry_id, data=data, removed=bool(gone[offset])))
        return out

    # --- reviewer requests -------------------------------------------------------------------

    def request_addition(self, request: BankRequest, ttl_s: int) -> None:
        with redis_errors("bank store"):
            self.redis.set(
                f"{self.prefix}request:{request.review_id}", request.model_dump_json(), ex=ttl_s
            )

    def addition_request(self, review_id: str) -> BankRequest | None:
        with redis_errors("bank store"):
            raw = self.redis.get(f"{self.prefix}request:{review_id}")
        return BankRequest.model_validate_json(raw) if raw else None


def _info(name: str, h: dict[bytes, bytes]) -> BankInfo:
    def get(key: str, default: str = "0") -> str:
        return h.get(key.encode(), default.encode()).decode()

    return BankInfo(
        name=name,
        description=get("description", ""),
        created_at=datetime.fromisoformat(get("created_at", datetime.now(UTC).isoformat())),
        version=int(get("version")),
        entries=int(get("entries")),
        removed=int(get("removed")),
    )


def _segments(raw: Any) -> list[Segment]:
    out = []
    for number, value in cast(dict[bytes, bytes], raw).items():
        first, count = value.decode().split(":")
        out.append(Segment(number=int(number), first_id=int(first), count=int(count)))
    return out
