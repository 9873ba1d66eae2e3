"""The embedding history end to end, with real components: a real worker process writes the
decided jobs of two tenants as Parquet shards to an S3 server (moto_server) and flushes its
buffer on SIGTERM; ``moderation policy backtest`` then scores them here and fanned out as Celery
tasks on a real worker, with the same report, for every tenant or one; a worker serving other
live policies refuses its tasks."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from typer.testing import CliRunner

from moderation import testmodel
from moderation.adapters.policy_files import edit_policy_text
from moderation.adapters.redis_jobs import RedisJobStore
from moderation.cli import app
from moderation.client import ModerationClient
from moderation.compose.stores import open_history
from moderation.core.policy import PolicyMode
from moderation.settings import ApiKey, Settings
from moderation.testmodel import world
from moderation.testmodel.samples import encoded
from tests.pipeline_support import WorkerProcess, pipeline_settings, start_api, stop_api
from tests.servers import MotoServer

pytestmark = pytest.mark.slow
TESTWORLD = testmodel.POLICY_PATH.read_text()
ACME, GLOBEX = "a" * 40, "g" * 40


@pytest.fixture
def history_pipeline(
    settings: Settings, redis_url: str, s3_server: MotoServer, tmp_path: Path
) -> Iterator[dict[str, Any]]:
    bucket = f"history-{uuid.uuid4().hex[:10]}"
    s3_server.client().create_bucket(Bucket=bucket)
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "testworld.yaml").write_text(TESTWORLD)
    candidate = tmp_path / "testworld.v2.yaml"
    candidate.write_text(
        edit_policy_text(
            TESTWORLD,
            version=2,
            mode=PolicyMode.SHADOW,
            thresholds={"contraband_symbol": (0.05, 0.1), "restricted_logo": (0.9, 0.99)},
        )
    )
    base = settings.model_copy(
        update={
            "policy_paths": [folder],
            "s3": settings.s3.model_copy(
                update={
                    "endpoint_url": s3_server.url,
                    "access_key_id": SecretStr("testing"),
                    "secret_access_key": SecretStr("testing"),
                }
            ),
            "blobs": settings.blobs.model_copy(update={"bucket": bucket}),
            # shards by size (8 rows); the rest only when the worker stops
            "embeddings": settings.embeddings.model_copy(
                update={"store": True, "flush_rows": 8, "flush_interval_s": 3600.0}
            ),
            "api_keys": [
                ApiKey(tenant="acme", key=SecretStr(ACME)),
                ApiKey(tenant="globex", key=SecretStr(GLOBEX)),
            ],
        }
    )
    cfg = pipeline_settings(base, redis_url)
    store = RedisJobStore.from_url(redis_url, cfg.queue)
    workers: list[WorkerProcess] = []
    server, url = start_api(cfg)

    def start_worker() -> WorkerProcess:
        worker = WorkerProcess(cfg, tmp_path / f"worker-{len(workers)}.log").start()
        workers.append(worker)
        worker.wait_ready(store)
        return worker

    try:
        yield {
            "settings": cfg,
            "url": url,
            "candidate": candidate,
            "folder": folder,
            "start_worker": start_worker,
        }
    finally:
        stop_api(server)
        for worker in workers:
            worker.stop()


def _backtest(cfg: Settings, candidate: Path, *extra: str, as_json: bool = True) -> tuple[int, str]:
    env = {**cfg.to_env({}), "COLUMNS": "200", "MODERATION_LOG_LEVEL": "WARNING"}
    args = ["policy", "backtest", str(candidate), "--since", "1h", "--examples", "100"]
    args += ["--json"] if as_json else []
    done = CliRunner().invoke(app, [*args, *extra], env=env, catch_exceptions=False)
    return done.exit_code, done.output


def _report(cfg: Settings, candidate: Path, *extra: str) -> dict[str, Any]:
    code, output = _backtest(cfg, candidate, *extra)
    assert code == 0, output
    report: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    return report


def _comparable(report: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in report.items() if k not in {"seconds", "where", "since"}}


def test_workers_write_shards_flush_on_sigterm_and_backtests_fan_out_with_the_same_report(
    history_pipeline: dict[str, Any],
) -> None:
    cfg: Settings = history_pipeline["settings"]
    candidate: Path = history_pipeline["candidate"]
    images = [
        encoded(im)
        for band in ("block", "review", "allow")
        for im, _ in world.sample_images(band, 10, 17)
    ]
    first = history_pipeline["start_worker"]()
    with ModerationClient(history_pipeline["url"], api_key=ACME) as acme:
        acme_ids = acme.submit_many(images[::2])
        acme.wait_many(acme_ids, 120)
    with ModerationClient(history_pipeline["url"], api_key=GLOBEX) as globex:
        globex_ids = globex.submit_many(images[1::2])
        globex.wait_many(globex_ids, 120)

    # SIGTERM: the worker writes what its buffer holds before it exits
    first.stop()
    history = open_history(cfg)
    keys = [k.key for k in history.keys(0)]
    rows = [row for _, batch in history.read_many(keys) for row in batch.items()]
    assert len(rows) == 30 and len(keys) >= 4  # 3 shards of 8 by size, the rest at SIGTERM
    assert {r.job_id for r in rows if r.tenant == "acme"} == {f"acme/{i}" for i in acme_ids}
    assert {r.job_id for r in rows if r.tenant == "globex"} == {f"globex/{i}" for i in globex_ids}
    assert all("acme" not in k and "globex" not in k for k in keys)  # keys name no tenant

    # the same report here and fanned out to a worker, one task per shard
    history_pipeline["start_worker"]()
    local = _report(cfg, candidate, "--on", "local", "--shards-per-task", "1")
    fanned = _report(cfg, candidate, "--on", "workers", "--shards-per-task", "1")
    assert (local["where"], fanned["where"]) == ("local", "workers")
    assert _comparable(local) == _comparable(fanned)
    assert fanned["scored"] == 30 and fanned["groups"] == len(keys) and fanned["changed"] > 0
    assert {c["tenant"] for c in fanned["examples"]} == {"acme", "globex"}
    code, text = _backtest(cfg, candidate, "--on", "local", as_json=False)  # for people
    assert code == 0 and f"{local['changed']} decisions change" in text
    assert "transitions" in text and "examples (earliest)" in text
    # one tenant only, both ways
    only = _report(cfg, candidate, "--on", "workers", "--tenant", "globex")
    assert _comparable(only) == _comparable(
        _report(cfg, candidate, "--on", "local", "--tenant", "globex")
    )
    assert only["scored"] == 15 and only["tenant"] == "globex"
    assert {c["job_id"].split("/")[0] for c in only["examples"]} <= {"globex"}

    # a worker serving other live policies than the CLI's refuses rather than miscount
    other = history_pipeline["folder"].parent / "other-policies"
    shutil.copytree(history_pipeline["folder"], other)
    (other / "testworld.yaml").write_text(
        edit_policy_text(TESTWORLD, version=1, thresholds={"restricted_logo": (0.2, 0.3)})
    )
    code, output = _backtest(
        cfg.model_copy(update={"policy_paths": [other]}), candidate, "--on", "workers"
    )
    assert code != 0 and "other live policies" in output
