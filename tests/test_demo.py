"""The README's main job, ``moderation demo``, as a real process on embedded defaults: no Redis,
S3 or GPU configured; the configured weights are missing, so it must say so and fall back."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_demo_runs_everything_embedded(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODERATION_")}
    env.update(
        {
            # Deterministic fallback whether or not this machine could reach the model hub.
            "MODERATION_MODEL__CHECKPOINT": str(tmp_path / "missing-weights.safetensors"),
            "MODERATION_CACHE_DIR": str(tmp_path / "cache"),
            "MODERATION_AUDIT__LOCAL_DIR": str(tmp_path / "audit"),
            "MODERATION_AUDIT__SPOOL_DIR": str(tmp_path / "spool"),
            "COLUMNS": "200",
        }
    )
    proc = subprocess.run(
        [sys.executable, "-m", "moderation.cli", "demo", "--no-serve", "--port", "0"],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "embedded valkey" in proc.stderr
    assert "missing-weights.safetensors does not exist" in proc.stderr
    assert "TEST model" in proc.stderr
    rows = [line for line in proc.stdout.splitlines() if "│" in line]
    table = "\n".join(rows)
    for band in ("block", "review", "allow"):
        # every sample row shows its expected band and the decision the pipeline made
        assert len(re.findall(rf"│\s*{band}\s*│\s*{band}\s*│", table)) == 2, table
    assert table.count("image_corrupt") >= 2 and "image_too_large" in table, table
    assert "Reviewer page:" in proc.stdout and "user demo" in proc.stdout
