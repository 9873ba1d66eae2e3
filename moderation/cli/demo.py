"""``moderation demo``: the one-command default.

With no ``MODERATION_REDIS_URL`` it starts an embedded valkey server (its data, with an
append-only file, in ``embedded_redis_dir``: results and the review queue survive a restart);
with no ``MODERATION_DATABASE__URL`` an embedded PostgreSQL (data in ``database.embedded_dir``,
schema migrated at start); a worker process and the API, submits the test-world sample images
plus a few hostile inputs, prints their verdicts and leaves the API running until Ctrl-C. It
says which world it is in: the bundled test model with the test-world policy (the samples'
expected decisions apply), or a real model with the configured policies (they do not: the
samples are drawings of shapes).

Ctrl-C, SIGTERM and SIGHUP all stop what it started (worker, embedded valkey and PostgreSQL);
the worker also gets SIGTERM if the demo itself is killed (``PR_SET_PDEATHSIG`` on Linux).
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Annotated, Any

import typer
from pydantic import SecretStr
from rich.table import Table

from moderation.cli.common import err, fail, load_settings, out, warn_insecure
from moderation.cli.score import DECISION_STYLE
from moderation.exceptions import ModerationError
from moderation.ports import ReviewerStore, WorkerRegistry

__all__ = ["demo"]


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _demo_reviewer(reviewers: ReviewerStore) -> str | None:
    """A reviewer account ``demo`` with a fresh random password (None if it already exists)."""
    from moderation.adapters.passwords import hash_password
    from moderation.core.reviewers import ReviewerAccount, Role

    password = secrets.token_urlsafe(9)
    try:
        reviewers.create(
            ReviewerAccount(
                username="demo",
                role=Role.REVIEWER,
                password_hash=hash_password(password),
                disabled=False,
                created_at=time.time(),
            )
        )
    except ModerationError:
        return None
    return password


def _wait_for_worker(
    registry: WorkerRegistry, proc: subprocess.Popen[bytes], timeout: float
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        workers = registry.workers()
        if workers:
            return workers[0]
        if proc.poll() is not None:
            raise ModerationError(f"the worker exited with status {proc.returncode}")
        time.sleep(0.2)
    raise ModerationError(f"no worker became ready within {timeout:.0f}s")


def demo_world(model_id: str, policies: Any) -> tuple[bool, str]:
    """(test world?, a line that says which world the demo runs in) from the worker's model
    identity and the policy versions it serves."""
    from moderation import testmodel

    served = ", ".join(f"{k} v{v}" for k, v in sorted(dict(policies or {}).items())) or "none"
    if model_id.startswith(f"{testmodel.MODEL_NAME}@") or model_id == testmodel.MODEL_NAME:
        return True, (
            f"World: TEST. The bundled test model ({testmodel.MODEL_NAME}) scores the "
            f"test-world policy ({served}): red stars, black crosses and blue rings are "
            "forbidden. The 'expected' column is what this world should decide."
        )
    return False, (
        f"World: REAL. Model {model_id} scores the configured policies ({served}). The sample "
        "images are drawings of coloured shapes made for the test model, so their expected "
        "decisions do not apply and are not shown; submit your own images to judge the model."
    )


def _stop_process(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


class _Stop(Exception):
    """SIGTERM or SIGHUP reached the demo: stop everything it started, as Ctrl-C does."""


def _stop_on_signal(signum: int, _frame: object) -> None:
    # Once: a second signal must not interrupt the cleanup it started.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    raise _Stop(signal.Signals(signum).name)


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the child SIGTERM'd when the demo dies, even by SIGKILL
    (``PR_SET_PDEATHSIG``; Linux only, else None). libc is loaded here, in the parent: the child
    only calls it (nothing to import or lock between fork and exec)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGTERM))

    return preexec


def demo(
    port: Annotated[int | None, typer.Option(help="API port (0: any free port)")] = None,
    serve: Annotated[bool, typer.Option(help="Keep the API running after the demo")] = True,
    samples: Annotated[int, typer.Option(min=1, max=50, help="Images per band")] = 2,
) -> None:
    """Start everything (embedded Redis if none is configured), moderate sample images, print
    their verdicts, and keep the API running until Ctrl-C."""
    from moderation.adapters.embedded_redis import EmbeddedRedis
    from moderation.adapters.postgres.embedded import EmbeddedPostgres
    from moderation.api.server import serve_in_thread
    from moderation.app import create_app
    from moderation.client import ModerationClient
    from moderation.compose.api import ApiProcess, build_api
    from moderation.compose.stores import open_worker_registry
    from moderation.testmodel.samples import demo_inputs

    settings = load_settings()
    if "environment" not in settings.model_fields_set:
        # The demo is a development tool: its embedded defaults (open API, development secrets)
        # are refused in production. MODERATION_ENVIRONMENT=production makes it fail closed too.
        settings = settings.model_copy(update={"environment": "development"})
    warn_insecure(settings)
    # SIGTERM (a process manager, `timeout`) and SIGHUP (a closed terminal) stop the children
    # too, as Ctrl-C does: the `finally` below runs for each of them.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _stop_on_signal)
    embedded: EmbeddedRedis | None = None
    embedded_pg: EmbeddedPostgres | None = None
    worker_proc: subprocess.Popen[bytes] | None = None
    server: Any = None
    process: ApiProcess | None = None
    os.environ.setdefault(
        "PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="moderation-metrics-")
    )
    try:
        if not settings.redis_url:
            embedded = EmbeddedRedis(data_dir=settings.embedded_redis_dir, persist=True)
            # The demo keeps its embeddings (shards in the object store: .moderation/blobs by
            # default, written when the worker stops) so that `moderation policy backtest` has a
            # history to re-score (off by default elsewhere: derived user data).
            settings = settings.model_copy(
                update={
                    "redis_url": embedded.start(),
                    "embeddings": settings.embeddings.model_copy(update={"store": True}),
                }
            )
            err.print(
                f"no MODERATION_REDIS_URL: started an embedded valkey at {settings.redis_url} "
                f"(data in {settings.embedded_redis_dir}, append-only file)",
                highlight=False,
            )
        if settings.database.url is None:
            embedded_pg = EmbeddedPostgres(data_dir=settings.database.embedded_dir)
            pg_url = embedded_pg.start()
            settings = settings.model_copy(
                update={"database": settings.database.model_copy(update={"url": SecretStr(pg_url)})}
            )
            err.print(
                "no MODERATION_DATABASE__URL: started an embedded PostgreSQL "
                f"(data in {settings.database.embedded_dir})",
                highlight=False,
            )
        registry = open_worker_registry(settings)
        worker_proc = subprocess.Popen(
            [sys.executable, "-m", "moderation.cli", "worker", "--loglevel", "WARNING"],
            env=settings.to_env(),
            start_new_session=True,
            preexec_fn=_die_with_parent(),
        )
        err.print("starting a worker (loading the model)...")
        info = _wait_for_worker(registry, worker_proc, timeout=300)
        if info.get("model_note"):
            err.print(f"[bold yellow]warning[/]: {info['model_note']}", highlight=False)
        err.print(
            f"worker ready: model {info.get('model')}, policies {info.get('policies')}",
            highlight=False,
        )
        test_world, world = demo_world(str(info.get("model", "")), info.get("policies"))
        out.print(f"[bold]{world}[/]", highlight=False)
        api_port = settings.api_port if port is None else (port or _free_port())
        if port is None and not _port_free(settings.api_host, api_port):
            api_port = _free_port()
            err.print(f"port {settings.api_port} is busy: serving on {api_port}")
        process = build_api(settings)
        server = serve_in_thread(create_app(process), api_port, host=settings.api_host)
        demo_password = _demo_reviewer(process.reviewers)
        if embedded_pg is not None and embedded_pg.had_data:
            waiting = sum(s.waiting for s in process.review_queue.stats())
            err.print(
                f"kept from earlier runs: their results and {waiting} review item(s) waiting "
                f"(delete {settings.database.embedded_dir} to start afresh)",
                highlight=False,
            )
        base = f"http://{settings.api_host}:{api_port}"
        inputs = demo_inputs(samples)
        with ModerationClient(base) as client:
            ids = client.submit_many([data for _, _, data in inputs])
            results = client.wait_many(ids, timeout=300)
        title = "Verdicts (test world)" if test_world else "Verdicts (real model)"
        table = Table("input", "expected", "decision", "score", "why", title=title)
        for (label, expected_band, _), result in zip(inputs, results, strict=True):
            expected = expected_band if test_world or expected_band == "error" else "n/a"
            if result.verdict is not None:
                v = result.verdict
                decision = v.decision.value
                table.add_row(
                    label,
                    expected,
                    f"[{DECISION_STYLE[decision]}]{decision}[/]",
                    f"{v.score:.3f}",
                    v.explain(),
                )
            else:
                error = result.error
                table.add_row(
                    label,
                    expected,
                    "[red]error[/]",
                    "",
                    f"{error.code}: {error.message}" if error else "",
                )
        out.print(table)
        out.print(f"API: {base}  (docs {base}/docs, metrics {base}/metrics)")
        if demo_password:
            out.print(
                f"Reviewer page: {base}/review/  (user [bold]demo[/], password "
                f"[bold]{demo_password}[/]: the review-band images are waiting there)",
                highlight=False,
            )
        if serve:
            out.print("The API stays up; press Ctrl-C to stop.")
            while not server.should_exit:
                time.sleep(0.5)
    except (KeyboardInterrupt, _Stop):
        pass
    except ModerationError as exc:
        raise fail(exc) from exc
    finally:
        if server is not None:
            server.should_exit = True
        _stop_process(worker_proc)
        if process is not None:
            process.close()
        if embedded is not None:
            embedded.stop()
        if embedded_pg is not None:
            embedded_pg.stop()
