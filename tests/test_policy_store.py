"""The policy store (``policy_source: database``): policy documents in PostgreSQL, exemplar
images in the object store, promotion audited and followed by every worker without a restart.

The use cases over the twins; the PostgreSQL adapter on a real server (pgserver); exemplars
through a real S3 server (moto); and a real worker process that serves a promotion made by the
``moderation policy promote`` command."""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from typer.testing import CliRunner

from moderation import testmodel
from moderation.adapters.memory import MemoryAuditSink, MemoryBlobStore, MemoryPolicyStore
from moderation.adapters.policy_files import (
    StoredPolicyFolder,
    edit_policy_text,
    exemplar_key,
    exemplar_path,
    load_policies,
)
from moderation.adapters.postgres.policies import PostgresPolicyStore
from moderation.adapters.postgres.pool import open_pool
from moderation.adapters.redis_jobs import RedisJobStore
from moderation.adapters.s3_blobs import S3BlobStore
from moderation.cli import app
from moderation.compose.stores import open_segment_store
from moderation.core.policy import PolicyMode
from moderation.exceptions import PolicyError, QualityError
from moderation.pipeline.audit import iter_records
from moderation.pipeline.policy_publish import publish_policies
from moderation.pipeline.promote import promote
from moderation.ports import BlobStore, PolicyStore
from moderation.settings import BlobSettings, DatabaseSettings, S3Settings, Settings
from moderation.testmodel import world
from moderation.testmodel.samples import encoded
from tests.pipeline_support import WorkerProcess, live_workers, pipeline_settings
from tests.servers import MotoServer

TESTWORLD = testmodel.POLICY_PATH.read_text()


def _v2(text: str = TESTWORLD) -> str:
    return edit_policy_text(text, version=2, mode=PolicyMode.SHADOW)


def _with_exemplar(text: str, path: str) -> str:
    """``text`` with a positive exemplar on its first prompts category."""
    marker = "    prompts:"
    head, _, tail = text.partition(marker)
    return f"{head}    exemplars:\n      positive: [{path}]\n{marker}{tail}"


def _folder(tmp_path: Path, files: dict[str, str], images: dict[str, bytes] | None = None) -> Path:
    folder = tmp_path / f"src-{uuid.uuid4().hex[:6]}"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    for name, data in (images or {}).items():
        (folder / name).write_bytes(data)
    return folder


def _publish(
    folder: Path,
    store: PolicyStore,
    blobs: BlobStore,
    actor: str = "alice",
    audit: MemoryAuditSink | None = None,
) -> list[Any]:
    return publish_policies(
        load_policies([folder]),
        read_text=lambda source: Path(source).read_text(),
        read_exemplar=lambda source, path: exemplar_path(Path(source).parent, path).read_bytes(),
        exemplar_key=exemplar_key,
        store=store,
        blobs=blobs,
        actor=actor,
        audit=audit if audit is not None else MemoryAuditSink(),
    )


# --- the use cases over the twins ----------------------------------------------------------------


def test_publish_then_promote_is_audited_and_serves_the_new_version(tmp_path: Path) -> None:
    store, blobs, audit = MemoryPolicyStore(), MemoryBlobStore(), MemoryAuditSink()
    folder = _folder(tmp_path, {"testworld.yaml": TESTWORLD, "testworld.v2.yaml": _v2()})
    done = _publish(folder, store, blobs, audit=audit)
    assert [(p.document.slot, p.document.version, p.changed) for p in done] == [
        ("live", 1, True),
        ("shadow", 2, True),
    ]
    # The first live version is acted on from now: audited (the shadow is not acted on).
    (published,) = audit.records
    assert (published.kind, published.decision, published.actor) == ("policy", "publish", "alice")
    assert (published.policy_id, published.policy_version) == ("testworld", 1)
    version = store.version()
    assert [p.changed for p in _publish(folder, store, blobs, audit=audit)] == [False, False]
    assert store.version() == version  # publishing the same files again changes nothing
    assert len(audit.records) == 1  # nor is it audited again
    audit.records.clear()

    files = StoredPolicyFolder(store, blobs, tmp_path / "served", actor="alice")
    served = files.load()
    assert served["testworld"].version == 1 and served.shadow("testworld").version == 2  # type: ignore[union-attr]
    before = files.fingerprint()

    promotion = promote("testworld", files=files, audit=audit, actor="alice", note="measured")
    assert files.fingerprint() != before  # what workers poll moved
    (record,) = audit.records
    assert (record.decision, record.actor, record.policy_version) == ("promote", "alice", 2)
    assert record.details["files"] == promotion.files
    now = files.load()
    assert now["testworld"].version == 2 and now.shadow("testworld") is None
    assert now["testworld"].mode is PolicyMode.LIVE
    retired = [d for d in store.documents if d.slot == "retired"]
    assert sorted(d.version for d in retired) == [1, 2]  # the old live one and the shadow
    with pytest.raises(QualityError):
        promote("testworld", files=files, audit=audit, actor="alice")  # nothing left to promote
    assert len(audit.records) == 1


