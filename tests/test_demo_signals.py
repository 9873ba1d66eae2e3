"""``moderation demo`` stopped by SIGTERM (a process manager, ``timeout``) or SIGHUP (a closed
terminal), not Ctrl-C: it stops everything it started. No child (worker, embedded valkey,
embedded PostgreSQL) survives it, and the API's and valkey's ports are free again."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.test_demo import demo_dir  # noqa: F401 (a fixture: outside pytest's private root)

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.xdist_group("demo_signals")


def _port_free(port: int) -> bool:
    """Nothing listens on ``port``: a server restarted now could bind it (SO_REUSEADDR, as
    servers do: connections of the stopped one may linger in TIME_WAIT)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _started_by(demo: psutil.Process, data: Path) -> list[psutil.Process]:
    """The demo's descendants, and the processes working on its data folder (pg_ctl starts
    PostgreSQL detached from its caller)."""
    found = {p.pid: p for p in demo.children(recursive=True)}
    for p in psutil.process_iter(["cmdline"]):
        if p.pid != demo.pid and str(data) in " ".join(p.info["cmdline"] or []):
            found[p.pid] = p
    return list(found.values())


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_signal_stops_the_demo_and_everything_it_started(
    sig: signal.Signals,
    demo_dir: Path,  # noqa: F811
) -> None:
    tmp_path = demo_dir  # the embedded PostgreSQL's user must reach it
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODERATION_")}
    env.update(
        {
            "MODERATION_MODEL__CHECKPOINT": str(tmp_path / "missing-weights.safetensors"),
            "MODERATION_CACHE_DIR": str(tmp_path / "cache"),
            "MODERATION_AUDIT__LOCAL_DIR": str(tmp_path / "audit"),
            "MODERATION_AUDIT__SPOOL_DIR": str(tmp_path / "spool"),
            "PYTHONPATH": str(ROOT),
            "COLUMNS": "200",
        }
    )
    stderr = (tmp_path / "demo.err").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moderation.cli", "demo", "--samples", "1", "--port", "0"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )
    children: list[psutil.Process] = []
    try:
        assert proc.stdout is not None
        api_port = None
        for line in proc.stdout:
            if match := re.search(r"API: http://127\.0\.0\.1:(\d+)", line):
                api_port = int(match.group(1))
            if "The API stays up" in line:
                break
        log = (tmp_path / "demo.err").read_text()
        assert api_port is not None, log[-3000:]
        valkey = re.search(r"embedded valkey at redis://[^:]+:(\d+)", log)
        assert valkey is not None, log[-3000:]
        children = _started_by(psutil.Process(proc.pid), tmp_path / ".moderation")
        names = " ".join(" ".join(c.cmdline()) for c in children)
        assert "worker" in names and "postgres" in names and "valkey" in names, names
        proc.send_signal(sig)
        assert proc.wait(60) == 0, (tmp_path / "demo.err").read_text()[-3000:]
        _gone, alive = psutil.wait_procs(children, timeout=30)
        assert not alive, [" ".join(p.cmdline()) for p in alive]
        assert _port_free(api_port) and _port_free(int(valkey.group(1)))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for child in children:
            if child.is_running():
                child.kill()
        stderr.close()


def test_the_worker_is_stopped_even_when_the_demo_is_killed(tmp_path: Path) -> None:
    """``kill -9`` of the demo: no cleanup can run, but its worker gets SIGTERM from the kernel
    (``PR_SET_PDEATHSIG``) and does not keep consuming jobs on its own."""
    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux-only")
    script = (
        "import subprocess, sys, time\n"
        "from moderation.cli.demo import _die_with_parent\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'],\n"
        "                         start_new_session=True, preexec_fn=_die_with_parent())\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(300)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert parent.stdout is not None
    child = psutil.Process(int(parent.stdout.readline()))
    try:
        parent.kill()
        parent.wait(10)
        deadline = time.monotonic() + 20
        while child.is_running() and child.status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline, "the child outlived its killed parent"
            time.sleep(0.05)
    finally:
        if child.is_running():
            child.kill()
