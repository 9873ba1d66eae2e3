"""The object store for bytes (BlobStore): one contract, checked on the in-memory twin, a local
folder and a real S3 server over HTTP (moto_server)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from moderation.adapters.local_blobs import LocalBlobStore
from moderation.adapters.memory import MemoryBlobStore
from moderation.adapters.s3_blobs import S3BlobStore
from moderation.compose.stores import open_blob_store
from moderation.exceptions import (
    BlobError,
    BlobKeyInvalid,
    BlobNotFound,
    BlobStoreUnavailable,
)
from moderation.ports import BlobStore
from moderation.settings import BlobSettings, S3Settings, Settings
from tests.servers import MotoServer


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    server = MotoServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _s3_settings(server: MotoServer, **extra: object) -> S3Settings:
    return S3Settings(
        endpoint_url=server.url,
        access_key_id="testing",  # type: ignore[arg-type]
        secret_access_key="testing",  # type: ignore[arg-type]
        **extra,  # type: ignore[arg-type]
    )


def _s3_store(server: MotoServer, *, prefix: str = "blobs/") -> S3BlobStore:
    bucket = f"blobs-{uuid.uuid4().hex[:12]}"
    server.client().create_bucket(Bucket=bucket)
    return S3BlobStore(_s3_settings(server), BlobSettings(bucket=bucket, prefix=prefix))


@pytest.fixture(params=["memory", "local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    if request.param == "memory":
        return MemoryBlobStore()
    if request.param == "local":
        return LocalBlobStore(tmp_path / "blobs")
    return _s3_store(request.getfixturevalue("moto"))


def test_put_get_overwrite_and_delete(store: BlobStore) -> None:
    store.put("evidence/acme/job-1", b"first")
    assert store.get("evidence/acme/job-1") == b"first"
    assert store.exists("evidence/acme/job-1")
    store.put("evidence/acme/job-1", b"second")
    assert store.get("evidence/acme/job-1") == b"second"
    store.delete("evidence/acme/job-1")
    assert not store.exists("evidence/acme/job-1")
    store.delete("evidence/acme/job-1")  # nothing there: nothing to do
    with pytest.raises(BlobNotFound) as err:
        store.get("evidence/acme/job-1")
    assert err.value.code == "blob_not_found"


def test_empty_and_binary_objects_keep_every_byte(store: BlobStore) -> None:
    data = bytes(range(256)) * 64
    store.put("a/bin", data)
    store.put("a/empty", b"")
    assert store.get("a/bin") == data
    assert store.get("a/empty") == b""


def test_list_returns_keys_under_a_prefix_in_key_order(store: BlobStore) -> None:
    keys = ["t/a/2", "t/a/10", "t/a-b", "t/ab/1", "t/b", "u/x"]
    for key in keys:
        store.put(key, key.encode())
    assert list(store.list("t/")) == sorted(k for k in keys if k.startswith("t/"))
    assert list(store.list("t/a")) == ["t/a-b", "t/a/10", "t/a/2", "t/ab/1"]
    assert list(store.list("t/a/")) == ["t/a/10", "t/a/2"]
    assert list(store.list("nothing/")) == []
    assert list(store.list()) == sorted(keys)


@pytest.mark.parametrize(
    "key",
    ["", "/abs", "a//b", "a/../b", "..", "a/.", "a/b/", "sp ace", "new\nline", "x" * 901, "é"],
)
def test_a_malformed_key_is_refused_with_a_code(store: BlobStore, key: str) -> None:
    for call in (lambda: store.put(key, b"x"), lambda: store.get(key), lambda: store.exists(key)):
        with pytest.raises(BlobKeyInvalid) as err:
            call()
        assert err.value.code == "blob_key_invalid"
    with pytest.raises(BlobKeyInvalid):
        list(store.list("../"))


def _leftovers(store: BlobStore) -> list[str]:
    """What an aborted upload could leave: objects, S3 multipart uploads, local temp files."""
    found = list(store.list())
    if isinstance(store, S3BlobStore):
        pending = store.client.list_multipart_uploads(Bucket=store.bucket)
        found += [u["Key"] for u in pending.get("Uploads", [])]
    if isinstance(store, LocalBlobStore) and store.root.exists():
        found += [str(p) for p in store.root.rglob("*") if p.is_file()]
    return found


def test_an_upload_fed_in_chunks_is_readable_only_once_committed(store: BlobStore) -> None:
    data = bytes(range(256)) * (80 * 1024)  # 20 MiB: a multipart upload of 8 MiB parts on S3
    upload = store.upload("spill/day/u-big")
    for start in range(0, len(data), 1024 * 1024):
        upload.write(data[start : start + 1024 * 1024])
    assert not store.exists("spill/day/u-big")
    upload.commit()
    assert store.get("spill/day/u-big") == data
    small = store.upload("spill/day/u-small")
    small.write(b"tiny")
    small.commit()
    assert store.get("spill/day/u-small") == b"tiny"


def test_an_aborted_upload_leaves_nothing_behind(store: BlobStore) -> None:
    upload = store.upload("spill/day/u-gone")
    for _ in range(20):  # 20 MiB: parts already sent on S3
        upload.write(b"x" * (1024 * 1024))
    upload.abort()
    upload.abort()  # idempotent
    assert not store.exists("spill/day/u-gone")
    assert _leftovers(store) == []


def test_large_objects_are_read_into_a_file_and_small_ones_into_memory(
    store: BlobStore, tmp_path: Path
) -> None:
    import hashlib

    from moderation.core.payload import MediaFile

    data = bytes(range(256)) * 4096  # 1 MiB
    source = tmp_path / "source.bin"
    source.write_bytes(data)
    store.put_file("spill/day/u-file", source)
    assert store.get("spill/day/u-file") == data
    assert store.get_media("spill/day/u-file", memory_bytes=len(data)) == data
    media = store.get_media("spill/day/u-file", memory_bytes=64 * 1024)
    if isinstance(store, MemoryBlobStore):
        assert media == data  # the twin holds everything in memory anyway
        return
    assert isinstance(media, MediaFile)
    assert media.size == len(data) and media.path.read_bytes() == data
    assert media.sha256 == hashlib.sha256(data).hexdigest()
    assert media.owned == isinstance(store, S3BlobStore)  # the local store's own file is lent
    with pytest.raises(BlobNotFound):
        store.get_media("spill/day/none", memory_bytes=1)


def test_a_local_put_is_atomic_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    payloads = [bytes([i]) * 200_000 for i in range(8)]
    threads = [threading.Thread(target=store.put, args=("k", data)) for data in payloads]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Whichever writer renamed last, the object is one whole payload, never a mix.
    assert store.get("k") in payloads
    assert list(store.list()) == ["k"]
    assert [p.name for p in tmp_path.iterdir()] == ["k"]


def test_a_local_key_that_names_a_folder_is_not_an_object(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    store.put("a/b", b"x")
    assert not store.exists("a")
    with pytest.raises(BlobNotFound):
        store.get("a")
    store.delete("a")  # a folder is never removed as an object
    assert store.get("a/b") == b"x"


def test_s3_keys_stay_under_the_prefix(moto: MotoServer) -> None:
    store = _s3_store(moto, prefix="tenant-data/blobs/")
    store.put("k1", b"v")
    moto.client().put_object(Bucket=store.bucket, Key="other/k2", Body=b"x")
    listed = moto.client().list_objects_v2(Bucket=store.bucket)["Contents"]
    assert sorted(o["Key"] for o in listed) == ["other/k2", "tenant-data/blobs/k1"]
    assert list(store.list()) == ["k1"]


def test_a_missing_bucket_is_a_permanent_error(moto: MotoServer) -> None:
    store = S3BlobStore(_s3_settings(moto), BlobSettings(bucket="no-such-bucket"))
    with pytest.raises(BlobError) as err:
        store.put("k", b"v")
    assert not err.value.transient


def test_an_unreachable_s3_is_transient(s3_server: MotoServer) -> None:
    settings = _s3_settings(s3_server, max_attempts=1, connect_timeout_s=0.5, read_timeout_s=0.5)
    s3_server.client().create_bucket(Bucket="blobs-down")
    store = S3BlobStore(settings, BlobSettings(bucket="blobs-down"))
    store.put("k", b"v")
    s3_server.stop()
    for call in (
        lambda: store.put("k", b"v"),
        lambda: store.get("k"),
        lambda: store.exists("k"),
        lambda: store.delete("k"),
        lambda: list(store.list()),
    ):
        with pytest.raises(BlobStoreUnavailable) as err:
            call()
        assert err.value.transient and err.value.code == "blob_unavailable"


def test_the_twin_can_be_down() -> None:
    store = MemoryBlobStore(down=True)
    with pytest.raises(BlobStoreUnavailable):
        store.put("k", b"v")


def test_settings_pick_s3_with_a_bucket_and_a_folder_without(tmp_path: Path) -> None:
    local = open_blob_store(Settings(blobs=BlobSettings(local_dir=tmp_path / "b")))
    assert isinstance(local, LocalBlobStore) and local.describe() == str(tmp_path / "b")
    s3 = open_blob_store(Settings(blobs=BlobSettings(bucket="bk", prefix="p/")))
    assert isinstance(s3, S3BlobStore) and s3.describe() == "s3://bk/p/"


def test_a_prefix_that_could_escape_is_refused_by_settings() -> None:
    with pytest.raises(ValueError):
        BlobSettings(prefix="../x/")
    with pytest.raises(ValueError):
        BlobSettings(prefix="no-trailing-slash")
