"""Pipeline commands: ``moderation demo | api | worker | submit | dlq``.

``moderation demo`` is the one-command default: with no ``MODERATION_REDIS_URL`` it starts an
embedded valkey server, a worker process and the API, submits the test-world sample images plus a
few hostile inputs, prints their verdicts and leaves the API running until Ctrl-C.
"""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel, SecretStr
from rich.table import Table

from moderation.cli_common import err, out
from moderation.cli_common import fail as _fail
from moderation.cli_common import load_settings as _settings
from moderation.exceptions import ModerationError
from moderation.settings import Settings

__all__ = ["bomb_png", "demo_inputs", "pipeline_app", "settings_env"]

pipeline_app = typer.Typer(no_args_is_help=True, help="Queue pipeline: API, workers, demo.")
dlq_app = typer.Typer(no_args_is_help=True, help="Dead-letter list: inspect, requeue, purge.")
pipeline_app.add_typer(dlq_app, name="dlq")

log = logging.getLogger(__name__)




def _plain(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, BaseModel):
        return {k: _plain(getattr(value, k)) for k in type(value).model_fields}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def settings_env(settings: Settings, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment that makes ``Settings()`` in a child process equal ``settings`` (secrets
    included). Existing ``MODERATION_*`` variables of ``base`` are dropped."""
    env = {k: v for k, v in (base if base is not None else os.environ).items()
           if not k.startswith("MODERATION_")}
    for name in type(settings).model_fields:
        value = _plain(getattr(settings, name))
        if value is None:
            continue
        key = f"MODERATION_{name.upper()}"
        env[key] = value if isinstance(value, str) else json.dumps(value)
    return env


# --- worker / api ----------------------------------------------------------------------------


@pipeline_app.command()
def worker(
    concurrency: Annotated[int | None, typer.Option(help="Threads (default 2 x batch)")] = None,
    loglevel: Annotated[str, typer.Option()] = "INFO",
) -> None:
    """Run a Celery worker (thread pool + in-process batcher) on the Redis broker."""
    from workers.celery_app import configure

    settings = _settings()
    _warn_insecure(settings)
    try:
        celery = configure(settings)
    except ModerationError as exc:
        raise _fail(exc) from exc
    q = settings.queue
    if q.worker_metrics_port:
        from moderation.metrics import serve

        serve(q.worker_metrics_port)
    argv = [
        "worker", "--pool", "threads",
        "--concurrency", str(concurrency or q.concurrency or 2 * q.batch_size),
        "--queues", f"{q.queue_name},{q.callback_queue_name}",
        "--hostname", f"moderation-{os.getpid()}@%h", "--loglevel", loglevel,
        "--without-gossip", "--without-mingle",
    ]
    celery.worker_main(argv)


@pipeline_app.command()
def api(
    host: Annotated[str | None, typer.Option()] = None,
    port: Annotated[int | None, typer.Option()] = None,
) -> None:
    """Serve the HTTP API (uvicorn)."""
    import uvicorn

    from moderation.adapters.audit_log import open_audit_sink
    from moderation.api import create_app

    settings = _settings()
    _warn_insecure(settings)
    audit = open_audit_sink(settings)  # human review decisions: this process's own chain
    try:
        app = create_app(settings, audit=audit)
        uvicorn.run(app, host=host or settings.api_host, port=port or settings.api_port,
                    log_level=settings.log_level.lower())
    except ModerationError as exc:
        raise _fail(exc) from exc
    finally:
        audit.close()


# --- submit ----------------------------------------------------------------------------------


def _warn_insecure(settings: Settings) -> None:
    for name in settings.insecure_defaults():
        err.print(f"[bold yellow]warning[/]: {name} is at its development default; set "
                  "MODERATION_" + name.split(" ")[0].upper().replace(".", "__")
                  + " before production use", highlight=False)


def _client_key(settings: Settings) -> str | None:
    """The API key the CLI client sends: the first configured one, if any."""
    return settings.api_keys[0].get_secret_value() if settings.api_keys else None


def _api_url(settings: Settings, url: str | None) -> str:
    return url or f"http://{settings.api_host}:{settings.api_port}"


@pipeline_app.command()
def submit(
    images: Annotated[
        list[str], typer.Argument(help="Files (sent inline) or s3:// / https:// refs")
    ],
    policy: Annotated[list[str] | None, typer.Option("--policy", "-p")] = None,
    api_url: Annotated[str | None, typer.Option("--api")] = None,
    wait: Annotated[bool, typer.Option(help="Wait for and print the results")] = True,
    timeout: Annotated[float, typer.Option()] = 120.0,
) -> None:
    """Submit images to the API; print job ids (and results with --wait)."""
    from moderation.client import ImageInput, ModerationClient

    settings = _settings()
    inputs: list[ImageInput] = [Path(i) if Path(i).is_file() else i for i in images]
    try:
        with ModerationClient(_api_url(settings, api_url),
                              api_key=_client_key(settings)) as client:
            ids = client.submit_many(inputs, policies=policy)
            if not wait:
                for ref, job_id in zip(images, ids, strict=True):
                    print(json.dumps({"input": ref, "id": job_id}))
                return
            failed = 0
            for ref, result in zip(images, client.wait_many(ids, timeout), strict=True):
                failed += result.error is not None
                print(json.dumps({"input": ref, **result.model_dump(mode="json")}))
    except ModerationError as exc:
        raise _fail(exc) from exc
    raise typer.Exit(1 if failed else 0)


# --- dlq -------------------------------------------------------------------------------------


def _store(settings: Settings) -> Any:
    from moderation.adapters.job_store import JobStore

    if not settings.redis_url:
        raise _fail(ModerationError("set MODERATION_REDIS_URL"))
    return JobStore.from_url(settings.redis_url, settings.queue)


@dlq_app.command("list")
def dlq_list() -> None:
    """Print dead-lettered jobs as JSON lines."""
    settings = _settings()
    try:
        for entry in _store(settings).dead_letters():
            print(entry.model_dump_json())
    except ModerationError as exc:
        raise _fail(exc) from exc


@dlq_app.command("requeue")
def dlq_requeue(
    job_ids: Annotated[list[str] | None, typer.Argument(help="Default: every dead letter")] = None,
) -> None:
    """Put dead-lettered jobs back on the queue (delivery count reset)."""
    from workers.celery_app import create_celery

    settings = _settings()
    try:
        store = _store(settings)
        celery = create_celery(settings)
        wanted = job_ids or [e.job_id for e in store.dead_letters()]
        requeued = 0
        for job_id in wanted:
            job = store.take_dead_letter(job_id)
            if job is None:
                err.print(f"[yellow]skip[/] {job_id}: not dead-lettered (or expired)")
                continue
            celery.send_task("moderation.moderate", args=[job_id], task_id=job_id,
                             queue=settings.queue.queue_name, ignore_result=True)
            requeued += 1
    except ModerationError as exc:
        raise _fail(exc) from exc
    out.print(f"requeued {requeued} job(s)")


@dlq_app.command("purge")
def dlq_purge() -> None:
    """Forget every dead letter (their error results stay until they expire)."""
    settings = _settings()
    try:
        n = _store(settings).purge_dead_letters()
    except ModerationError as exc:
        raise _fail(exc) from exc
    out.print(f"purged {n} dead letter(s)")


# --- demo ------------------------------------------------------------------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def bomb_png(side: int = 60_000) -> bytes:
    """A tiny PNG whose header claims ``side`` x ``side`` RGB pixels (a decompression bomb)."""
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    body = zlib.compress(b"\0" * 4096, 9)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", body)
            + _png_chunk(b"IEND", b""))


def demo_inputs(n_per_band: int = 2, seed: int = 7) -> list[tuple[str, str, bytes]]:
    """(label, expected, bytes): test-world samples per band plus hostile inputs."""
    from moderation.testmodel import sample_images

    items: list[tuple[str, str, bytes]] = []
    for band in ("block", "review", "allow"):
        for image, label in sample_images(band, n_per_band, seed):
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            items.append((label, band, buffer.getvalue()))
    jpeg = io.BytesIO()
    sample_images("block", 1, seed + 1)[0][0].save(jpeg, format="JPEG", quality=90)
    items.append(("truncated JPEG", "error", jpeg.getvalue()[: len(jpeg.getvalue()) // 3]))
    items.append(("decompression bomb (60000x60000 PNG)", "error", bomb_png()))
    items.append(("not an image (text)", "error", b"hello, this is not an image\n" * 10))
    return items


_STYLE = {"allow": "green", "review": "yellow", "block": "bold red", "error": "red"}


def _port_free(host: str, port: int) -> bool:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _demo_reviewer(settings: Settings) -> str | None:
    """A reviewer account ``demo`` with a fresh random password (None if it already exists)."""
    import secrets

    from moderation.adapters.redis_review import RedisReviewerStore, connect
    from moderation.review.auth import ReviewerAccount, Role, hash_password

    password = secrets.token_urlsafe(9)
    users = RedisReviewerStore(connect(settings.redis_url or ""),
                               prefix=settings.review.key_prefix)
    try:
        users.create(ReviewerAccount(username="demo", role=Role.REVIEWER,
                                     password_hash=hash_password(password), disabled=False,
                                     created_at=time.time()))
    except ModerationError:
        return None
    return password


def _wait_for_worker(store: Any, proc: subprocess.Popen[bytes], timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        workers: list[dict[str, Any]] = store.workers()
        if workers:
            return workers[0]
        if proc.poll() is not None:
            raise ModerationError(f"the worker exited with status {proc.returncode}")
        time.sleep(0.2)
    raise ModerationError(f"no worker became ready within {timeout:.0f}s")


def _stop_process(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


@pipeline_app.command()
def demo(
    port: Annotated[int | None, typer.Option(help="API port (0: any free port)")] = None,
    serve: Annotated[bool, typer.Option(help="Keep the API running after the demo")] = True,
    samples: Annotated[int, typer.Option(min=1, max=50, help="Images per band")] = 2,
) -> None:
    """Start everything (embedded Redis if none is configured), moderate sample images, print
    their verdicts, and keep the API running until Ctrl-C."""
    from moderation.adapters.embedded_redis import EmbeddedRedis
    from moderation.adapters.job_store import JobStore
    from moderation.client import ModerationClient

    settings = _settings()
    embedded: EmbeddedRedis | None = None
    worker_proc: subprocess.Popen[bytes] | None = None
    server: Any = None
    metrics_dir = tempfile.mkdtemp(prefix="moderation-metrics-")
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", metrics_dir)
    try:
        if not settings.redis_url:
            embedded = EmbeddedRedis(data_dir=Path(tempfile.mkdtemp(prefix="moderation-redis-")))
            settings = settings.model_copy(update={"redis_url": embedded.start()})
            err.print(f"no MODERATION_REDIS_URL: started an embedded valkey at "
                      f"{settings.redis_url}", highlight=False)
        store = JobStore.from_url(settings.redis_url or "", settings.queue)
        worker_proc = subprocess.Popen(
            [sys.executable, "-m", "moderation.cli", "worker", "--loglevel", "WARNING"],
            env=settings_env(settings), start_new_session=True,
        )
        err.print("starting a worker (loading the model)...")
        info = _wait_for_worker(store, worker_proc, timeout=300)
        if info.get("model_note"):
            err.print(f"[bold yellow]warning[/]: {info['model_note']}", highlight=False)
        err.print(f"worker ready: model {info.get('model')}, policies {info.get('policies')}",
                  highlight=False)
        api_port = settings.api_port if port is None else (port or _free_port())
        if port is None and not _port_free(settings.api_host, api_port):
            api_port = _free_port()
            err.print(f"port {settings.api_port} is busy: serving on {api_port}")
        server = run_api_server(settings, api_port, host=settings.api_host)
        demo_password = _demo_reviewer(settings)
        base = f"http://{settings.api_host}:{api_port}"
        inputs = demo_inputs(samples)
        with ModerationClient(base) as client:
            ids = client.submit_many([data for _, _, data in inputs])
            results = client.wait_many(ids, timeout=300)
        table = Table("input", "expected", "decision", "score", "why", title="Verdicts")
        for (label, expected, _), result in zip(inputs, results, strict=True):
            if result.verdict is not None:
                v = result.verdict
                decision = v.decision.value
                table.add_row(label, expected, f"[{_STYLE[decision]}]{decision}[/]",
                              f"{v.score:.3f}", v.explain())
            else:
                error = result.error
                table.add_row(label, expected, "[red]error[/]", "",
                              f"{error.code}: {error.message}" if error else "")
        out.print(table)
        out.print(f"API: {base}  (docs {base}/docs, metrics {base}/metrics)")
        if demo_password:
            out.print(f"Reviewer page: {base}/review/  (user [bold]demo[/], password "
                      f"[bold]{demo_password}[/]: the review-band images are waiting there)",
                      highlight=False)
        if serve:
            out.print("The API stays up; press Ctrl-C to stop.")
            while not server.should_exit:
                time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    except ModerationError as exc:
        raise _fail(exc) from exc
    finally:
        if server is not None:
            server.should_exit = True
        _stop_process(worker_proc)
        if embedded is not None:
            embedded.stop()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_api_server(settings: Settings, port: int, *, host: str = "127.0.0.1") -> Any:
    """Start the API in a thread on ``port``; returns the uvicorn Server (``should_exit`` stops
    it). For tests and benchmarks."""
    import uvicorn

    from moderation.adapters.audit_log import open_audit_sink
    from moderation.api import create_app

    audit = open_audit_sink(settings)
    server = uvicorn.Server(uvicorn.Config(create_app(settings, audit=audit), host=host,
                                           port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="api", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise ModerationError(f"the API could not start on port {port}")
        time.sleep(0.05)
    return server

