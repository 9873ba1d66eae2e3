"""Peak memory of the API while it streams a large multipart part to S3 (issue 19).

A child process feeds ``--mib`` MiB in 64 KiB chunks (what the multipart parser hands on) to the
API's :class:`~moderation.pipeline.uploads.UploadBuffer` over the S3 object store of a real
``moto_server`` (HTTP), then commits: the part goes to S3 as a multipart upload of 8 MiB parts.
Its peak RSS above the baseline is what one streamed upload costs the API, whatever its size.
For contrast, ``bytes`` holds the same part in memory, as the API did before.

Prints JSON. Run under the suite lock::

    flock /work/notes/suite.lock .venv/bin/python bench/upload_memory.py [--mib 512]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import cast

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

_CHILD = """
import json, resource, sys
from pydantic import SecretStr
from moderation.adapters.s3_blobs import S3BlobStore
from moderation.pipeline.uploads import UploadBuffer
from moderation.settings import BlobSettings, S3Settings
url, mib, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
store = S3BlobStore(
    S3Settings(endpoint_url=url, access_key_id=SecretStr("t"), secret_access_key=SecretStr("t")),
    BlobSettings(bucket="bench", prefix="blobs/"),
)
store.client.create_bucket(Bucket="bench")
chunk = bytes(range(256)) * 256  # 64 KiB
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if mode == "streamed":
    buffer = UploadBuffer(store, memory_bytes=8 * 1024**2, max_bytes=mib * 1024**2)
    for _ in range(mib * 16):
        buffer.write(chunk)
    stored = buffer.finish()
    size = stored.size
    buffer.abort()  # deletes it again
else:
    held = bytearray()
    for _ in range(mib * 16):
        held += chunk
    data = bytes(held)
    del held
    size = len(data)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({
    "part_mib": size // 1024**2,
    "peak_rss_mib": round(peak / 1024, 1),
    "baseline_mib": round(base / 1024, 1),
    "added_mib": round((peak - base) / 1024, 1),
}))
"""


def measure(url: str, mib: int, mode: str) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, url, str(mib), mode],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return cast("dict[str, object]", json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=512)
    args = parser.parse_args()
    from tests.servers import MotoServer

    server = MotoServer()
    server.start()
    try:
        report = {
            "benchmark": "upload_memory",
            "machine": {
                "cpu": platform.processor() or platform.machine(),
                "cores": os.cpu_count(),
                "note": "shared, busy development machine",
            },
            "streamed": measure(server.url, args.mib, "streamed"),
            "bytes": measure(server.url, args.mib, "bytes"),
        }
    finally:
        server.stop()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