def test_a_changed_live_version_is_refused_promotion_is_the_way(tmp_path: Path) -> None:
    store, blobs = MemoryPolicyStore(), MemoryBlobStore()
    _publish(_folder(tmp_path, {"testworld.yaml": TESTWORLD}), store, blobs)
    changed = edit_policy_text(TESTWORLD, version=3)
    with pytest.raises(QualityError) as info:
        _publish(_folder(tmp_path, {"testworld.yaml": changed}), store, blobs)
    assert info.value.code == "publish_would_change_live"
    assert [d.version for d in store.serving()] == [1]


def test_an_empty_store_is_a_clear_error(tmp_path: Path) -> None:
    files = StoredPolicyFolder(MemoryPolicyStore(), MemoryBlobStore(), tmp_path / "served")
    with pytest.raises(PolicyError, match="policy publish"):
        files.load()


# --- PostgreSQL ----------------------------------------------------------------------------------


@pytest.fixture
def pg_store(pg_url: str) -> Any:
    pool = open_pool(DatabaseSettings(url=pg_url), application="test-policy-store")
    try:
        with pool.connection() as conn:  # tests of this module share the database
            conn.execute("TRUNCATE policy_documents")
        yield PostgresPolicyStore(pool)
    finally:
        pool.close()


def test_postgres_store_publishes_promotes_in_one_step_and_keeps_every_version(
    pg_store: PostgresPolicyStore, tmp_path: Path
) -> None:
    blobs = MemoryBlobStore()
    v0 = pg_store.version()
    _publish(_folder(tmp_path, {"a.yaml": TESTWORLD, "b.yaml": _v2()}), pg_store, blobs)
    v1 = pg_store.version()
    assert v1 > v0
    _publish(_folder(tmp_path, {"a.yaml": TESTWORLD, "b.yaml": _v2()}), pg_store, blobs)
    assert pg_store.version() == v1  # same documents: no change, no reload

    shadow = next(d for d in pg_store.serving() if d.slot == "shadow")
    live = pg_store.promote(
        shadow.id, body=edit_policy_text(shadow.body, mode=PolicyMode.LIVE), actor="bob"
    )
    assert pg_store.version() > v1
    assert [(d.slot, d.version) for d in pg_store.serving()] == [("live", 2)]
    assert live.added_by == "bob" and "mode: live" in live.body
    assert pg_store.document(shadow.id).slot == "retired"  # kept, not served
    with pytest.raises(PolicyError) as info:
        pg_store.promote(shadow.id, body=live.body, actor="bob")
    assert info.value.code == "policy_document_unknown"
    with pytest.raises(PolicyError):
        pg_store.document(10**9)

    # a newer shadow replaces the previous shadow; the live version stays
    _publish(
        _folder(
            tmp_path, {"c.yaml": edit_policy_text(TESTWORLD, version=3, mode=PolicyMode.SHADOW)}
        ),
        pg_store,
        blobs,
    )
    assert sorted((d.slot, d.version) for d in pg_store.serving()) == [("live", 2), ("shadow", 3)]


