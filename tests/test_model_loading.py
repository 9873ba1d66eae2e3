"""Loading real weights as an operator would, with small fabricated checkpoints in the real file
formats: two tiny open_clip ViT architectures (random weights) that differ only in patch size,
checkpoints as ``.bin`` and ``.safetensors``, a Hugging Face cache laid out as the hub client
writes it, and a local stand-in for the hub that counts the requests it gets."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import open_clip
import pytest
import torch

from moderation import testmodel
from moderation.adapters.clip import hub_files, load_clip, register_model_config
from moderation.compose.model import load_model
from moderation.exceptions import ModelUnavailableError
from moderation.settings import ModelSettings

TINY = {"patch16": "Tiny-ViT-P16", "patch8": "Tiny-ViT-P8"}


def _config(patch: int) -> dict[str, Any]:
    return {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": patch},
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": 32,
            "heads": 2,
            "layers": 1,
        },
    }


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Both tiny architectures registered with open_clip, and a checkpoint of each (random
    weights, fixed seed): ``{name}.bin`` (torch pickle) and ``{name}.safetensors``."""
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("tiny-models")
    files: dict[str, Path] = {}
    for patch, name in ((16, TINY["patch16"]), (8, TINY["patch8"])):
        config = root / f"{name}.json"
        config.write_text(json.dumps(_config(patch)))
        register_model_config(config)
        torch.manual_seed(patch)
        model = open_clip.create_model(name)
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        torch.save(state, root / f"{name}.bin")
        save_file(state, str(root / f"{name}.safetensors"))
        files[name] = root / f"{name}.bin"
        files[f"{name}.safetensors"] = root / f"{name}.safetensors"
    return files


def _settings(**kw: Any) -> ModelSettings:
    base: dict[str, Any] = {
        "architecture": TINY["patch16"],
        "pretrained": None,
        "device": "cpu",
        "traced": False,
        "fallback_to_test_model": False,
    }
    return ModelSettings(**{**base, **kw})


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- checkpoints ---------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", ".safetensors"])
def test_a_checkpoint_loads_and_its_hash_is_recorded(tiny: dict[str, Path], suffix: str) -> None:
    path = tiny[TINY["patch16"] + suffix]
    encoder = load_clip(_settings(checkpoint=path, checkpoint_sha256=_sha256(path)))
    assert encoder.identity.weights_sha256 == _sha256(path)
    assert encoder.identity.architecture == TINY["patch16"] and encoder.dim == 32


def test_a_wrong_architecture_checkpoint_says_what_does_not_fit(tiny: dict[str, Path]) -> None:
    """ViT with patch 8 weights loaded as patch 16: the size mismatch is in the message, and
    there is no advice to download what is already here."""
    path = tiny[TINY["patch8"]]
    with pytest.raises(ModelUnavailableError) as refused:
        load_clip(_settings(checkpoint=path))
    message = str(refused.value)
    assert "Error(s) in loading state_dict for CLIP" in message
    assert "size mismatch for visual.conv1.weight" in message
    assert "torch.Size([64, 3, 8, 8])" in message and "torch.Size([64, 3, 16, 16])" in message
    assert f"The file {path} exists but does not load as {TINY['patch16']}" in message
    assert "Download" not in message and "network access" not in message


def test_a_checkpoint_with_another_hash_is_refused(tiny: dict[str, Path]) -> None:
    path = tiny[TINY["patch16"]]
    with pytest.raises(ModelUnavailableError, match="refusing it") as refused:
        load_clip(_settings(checkpoint=path, checkpoint_sha256="0" * 64))
    assert _sha256(path) in str(refused.value)


def test_a_missing_checkpoint_explains_how_to_provide_it(tmp_path: Path) -> None:
    missing = tmp_path / "weights" / "open_clip_model.safetensors"
    with pytest.raises(ModelUnavailableError) as refused:
        load_clip(_settings(checkpoint=missing))
    message = str(refused.value)
    assert f"checkpoint {missing} does not exist" in message
    assert "MODERATION_MODEL__CHECKPOINT_SHA256" in message and "S3" in message


# --- the Hugging Face cache ----------------------------------------------------------------------


