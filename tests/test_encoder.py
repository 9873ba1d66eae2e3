"""The CLIP encoder's image path on the test model: uint8 crops normalised per batch, the traced
image tower, JPEG decoding on the device (run here on the CPU: the same code the GPU runs, held
to the Pillow path), worker slots and GPU choice, and compile-cache keys that know precision and
device."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from moderation import testmodel
from moderation.adapters.clip import PAD_SIZES, load_clip, padded_size, pick_device
from moderation.adapters.images import decode_image
from moderation.adapters.support.preprocess import JpegInput
from moderation.adapters.support.slots import claim_slot
from moderation.core.compiled import ModelIdentity, compiled_hash
from moderation.exceptions import ImageDecodeError, ImageTooLargeError, ModelUnavailableError
from moderation.settings import ImageLimits
from tests.data import hostile


@pytest.fixture(scope="module")
def encoders():  # type: ignore[no-untyped-def]
    """The test model three ways: eager, traced, and decoding JPEGs itself (on the CPU)."""
    settings = testmodel.model_settings()
    eager = load_clip(
        settings.model_copy(update={"traced": False}), config_path=testmodel.CONFIG_PATH
    )
    traced = load_clip(settings, config_path=testmodel.CONFIG_PATH)
    device = load_clip(settings, config_path=testmodel.CONFIG_PATH, device_decode=True)
    return eager, traced, device


def _jpeg(image: Image.Image, **save: object) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=92, **save)
    return buffer.getvalue()


def test_the_traced_tower_gives_the_eager_embeddings(encoders) -> None:  # type: ignore[no-untyped-def]
    eager, traced, _ = encoders
    assert traced.traced and not eager.traced
    images = [img for img, _ in testmodel.sample_images("block", 5, seed=4)]
    crops = [eager.prepare(img) for img in images]
    assert crops[0].dtype == np.uint8 and crops[0].shape == (eager.image_size,) * 2 + (3,)
    a, b = eager.encode_prepared(crops), traced.encode_prepared(crops)
    assert a.shape == b.shape == (5, eager.dim)
    np.testing.assert_allclose(a, b, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-4)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_device_jpeg_decoding_matches_the_cpu_path(encoders, orientation: int) -> None:  # type: ignore[no-untyped-def]
    """The device path (nvJPEG on a GPU) decodes full size and resizes with torch; the CPU path
    decodes in draft mode and resizes with Pillow. Same embeddings within a small tolerance, and
    EXIF orientation handled the same way."""
    _, cpu, device = encoders
    picture = testmodel.render("red", "star", seed=orientation, clear=True).resize((400, 300))
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _jpeg(picture, exif=exif.tobytes())
    probe = device.prepare_encoded(data)
    assert isinstance(probe, JpegInput) and probe.orientation == orientation
    on_device = device.encode_prepared([probe])
    on_cpu = cpu.encode_prepared(
        [cpu.prepare(decode_image(data, ImageLimits(), min_side=cpu.image_size)[0])]
    )
    cosine = float((on_device * on_cpu).sum())
    assert cosine > 0.995, cosine


def test_the_device_path_keeps_the_limits_and_fails_only_the_bad_file(encoders) -> None:  # type: ignore[no-untyped-def]
    _, _, device = encoders
    assert device.prepare_encoded(hostile.encode(hostile.photo(64, 64), "PNG")) is None
    huge = _jpeg(Image.new("RGB", (20_001, 8)))
    with pytest.raises(ImageTooLargeError):
        device.prepare_encoded(huge)
    with pytest.raises(ImageDecodeError):
        device.prepare_encoded(b"\xff\xd8\xff\xe0" + b"\x00" * 50)
    good = device.prepare_encoded(_jpeg(testmodel.render("blue", "ring", seed=1)))
    broken = JpegInput(b"\xff\xd8\xff" + b"\x13" * 400, 40, 40, 1)
    rows = device.start([good, broken]).result()
    assert isinstance(rows[0], np.ndarray) and isinstance(rows[1], ImageDecodeError)


def test_batches_pad_to_a_few_fixed_sizes() -> None:
    assert [padded_size(n) for n in (1, 3, 64, 65, 1000)] == [1, 4, 64, 128, 1024]
    assert padded_size(5000) == 5000 and PAD_SIZES[-1] == 1024


def test_workers_take_distinct_slots_and_a_gpu_by_slot(tmp_path: Path) -> None:
    script = (
        "import sys, time; from pathlib import Path; "
        "from moderation.adapters.support.slots import claim_slot; "
        f"print(claim_slot(Path({str(tmp_path)!r})), flush=True); time.sleep(3)"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    try:
        slots = sorted(int(p.stdout.readline()) for p in procs)  # type: ignore[union-attr]
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert slots == [0, 1, 2]
    assert claim_slot(tmp_path) == 0  # the slots went with their processes
    assert claim_slot(tmp_path) == 0  # asking again (a retried worker start) keeps its slot
    assert pick_device("cpu", None, slot=3).type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ModelUnavailableError, match="no CUDA"):
            pick_device("cuda")


def test_compiled_policies_are_keyed_by_precision_and_device() -> None:
    from moderation.adapters.policy_files import load_policy_file

    policy = load_policy_file(testmodel.POLICY_PATH)
    base = ModelIdentity(architecture="ViT-B-32", weights_sha256="a" * 64)
    keys = {
        compiled_hash(
            policy,
            ModelIdentity(architecture="ViT-B-32", weights_sha256="a" * 64, precision=p, device=d),
        )
        for p, d in [("fp32", "cpu"), ("bf16", "cuda"), ("fp16", "cuda"), ("fp32", "cuda")]
    }
    assert len(keys) == 4
    same_space = ModelIdentity(
        architecture="ViT-B-32", weights_sha256="a" * 64, precision="bf16", device="cuda"
    )
    assert same_space.id == base.id  # verdicts and stored embeddings name the same model