def test_exemplar_images_travel_through_the_object_store(
    pg_store: PostgresPolicyStore, tmp_path: Path
) -> None:
    image = encoded(world.render("red", "star", seed=3))
    server = MotoServer()
    server.start()
    try:
        bucket = f"policies-{uuid.uuid4().hex[:8]}"
        server.client().create_bucket(Bucket=bucket)
        s3 = S3Settings(
            endpoint_url=server.url,
            access_key_id="testing",  # type: ignore[arg-type]
            secret_access_key="testing",  # type: ignore[arg-type]
        )
        blobs = S3BlobStore(s3, BlobSettings(bucket=bucket))
        text = _with_exemplar(TESTWORLD, "star.png")
        _publish(_folder(tmp_path, {"testworld.yaml": text}, {"star.png": image}), pg_store, blobs)
        digest = hashlib.sha256(image).hexdigest()
        assert blobs.get(exemplar_key(digest)) == image

        # another machine: nothing on its disk but the store and the bucket
        served = StoredPolicyFolder(pg_store, blobs, tmp_path / "elsewhere").load()
        (category,) = [c for c in served["testworld"].categories if c.exemplars is not None]
        assert [e.sha256 for e in category.exemplars.positive] == [digest]  # type: ignore[union-attr]

        # bytes changed behind the store's back are refused, not served
        blobs.put(exemplar_key(digest), b"not the image")
        with pytest.raises(PolicyError) as info:
            StoredPolicyFolder(pg_store, blobs, tmp_path / "third").load()
        assert info.value.code == "policy_exemplar_changed"
    finally:
        server.stop()


# --- a real worker follows a promotion -----------------------------------------------------------


def _wait(condition: Callable[[], Any], what: str, timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_a_worker_serves_a_promotion_from_the_database_without_a_restart(
    settings: Settings, redis_url: str, pg_url: str, pg_store: PostgresPolicyStore, tmp_path: Path
) -> None:
    folder = _folder(tmp_path, {"testworld.yaml": TESTWORLD, "testworld.v2.yaml": _v2()})
    base = settings.model_copy(
        update={
            "policy_source": "database",
            "policy_paths": [tmp_path / "no-such-folder"],  # the files are not read
            "database": settings.database.model_copy(update={"url": pg_url}),
            "queue": settings.queue.model_copy(update={"policy_reload_s": 0.5}),
        }
    )
    cfg = pipeline_settings(base, redis_url)
    env = {**cfg.to_env({}), "COLUMNS": "200", "MODERATION_LOG_LEVEL": "WARNING"}
    runner = CliRunner()
    done = runner.invoke(
        app, ["policy", "publish", str(folder), "--by", "alice"], env=env, catch_exceptions=False
    )
    assert done.exit_code == 0, done.output
    assert "published: testworld v1 live" in done.output
    assert "published: testworld v2 shadow" in done.output

    store = RedisJobStore.from_url(redis_url, cfg.queue)
    # another worker's cache folder: it reads the store, not this process's files
    worker_cfg = cfg.model_copy(update={"cache_dir": tmp_path / "worker-cache"})
    worker = WorkerProcess(worker_cfg, tmp_path / "worker.log").start()
    try:
        info = worker.wait_ready(store)
        assert info["policies"] == {"testworld": 1} and info["shadow_policies"] == {"testworld": 2}
        done = runner.invoke(
            app,
            ["policy", "promote", "testworld", "--by", "bob", "--note", "measured"],
            env=env,
            catch_exceptions=False,
        )
        assert done.exit_code == 0, done.output
        assert "promoted testworld v2 (was v1) by bob" in done.output
        _wait(
            lambda: any(
                w["policies"] == {"testworld": 2} and w["shadow_policies"] == {}
                for w in live_workers(store)
            ),
            what="the worker to serve the promoted version",
        )
        assert worker.proc is not None and worker.proc.poll() is None  # no restart
    finally:
        worker.stop()
    records = [r for _, r in iter_records(open_segment_store(cfg)) if r.kind == "policy"]
    # The first live version's publication, then the promotion: each acted-on version audited.
    assert [(r.decision, r.policy_version) for r in records] == [("publish", 1), ("promote", 2)]
    assert records[1].actor == "bob"


def test_the_api_knows_the_stored_policies_before_any_worker_reports(
    settings: Settings, redis_url: str, pg_url: str, pg_store: PostgresPolicyStore, tmp_path: Path
) -> None:
    from moderation.compose.api import build_api

    _publish(
        _folder(tmp_path, {"testworld.yaml": TESTWORLD, "v2.yaml": _v2()}),
        pg_store,
        MemoryBlobStore(),
    )
    cfg = pipeline_settings(
        settings.model_copy(
            update={
                "policy_source": "database",
                "policy_paths": [tmp_path / "no-such-folder"],  # the files are not read
                "database": settings.database.model_copy(update={"url": SecretStr(pg_url)}),
            }
        ),
        redis_url,
    )
    process = build_api(cfg)
    try:
        assert process.submitter.catalog.known() == {"testworld"}  # live ones only
    finally:
        process.close()
