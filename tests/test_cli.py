"""The ``moderation`` CLI end to end on the test model (in-process runner + one real subprocess)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from moderation import testmodel
from moderation.cli import app

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {
        "MODERATION_MODEL__ARCHITECTURE": testmodel.MODEL_NAME,
        "MODERATION_MODEL__CHECKPOINT": str(testmodel.CHECKPOINT_PATH),
        "MODERATION_POLICY_PATHS": json.dumps([str(testmodel.POLICY_PATH)]),
        "MODERATION_CACHE_DIR": str(tmp_path / "cache"),
    }


def _write_images(folder: Path, band: str, n: int, seed: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (image, label) in enumerate(testmodel.sample_images(band, n, seed)):  # type: ignore[arg-type]
        safe = "".join(c if c.isalnum() else "_" for c in label)
        path = folder / f"{i:02d}-{safe}.png"
        image.save(path)
        paths.append(path)
    return paths


def _hostile(folder: Path) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    good = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(good, "JPEG")
    bomb = io.BytesIO()
    Image.new("1", (30000, 30000)).save(bomb, "PNG")
    files = {
        "truncated.jpg": good.getvalue()[:200],
        "empty.png": b"",
        "text.png": b"this is not an image",
        "bomb.png": bomb.getvalue(),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return {
        "truncated.jpg": "image_corrupt",
        "empty.png": "image_corrupt",
        "text.png": "image_corrupt",
        "bomb.png": "image_too_large",
    }


def test_score_folder_json_with_hostile_files(tmp_path: Path, env: dict[str, str]) -> None:
    for band, seed in (("block", 1), ("allow", 2), ("review", 3)):
        _write_images(tmp_path / "in" / band, band, 3, seed)
    expected_errors = _hostile(tmp_path / "in" / "hostile")
    result = CliRunner().invoke(app, ["score", str(tmp_path / "in"), "--json"], env=env)
    assert result.exit_code == 1, result.output  # some inputs failed
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 9 + len(expected_errors)
    by_name = {Path(r["path"]).name: r for r in lines}
    for name, code in expected_errors.items():
        assert by_name[name]["error"] == code and by_name[name]["message"]
    for r in lines:
        band = Path(r["path"]).parent.name
        if band != "hostile":
            assert r["decision"] == band, r
            assert r["verdict"]["policies"][0]["id"] == "testworld"


def test_score_exit_zero_when_everything_scored(tmp_path: Path, env: dict[str, str]) -> None:
    paths = _write_images(tmp_path, "block", 2, 5)
    result = CliRunner().invoke(app, ["score", *map(str, paths)], env=env)
    assert result.exit_code == 0, result.output
    assert "block" in result.stdout and "2 inputs, 0 failed" in result.stdout


def test_policy_check_reports_file_and_line(tmp_path: Path, env: dict[str, str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        testmodel.POLICY_PATH.read_text().replace("severity: critical", "severity: dire", 1)
    )
    result = CliRunner().invoke(app, ["policy", "check", str(bad)], env=env)
    assert result.exit_code == 1
    assert f"{bad}:" in result.stderr and ".severity:" in result.stderr
    ok = CliRunner().invoke(app, ["policy", "check", str(REPO / "policies")], env=env)
    n_files = len(list((REPO / "policies").glob("*.yaml")))
    assert ok.exit_code == 0 and ok.stdout.count("ok ") == n_files


def test_policy_compile_reuses_cache(env: dict[str, str]) -> None:
    runner = CliRunner()
    first = runner.invoke(app, ["policy", "compile"], env=env)
    second = runner.invoke(app, ["policy", "compile"], env=env)
    assert first.exit_code == second.exit_code == 0, first.output
    assert "0 from cache" in first.stdout
    assert "1 from cache, 0 texts encoded" in second.stdout


def test_policy_test_passes_and_catches_a_bad_draft(tmp_path: Path, env: dict[str, str]) -> None:
    cases = tmp_path / "cases"
    for band, seed in (("block", 11), ("allow", 12), ("review", 13)):
        _write_images(cases / band, band, 2, seed)
    runner = CliRunner()
    good = runner.invoke(
        app, ["policy", "test", str(testmodel.POLICY_PATH), "--cases", str(cases)], env=env
    )
    assert good.exit_code == 0, good.output
    assert "6 examples, 0 failed" in good.stdout
    # a draft that raises every block threshold to 0.999 stops blocking the clear cases
    text = testmodel.POLICY_PATH.read_text()
    import re

    draft = tmp_path / "draft.yaml"
    draft.write_text(re.sub(r"block: 0\.\d+", "block: 0.9999", text))
    bad = runner.invoke(
        app,
        [
            "policy",
            "test",
            str(draft),
            "--cases",
            str(cases),
            "--against",
            str(testmodel.POLICY_PATH),
            "--json",
        ],
        env=env,
    )
    assert bad.exit_code == 1
    rows = [json.loads(line) for line in bad.stdout.splitlines() if line.startswith("{")]
    failed = [r for r in rows if not r["ok"]]
    assert failed and all(r["expected"] == "block" and r["live"] == "block" for r in failed)


def test_policy_schema_is_json() -> None:
    result = CliRunner().invoke(app, ["policy", "schema"])
    schema = json.loads(result.stdout)
    assert "categories" in schema["properties"]


def test_console_script_runs_as_a_real_process(tmp_path: Path, env: dict[str, str]) -> None:
    path = _write_images(tmp_path, "allow", 1, 9)[0]
    exe = Path(sys.executable).with_name("moderation")
    proc = subprocess.run(
        [str(exe), "score", str(path), "--json"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1])["decision"] == "allow"


def test_score_folder_reports_every_skipped_file_with_its_reason(
    tmp_path: Path, env: dict[str, str]
) -> None:
    import pillow_heif

    folder = tmp_path / "in"
    _write_images(folder, "block", 1, 4)
    image = testmodel.sample_images("block", 1, 4)[0][0].convert("RGB")
    pillow_heif.from_pillow(image).save(folder / "phone.HEIC", quality=90)
    (folder / "notes.txt").write_text("not an image")
    (folder / "README").write_text("no suffix")
    (folder / "nested").mkdir()
    (folder / "nested" / "data.json").write_text("{}")
    result = CliRunner().invoke(app, ["score", str(folder), "--json"], env=env)
    assert result.exit_code == 0, result.output  # skipping is reported, not a failure
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    skipped = {Path(r["path"]).name: r["skipped"] for r in rows if "skipped" in r}
    assert skipped == {
        "notes.txt": "not an image suffix (.txt)",
        "README": "not an image suffix (none)",
        "data.json": "not an image suffix (.json)",
    }
    scored = {Path(r["path"]).name: r["decision"] for r in rows if "decision" in r}
    assert scored["phone.HEIC"] == "block" and len(scored) == 2
    table = CliRunner().invoke(app, ["score", str(folder)], env=env)
    assert table.exit_code == 0, table.output
    for name in ("notes.txt", "README", "data.json"):
        assert f"skipped {folder}" in table.stderr and name in table.stderr
    assert "2 inputs, 0 failed, 3 skipped" in table.stdout


def test_api_port_zero_binds_a_free_port_and_says_which(tmp_path: Path, redis_url: str) -> None:
    import re
    import time

    import httpx

    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("MODERATION_")},
        "MODERATION_ENVIRONMENT": "development",
        "MODERATION_REDIS_URL": redis_url,
        "MODERATION_AUDIT__LOCAL_DIR": str(tmp_path / "audit"),
        "MODERATION_AUDIT__SPOOL_DIR": str(tmp_path / "spool"),
        "PYTHONPATH": str(REPO),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "moderation.cli", "api", "--port", "0"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        match = re.fullmatch(r"serving the API on http://127\.0\.0\.1:(\d+)\s*", line)
        assert match is not None, line
        port = int(match.group(1))
        assert port not in (0, 8000)
        deadline = time.monotonic() + 60
        while True:
            try:
                assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(20)
    assert b"DEVELOPMENT MODE" in (proc.stderr.read() if proc.stderr else b"")


def test_review_user_logout_and_disable_end_every_session(tmp_path: Path, redis_url: str) -> None:
    import time

    from moderation.adapters.redis_reviewers import RedisReviewerStore
    from moderation.adapters.redis_sessions import RedisReviewerSessions
    from moderation.adapters.support.redis import connect
    from moderation.core.reviewers import ReviewerAccount, ReviewerSession, Role

    client = connect(redis_url, decode=True)
    users = RedisReviewerStore(client)
    sessions = RedisReviewerSessions(client, idle_s=600, max_s=3600)
    users.create(
        ReviewerAccount(
            username="alice", role=Role.REVIEWER, password_hash="x", disabled=False, created_at=0
        )
    )
    now = time.time()
    for key in ("k1", "k2"):
        sessions.create(key, ReviewerSession("alice", now, now, "n"))
    env = {
        "MODERATION_REDIS_URL": redis_url,
        "MODERATION_AUDIT__LOCAL_DIR": str(tmp_path / "audit"),
        "MODERATION_AUDIT__SPOOL_DIR": str(tmp_path / "spool"),
    }
    runner = CliRunner()
    ended = runner.invoke(app, ["review", "user", "logout", "alice"], env=env)
    assert ended.exit_code == 0, ended.output
    assert "ended 2 session(s) of alice" in ended.stdout
    assert sessions.count("alice") == 0
    unknown = runner.invoke(app, ["review", "user", "logout", "nobody"], env=env)
    assert unknown.exit_code == 1 and "no reviewer" in unknown.stderr
    sessions.create("k3", ReviewerSession("alice", now, now, "n"))
    disabled = runner.invoke(app, ["review", "user", "disable", "alice"], env=env)
    assert disabled.exit_code == 0 and "ended 1 session(s)" in disabled.stdout
    assert sessions.touch("k3", now + 1) is None
    client.close()
