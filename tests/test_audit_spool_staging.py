"""A ``.new-*`` chain staging folder left by a process that died between creating and renaming
its chain is removed by the next audit log opened on the spool; a young one, or one whose lock
is held (a process starting right now), is left alone."""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from moderation.adapters.audit_log import STALE_STAGING_S
from moderation.compose.stores import open_audit
from moderation.settings import Settings


def _staging(spool: Path, name: str, age_s: float) -> Path:
    folder = spool / f".new-{name}"
    folder.mkdir(parents=True)
    (folder / "lock").touch()
    then = time.time() - age_s
    os.utime(folder, (then, then))
    return folder


def test_abandoned_staging_folders_are_removed_live_ones_kept(settings: Settings) -> None:
    spool = settings.audit.spool_dir
    abandoned = _staging(spool, "abandoned", STALE_STAGING_S * 2)
    young = _staging(spool, "young", 0)
    held = _staging(spool, "held", STALE_STAGING_S * 2)
    fd = os.open(held / "lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another process is creating this chain
    try:
        with open_audit(settings) as audit:
            assert (spool / f"chain-{audit.chain_id}").is_dir()
        assert not abandoned.exists()
        assert young.is_dir() and held.is_dir()
    finally:
        os.close(fd)