class Hub:
    """A stand-in for the hub on a local port: counts requests and answers 503."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _refuse(self) -> None:
                hub.requests.append(f"{self.command} {self.path}")
                self.send_response(503)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self) -> None:
                self._refuse()

            def do_HEAD(self) -> None:
                self._refuse()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, Hub]]:
    """An empty Hugging Face cache folder and a local hub, for this test only (the hub client
    reads both from its constants at call time)."""
    from huggingface_hub import constants

    hub = Hub()
    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(
        constants,
        "HUGGINGFACE_CO_URL_TEMPLATE",
        hub.url + "/{repo_id}/resolve/{revision}/{filename}",
    )
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    try:
        yield cache, hub
    finally:
        hub.server.shutdown()


def _cache_file(cache: Path, repo: str, filename: str, source: Path) -> Path:
    """Put ``source`` into the cache as the hub client does: a blob named by its hash, a
    snapshot link named by the file, and ``refs/main`` naming the snapshot."""
    folder = cache / ("models--" + repo.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    blob = folder / "blobs" / _sha256(source)
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(source.read_bytes())
    link = folder / "snapshots" / commit / filename
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(Path("../..") / "blobs" / blob.name)
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / "main").write_text(commit)
    return link


@pytest.fixture
def tags(monkeypatch: pytest.MonkeyPatch, tiny: dict[str, Path]) -> None:
    """Pretrained tags of the tiny model: one with open_clip's default file name in its repo
    (``org/name/``), one naming its file (``org/name/file.bin``, like ViTamin-S/datacomp1b)."""
    from open_clip import pretrained

    tags = {
        "tinytag": pretrained._pcfg(hf_hub="test-org/tiny-vit/"),
        "filetag": pretrained._pcfg(hf_hub="test-org/tiny-vit-file/pytorch_model.bin"),
    }
    monkeypatch.setitem(pretrained._PRETRAINED, TINY["patch16"], tags)


def test_hub_entries_are_split_into_repository_and_file_as_open_clip_does(tags: None) -> None:
    assert hub_files(TINY["patch16"], "tinytag") == (
        "test-org/tiny-vit",
        ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"],
    )
    assert hub_files(TINY["patch16"], "filetag") == (
        "test-org/tiny-vit-file",
        ["pytorch_model.safetensors", "pytorch_model.bin"],
    )
    assert hub_files("ViTamin-S", "datacomp1b") == (
        "jienengchen/ViTamin-S",
        ["pytorch_model.safetensors", "pytorch_model.bin"],
    )


def test_a_cached_bin_loads_offline_without_asking_the_hub(
    tags: None, tiny: dict[str, Path], hf_cache: tuple[Path, Hub]
) -> None:
    """Only ``open_clip_pytorch_model.bin`` is cached: open_clip would first ask the hub for the
    safetensors twin (retries against an unreachable hub); the loader sets offline mode."""
    cache, hub = hf_cache
    cached = _cache_file(
        cache, "test-org/tiny-vit", "open_clip_pytorch_model.bin", tiny[TINY["patch16"]]
    )
    encoder = load_clip(_settings(pretrained="tinytag"))
    assert hub.requests == []
    assert encoder.identity.pretrained == "tinytag"
    assert encoder.identity.weights_sha256 == _sha256(cached)
    from huggingface_hub import constants

    assert constants.HF_HUB_OFFLINE is False  # offline only for that load


def test_a_tag_whose_hub_entry_names_its_file_loads_from_the_cache(
    tags: None, tiny: dict[str, Path], hf_cache: tuple[Path, Hub]
) -> None:
    cache, hub = hf_cache
    source = tiny[TINY["patch16"]]
    _cache_file(cache, "test-org/tiny-vit-file", "pytorch_model.bin", source)
    encoder = load_clip(_settings(pretrained="filetag"))
    assert encoder.identity.weights_sha256 == _sha256(source) and hub.requests == []


def test_a_wrong_architecture_in_the_cache_is_not_a_download_problem(
    tags: None, tiny: dict[str, Path], hf_cache: tuple[Path, Hub]
) -> None:
    cache, _ = hf_cache
    _cache_file(
        cache,
        "test-org/tiny-vit",
        "open_clip_model.safetensors",
        tiny[f"{TINY['patch8']}.safetensors"],
    )
    with pytest.raises(ModelUnavailableError) as refused:
        load_clip(_settings(pretrained="tinytag"))
    message = str(refused.value)
    assert "size mismatch for visual.conv1.weight" in message
    assert "exists but does not load" in message and "network access" not in message


def test_uncached_weights_with_hf_hub_offline_fail_at_once_and_say_how(
    tags: None, hf_cache: tuple[Path, Hub], monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    _, hub = hf_cache
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # what HF_HUB_OFFLINE=1 sets
    with pytest.raises(ModelUnavailableError) as refused:
        load_clip(_settings(pretrained="tinytag"))
    message = str(refused.value)
    assert "not in the local Hugging Face cache and HF_HUB_OFFLINE is set" in message
    assert "MODERATION_MODEL__CHECKPOINT" in message and hub.requests == []


# --- the fallback note ---------------------------------------------------------------------------


def test_the_fallback_note_names_the_policies_the_test_model_scores(tmp_path: Path) -> None:
    missing = _settings(checkpoint=tmp_path / "none.bin", fallback_to_test_model=True)
    named = load_model(missing, custom_policies=[Path("policies")])
    assert named.is_test_model and named.note is not None
    assert "it scores the policies you named (policies)" in named.note
    assert "not policies/" not in named.note
    configured = load_model(missing)
    assert configured.note is not None
    assert (
        "test-world policy (testworld.yaml) instead of the configured policies" in configured.note
    )


def test_the_demo_says_which_world_it_is_in() -> None:
    from moderation.cli.demo import demo_world

    test_world, line = demo_world("ModTest-RN-T@sha256:488e24a292b03310", {"testworld": 2})
    assert test_world and line.startswith("World: TEST") and "testworld v2" in line
    real, line = demo_world("ViT-B-32/laion2b_s34b_b79k@sha256:1234", {"weapons": 1, "drugs": 3})
    assert not real and line.startswith("World: REAL")
    assert "drugs v3, weapons v1" in line and "do not apply" in line


# --- the init step: copy a checkpoint from S3 ----------------------------------------------------


def test_model_fetch_copies_a_checkpoint_from_s3_checked_against_its_hash(
    tiny: dict[str, Path], s3_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from moderation.cli import app

    source = tiny[f"{TINY['patch16']}.safetensors"]
    s3 = s3_server.client()
    s3.create_bucket(Bucket="weights")
    s3.upload_file(str(source), "weights", "tiny/open_clip_model.safetensors")
    target = tmp_path / "weights" / "open_clip_model.safetensors"
    env = {
        "MODERATION_S3__ENDPOINT_URL": s3_server.url,
        "MODERATION_S3__ACCESS_KEY_ID": "testing",
        "MODERATION_S3__SECRET_ACCESS_KEY": "testing",
        "MODERATION_MODEL__CHECKPOINT": str(target),
        "MODERATION_MODEL__CHECKPOINT_SOURCE": "s3://weights/tiny/open_clip_model.safetensors",
    }
    runner = CliRunner()
    wrong = runner.invoke(
        app, ["model", "fetch"], env={**env, "MODERATION_MODEL__CHECKPOINT_SHA256": "f" * 64}
    )
    assert wrong.exit_code == 2 and "not installed" in wrong.output
    assert not target.exists() and list(target.parent.iterdir()) == []  # no partial file left
    env["MODERATION_MODEL__CHECKPOINT_SHA256"] = _sha256(source)
    first = runner.invoke(app, ["model", "fetch"], env=env)
    assert first.exit_code == 0, first.output
    assert "copied" in first.output and target.read_bytes() == source.read_bytes()
    again = runner.invoke(app, ["model", "fetch"], env=env)
    assert again.exit_code == 0 and "already present" in again.output
    # The worker then loads exactly those bytes.
    encoder = load_clip(_settings(checkpoint=target, checkpoint_sha256=_sha256(source)))
    assert encoder.identity.weights_sha256 == _sha256(source)


def test_init_steps_without_configured_weights_say_why_and_let_the_pod_start(
    tmp_path: Path,
) -> None:
    """As shipped (no hash set yet) the worker pod's init steps must not crash-loop: with their
    init-step flags they finish and say why; without them they still fail."""
    from typer.testing import CliRunner

    from moderation.cli import app

    missing = tmp_path / "weights" / "open_clip_model.safetensors"
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "testworld.yaml").write_text(testmodel.POLICY_PATH.read_text())
    env = {
        "MODERATION_MODEL__CHECKPOINT": str(missing),
        "MODERATION_MODEL__CHECKPOINT_SOURCE": "s3://weights/open_clip_model.safetensors",
        "MODERATION_MODEL__FALLBACK_TO_TEST_MODEL": "false",
        "MODERATION_MODEL__ARCHITECTURE": "ViT-B-32",
        "MODERATION_POLICY_PATHS": json.dumps([str(policies)]),
        "MODERATION_CACHE_DIR": str(tmp_path / "cache"),
        "COLUMNS": "200",
    }
    runner = CliRunner()
    strict = runner.invoke(app, ["model", "fetch"], env=env)
    assert strict.exit_code != 0 and "SHA256" in strict.output.upper()
    lenient = runner.invoke(app, ["model", "fetch", "--if-configured"], env=env)
    assert lenient.exit_code == 0, lenient.output
    assert "MODERATION_MODEL__CHECKPOINT_SHA256 not set" in lenient.output
    assert not missing.exists()

    strict = runner.invoke(app, ["policy", "compile"], env=env)
    assert strict.exit_code == 1
    lenient = runner.invoke(app, ["policy", "compile", "--skip-without-model"], env=env)
    assert lenient.exit_code == 0, lenient.output
    assert "policies not compiled" in lenient.output
