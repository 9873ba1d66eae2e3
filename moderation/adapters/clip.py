"""open_clip adapter: one model, its preprocess and tokenizer, from one name.

Weights come from a local checkpoint file (wins) or an open_clip pretrained tag. The device is
chosen automatically (CUDA with half precision when present, else CPU fp32). Every embedding is
L2-normalized so scoring is a dot product.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
from numpy.typing import NDArray
from PIL import Image

from moderation.adapters.support.hashing import file_sha256
from moderation.adapters.support.preprocess import CropPreprocess, DeviceJpeg, JpegInput, Normalizer
from moderation.core.compiled import ModelIdentity
from moderation.exceptions import ModelUnavailableError, ModerationError
from moderation.pipeline.batching import Done, Pending
from moderation.settings import ImageLimits, ModelSettings

__all__ = [
    "PAD_SIZES",
    "ClipEncoder",
    "file_sha256",
    "hub_files",
    "load_clip",
    "load_error_detail",
    "standard_geometry",
    "verify_sha256",
]

log = logging.getLogger(__name__)
_config_lock = threading.Lock()


def pick_device(requested: str, index: int | None = None, slot: int = 0) -> torch.device:
    """The torch device for a ``device`` setting: on CUDA, GPU ``index``, or this worker's slot
    on the host modulo the number of GPUs.

    Raises:
        ModelUnavailableError: CUDA was asked for but none is visible.
    """
    if requested == "cuda" and not torch.cuda.is_available():
        raise ModelUnavailableError("MODERATION_MODEL__DEVICE=cuda but no CUDA device is visible")
    kind = ("cuda" if torch.cuda.is_available() else "cpu") if requested == "auto" else requested
    if kind != "cuda":
        return torch.device(kind)
    count = torch.cuda.device_count()
    chosen = index if index is not None else slot % max(1, count)
    if not 0 <= chosen < count:
        raise ModelUnavailableError(f"GPU index {chosen} does not exist ({count} visible)")
    return torch.device("cuda", chosen)


def _pick_precision(requested: str, device: torch.device) -> str:
    if requested != "auto":
        return requested
    if device.type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def standard_geometry(preprocess: Any) -> tuple[int, tuple[float, ...], tuple[float, ...]] | None:
    """(input size, mean, std) when ``preprocess`` is open_clip's standard eval pipeline (resize
    short side bicubic, centre crop, RGB, to tensor, normalize), else None (the encoder then
    runs that preprocess as it is)."""
    from torchvision import transforms as tv

    steps = list(getattr(preprocess, "transforms", []))
    if len(steps) != 5:
        return None
    resize, crop, convert, to_tensor, normalize = steps
    if not (
        isinstance(resize, tv.Resize)
        and isinstance(resize.size, int)
        and resize.max_size is None
        and resize.interpolation == tv.InterpolationMode.BICUBIC
        and isinstance(crop, tv.CenterCrop)
        and tuple(crop.size) == (resize.size, resize.size)
        and type(convert).__name__ == "MaybeConvertMode"
        and getattr(convert, "mode", None) == "RGB"
        and isinstance(to_tensor, tv.ToTensor)
        and isinstance(normalize, tv.Normalize)
    ):
        return None
    return resize.size, tuple(normalize.mean), tuple(normalize.std)


#: Batch sizes a GPU batch is padded to, so that the kernels (and CUDA graphs or torch.compile,
#: where enabled) see a few fixed shapes.
PAD_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def padded_size(n: int) -> int:
    return next((size for size in PAD_SIZES if size >= n), n)


class _Slots:
    """Two reusable host buffers for a batch's uint8 crops (pinned on CUDA): batch k+1 fills one
    while batch k's copy to the device may still read the other."""

    def __init__(self, size: int, *, pinned: bool) -> None:
        self.size = size
        self.pinned = pinned
        self.buffers: list[torch.Tensor | None] = [None, None]
        self.busy = [False, False]
        self.turn = 0
        self.cond = threading.Condition()

    def take(self, n: int) -> tuple[int, torch.Tensor]:
        with self.cond:
            index = self.turn
            self.turn ^= 1
            while self.busy[index]:
                self.cond.wait()
            self.busy[index] = True
        buffer = self.buffers[index]
        if buffer is None or buffer.shape[0] < n:
            capacity = padded_size(max(n, 8))
            buffer = torch.empty(
                (capacity, self.size, self.size, 3), dtype=torch.uint8, pin_memory=self.pinned
            )
            self.buffers[index] = buffer
        return index, buffer

    def release(self, index: int) -> None:
        with self.cond:
            self.busy[index] = False
            self.cond.notify_all()


class _DeviceBatch:
    """A batch launched on the GPU; :meth:`result` waits for its embeddings (copied to pinned host
    memory on the same stream right after the forward pass)."""

    def __init__(
        self, host: torch.Tensor, done: Any, n: int, release: Any, errors: dict[int, BaseException]
    ) -> None:
        self.host = host
        self.done = done
        self.n = n
        self.release = release
        self.errors = errors

    def ready(self) -> bool:
        return bool(self.done.query())

    def result(self) -> list[Any]:
        try:
            self.done.synchronize()
            out = self.host[: self.n].numpy().copy()
        finally:
            self.release()
        return [self.errors.get(i, row) for i, row in enumerate(out)]


class ClipEncoder:
    """Image and text towers of one open_clip model. Thread-safe for inference.

    Images take two steps: :meth:`prepare` on the decode threads (a uint8 crop, or for JPEGs on
    a GPU just the checked header: :meth:`prepare_encoded`) and :meth:`start` on the batching
    thread, which copies the batch into a reused host buffer (pinned on CUDA), moves it to the
    device, decodes device JPEGs there, normalises and casts it on the device, pads it to a fixed
    size (GPU) and queues the forward pass. On CUDA ``start`` returns at once and the copy runs
    on its own stream, so the micro-batcher keeps two batches in flight.
    """

    def __init__(
        self,
        *,
        model: Any,
        preprocess: Any,
        tokenizer: Any,
        identity: ModelIdentity,
        device: torch.device,
        precision: str,
        text_batch_size: int = 256,
        limits: ImageLimits | None = None,
        device_decode: bool = False,
    ) -> None:
        self.model = model
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self._identity = identity
        self.device = device
        self.precision = precision
        self.dtype = _DTYPES[precision]
        self.text_batch_size = text_batch_size
        self.image_size = int(
            model.visual.image_size[0]
            if isinstance(model.visual.image_size, tuple | list)
            else model.visual.image_size
        )
        self.dim = int(model.visual.output_dim)
        self._logit_scale = float(model.logit_scale.exp().clamp(max=100).item())
        self.texts_encoded = 0  # for observability (compile cache tests and metrics)
        cuda = device.type == "cuda"
        geometry = standard_geometry(preprocess)
        self._crop = CropPreprocess(self.image_size) if geometry else None
        self._normalize = (
            Normalizer(geometry[1], geometry[2], device, self.dtype) if geometry else None
        )
        self._device_jpeg = (
            DeviceJpeg(self.image_size, limits or ImageLimits(), device)
            if geometry and device_decode
            else None
        )
        self._slots = _Slots(self.image_size, pinned=cuda)
        self._out: list[torch.Tensor | None] = [None, None]
        self._copy_stream = torch.cuda.Stream(device) if cuda else None  # type: ignore[no-untyped-call]
        self._pad = cuda
        self._lock = threading.Lock()
        self._visual: Any = model.visual
        self.traced = False

    def trace(self, *, tolerance: float = 1e-3) -> bool:
        """Replace the image tower by a traced graph (TorchScript) when it reproduces the eager
        embeddings within ``tolerance`` on two batch sizes; returns whether it did.

        A traced forward runs as one call without taking the interpreter lock per operation:
        with decode and I/O threads busy in Python, an eager forward pass waits for the lock
        between every two operations (measured: several times slower on 2 cores)."""
        size = self.image_size
        with torch.inference_mode():
            generator = torch.Generator().manual_seed(0)
            samples = [
                torch.rand((n, 3, size, size), generator=generator).to(self.device, self.dtype)
                for n in (2, 3)
            ]
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    traced = torch.jit.trace(  # type: ignore[no-untyped-call]
                        self.model.visual, samples[0], check_trace=False
                    )
                    traced = torch.jit.freeze(traced.eval())
                    for x in samples:
                        eager, got = self.model.visual(x).float(), traced(x).float()
                        scale = float(eager.abs().max()) or 1.0
                        if float((eager - got).abs().max()) > tolerance * scale:
                            log.warning("traced image tower differs from eager; keeping eager")
                            return False
            except Exception as exc:  # tracing support varies by architecture: eager is fine
                log.warning("cannot trace the image tower (%s); keeping eager", exc)
                return False
        self._visual = traced
        self.traced = True
        return True

    @property
    def identity(self) -> ModelIdentity:
        return self._identity

    @property
    def logit_scale(self) -> float:
        return self._logit_scale

    @property
    def decodes_on_device(self) -> bool:
        """Whether JPEGs are decoded on the device (:meth:`prepare_encoded`)."""
        return self._device_jpeg is not None

    def prepare(self, image: Image.Image) -> Any:
        """The CPU half of the model's preprocessing for one decoded frame: a uint8 crop (or,
        for a non-standard preprocess, that preprocess's tensor)."""
        if self._crop is not None:
            return self._crop(image)
        tensor: torch.Tensor = self.preprocess(image)
        return tensor

    @property
    def device_decode(self) -> bool:
        return self._device_jpeg is not None

    def preprocessor(self) -> Callable[[Image.Image], Any] | None:
        """The uint8 crop (picklable, torch-free) for prepare processes; None for a
        non-standard preprocess."""
        return self._crop

    def prepare_encoded(self, data: bytes) -> JpegInput | None:
        """For device decoding: a JPEG's checked header, or None (decode it on the CPU).

        Raises:
            ImageError: the header is refused (too large, corrupt, format not allowed).
        """
        return self._device_jpeg.probe(data) if self._device_jpeg is not None else None

    def encode_prepared(self, batch: Sequence[Any]) -> NDArray[np.float32]:
        """Embeddings of prepared inputs, one forward pass (waits for the result).

        Raises:
            ImageDecodeError: a device-decoded JPEG failed to decode.
        """
        rows = self.start(batch).result()
        for row in rows:
            if isinstance(row, BaseException):
                raise row
        if not rows:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack(rows).astype(np.float32, copy=False)

    @torch.inference_mode()
    def start(self, batch: Sequence[Any]) -> Pending[Any]:
        """Launch one forward pass over prepared inputs; ``result()`` gives one embedding per
        input (or the exception of an input that failed to decode on the device)."""
        n = len(batch)
        if n == 0:
            return Done([])
        if self._normalize is None:  # a custom preprocess: float tensors as it made them
            x = torch.stack(list(batch)).to(self.device, self.dtype)
            return Done(list(self._forward(x).float().cpu().numpy()))
        with self._lock:
            return self._start(batch)

    def _start(self, batch: Sequence[Any]) -> Pending[Any]:
        assert self._normalize is not None
        n = len(batch)
        size = padded_size(n) if self._pad else n
        jpegs = [i for i, x in enumerate(batch) if isinstance(x, JpegInput)]
        crops = [i for i, x in enumerate(batch) if not isinstance(x, JpegInput)]
        errors: dict[int, BaseException] = {}
        slot, host = self._slots.take(size)
        if self._copy_stream is None:  # CPU: compute now, the buffer is free again after
            try:
                if crops:
                    np.stack([batch[i] for i in crops], out=host.numpy()[: len(crops)])
                x = self._assemble(host, crops, jpegs, batch, size, errors)
                rows = self._forward(self._normalize.normalize(x)).float().numpy()
            finally:
                self._slots.release(slot)
            return Done([errors.get(i, row) for i, row in enumerate(rows[:n])])
        try:
            if crops:
                np.stack([batch[i] for i in crops], out=host.numpy()[: len(crops)])
            with torch.cuda.stream(self._copy_stream):
                x = self._assemble(host, crops, jpegs, batch, size, errors)
                copied = torch.cuda.Event()  # type: ignore[no-untyped-call]
                copied.record()
            compute = torch.cuda.current_stream(self.device)
            compute.wait_event(copied)
            x.record_stream(compute)
            features = self._forward(self._normalize.normalize(x))[:n].float()
            out = self._out[slot]
            if out is None or out.shape[0] < n:
                out = torch.empty(
                    (padded_size(max(n, 8)), self.dim), dtype=torch.float32, pin_memory=True
                )
                self._out[slot] = out
            out[:n].copy_(features, non_blocking=True)
            done = torch.cuda.Event()  # type: ignore[no-untyped-call]
            done.record(compute)
        except BaseException:
            self._slots.release(slot)
            raise
        return _DeviceBatch(out, done, n, lambda: self._slots.release(slot), errors)

    def _assemble(
        self,
        host: torch.Tensor,
        crops: list[int],
        jpegs: list[int],
        batch: Sequence[Any],
        size: int,
        errors: dict[int, BaseException],
    ) -> torch.Tensor:
        """The NHWC uint8 batch on the device: CPU crops copied in, JPEGs decoded in place."""
        if not jpegs:
            return host[:size].to(self.device, non_blocking=True)
        x = torch.zeros(
            (size, self.image_size, self.image_size, 3), dtype=torch.uint8, device=self.device
        )
        if crops:
            x[crops] = host[: len(crops)].to(self.device, non_blocking=True)
        assert self._device_jpeg is not None
        items = [batch[i] for i in jpegs]
        try:
            x[jpegs] = self._device_jpeg.decode(items)
        except ModerationError:  # one bad file: decode them one by one to find it
            for index, item in zip(jpegs, items, strict=True):
                try:
                    x[index] = self._device_jpeg.decode([item])[0]
                except ModerationError as exc:
                    errors[index] = exc
        return x

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        features: torch.Tensor = self._visual(x)
        return torch.nn.functional.normalize(features, dim=-1)

    def encode_images(self, images: Sequence[Image.Image]) -> NDArray[np.float32]:
        return self.encode_prepared([self.prepare(image) for image in images])

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> NDArray[np.float32]:
        out: list[NDArray[np.float32]] = []
        for start in range(0, len(texts), self.text_batch_size):
            chunk = list(texts[start : start + self.text_batch_size])
            tokens = self.tokenizer(chunk).to(self.device)
            features = self.model.encode_text(tokens, normalize=True)
            out.append(np.asarray(features.float().cpu().numpy(), dtype=np.float32))
        self.texts_encoded += len(texts)
        if not out:
            return np.zeros((0, self.model.text_projection.shape[1]), dtype=np.float32)
        return np.concatenate(out)


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers a TCP connect (fails at once without DNS)."""
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout_s):
            return True
    except OSError:
        return False


#: open_clip's default weights file in a hub repository, and its safetensors twin.
_HF_WEIGHTS = "open_clip_pytorch_model.bin"
_HF_SAFE_WEIGHTS = "open_clip_model.safetensors"


def hub_files(architecture: str, tag: str) -> tuple[str, list[str]] | None:
    """(repository id, candidate file names, preferred first) of a pretrained tag's weights on
    the Hugging Face hub, read as open_clip reads its ``hf_hub`` entries: ``org/name/`` (trailing
    slash) means open_clip's default file, ``org/name/file.bin`` names the file. The safetensors
    twin of a ``.bin``/``.pth`` file is preferred, as open_clip does. None: not on the hub."""
    cfg = open_clip.get_pretrained_cfg(architecture, tag)
    hub = str((cfg or {}).get("hf_hub") or "")
    if not hub:
        return None
    repo, filename = os.path.split(hub)
    filename = filename or _HF_WEIGHTS
    candidates = [filename]
    if filename == _HF_WEIGHTS:
        candidates.insert(0, _HF_SAFE_WEIGHTS)
    elif filename.endswith((".bin", ".pth")):
        candidates.insert(0, filename[:-4] + ".safetensors")
    return repo, candidates


def _cached_weights(architecture: str, tag: str) -> Path | None:
    """The local file of a pretrained tag's weights in the Hugging Face cache, if there."""
    found = hub_files(architecture, tag)
    if found is None:
        return None
    from huggingface_hub import try_to_load_from_cache

    repo, candidates = found
    for filename in candidates:
        cached = try_to_load_from_cache(repo, filename)
        if isinstance(cached, str):
            return Path(cached)
    return None


def _hub_offline_configured() -> bool:
    """``HF_HUB_OFFLINE=1`` (huggingface_hub reads it once, at import)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


_offline_lock = threading.Lock()


@contextlib.contextmanager
def _hub_offline(enabled: bool) -> Iterator[None]:
    """Hugging Face offline mode for the duration of one load (weights already cached): open_clip
    first asks the hub for a safetensors twin, and without offline mode huggingface_hub retries
    an unreachable hub for tens of seconds before it settles for the cached file."""
    if not enabled:
        yield
        return
    from huggingface_hub import constants

    with _offline_lock:
        before = constants.HF_HUB_OFFLINE
        constants.HF_HUB_OFFLINE = True
        try:
            yield
        finally:
            constants.HF_HUB_OFFLINE = before


_GET_WEIGHTS = (
    "Provide them: copy a Hugging Face cache that holds them (~/.cache/huggingface, or HF_HOME) "
    "from a machine with network access, or set MODERATION_MODEL__CHECKPOINT to a local "
    ".pt/.bin/.safetensors file (deploy/: a weights volume, or an init step that copies it from "
    "S3 and checks MODERATION_MODEL__CHECKPOINT_SHA256)."
)


def _check_tag_obtainable(architecture: str, tag: str) -> Path | None:
    """The cached weights file of a pretrained tag (None: not cached, but downloadable). Fails
    fast when the tag is neither cached nor downloadable (instead of the hub client's minute of
    retries).

    Raises:
        ModelUnavailableError: unknown tag, or not cached and the hub is offline or unreachable.
    """
    cfg = open_clip.get_pretrained_cfg(architecture, tag)
    if not cfg:
        known = [t for a, t in open_clip.list_pretrained() if a == architecture]
        raise ModelUnavailableError(
            f"open_clip has no pretrained tag {tag!r} for {architecture}; known: {known}"
        )
    cached = _cached_weights(architecture, tag)
    if cached is not None:
        return cached
    if _hub_offline_configured():
        raise ModelUnavailableError(
            f"open_clip weights {architecture}/{tag} are not in the local Hugging Face cache "
            f"and HF_HUB_OFFLINE is set. {_GET_WEIGHTS}"
        )
    if not _hub_reachable():
        raise ModelUnavailableError(
            f"open_clip weights {architecture}/{tag} are not in the local Hugging Face cache "
            f"and the hub is unreachable. {_GET_WEIGHTS}"
        )
    return None


def load_error_detail(exc: BaseException, *, max_lines: int = 6, max_chars: int = 1500) -> str:
    """An exception's message with its detail lines (a ``load_state_dict`` error says what does
    not fit only from its second line on: ``size mismatch for visual.conv1.weight: ...``)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    shown = lines[:max_lines]
    text = " ".join(shown)
    if len(text) > max_chars:
        text = text[: max_chars - 1] + "…"
    if len(lines) > len(shown):
        text += f" (+{len(lines) - len(shown)} more lines)"
    return f"{type(exc).__name__}: {text}"


def verify_sha256(path: Path, expected: str | None) -> str:
    """``path``'s SHA-256 (hex), checked against ``expected`` when given.

    Raises:
        ModelUnavailableError: the file's hash differs from ``expected``.
    """
    actual = file_sha256(path)
    if expected is not None and actual != expected.lower():
        raise ModelUnavailableError(
            f"checkpoint {path} has sha256 {actual}, expected {expected.lower()} "
            "(MODERATION_MODEL__CHECKPOINT_SHA256): a different or damaged file; refusing it"
        )
    return actual


def register_model_config(config: Path) -> None:
    """Make a custom open_clip architecture JSON known by its file stem (idempotent)."""
    with _config_lock:
        if config.stem not in open_clip.list_models():
            open_clip.add_model_config(config)


def load_clip(
    settings: ModelSettings,
    *,
    config_path: Path | None = None,
    limits: ImageLimits | None = None,
    slot: int = 0,
    device_decode: bool | None = None,
) -> ClipEncoder:
    """Build model + preprocess + tokenizer from one architecture name.

    Args:
        settings: architecture, weights (checkpoint path or pretrained tag), device, precision.
        config_path: a JSON model config for an architecture open_clip does not ship.
        limits: the image limits device-decoded JPEGs are held to.
        slot: this worker's position among the host's workers (picks its GPU).
        device_decode: decode JPEGs on the device; None follows ``settings.device_decode``
            ("auto": when the device is CUDA).

    Raises:
        ModelUnavailableError: the architecture is unknown or the weights cannot be loaded.
    """
    if settings.threads:
        torch.set_num_threads(settings.threads)
    if config_path is not None:
        register_model_config(config_path)
    architecture = settings.architecture
    if architecture not in open_clip.list_models():
        raise ModelUnavailableError(f"unknown open_clip architecture {architecture!r}")
    device = pick_device(settings.device, settings.device_index, slot)
    precision = _pick_precision(settings.precision, device)
    if device_decode is None:
        device_decode = settings.device_decode == "on" or (
            settings.device_decode == "auto" and device.type == "cuda"
        )
    checkpoint = settings.checkpoint
    weights_sha256: str | None = None
    cached: Path | None = None
    if checkpoint is not None:
        if not checkpoint.is_file():
            raise ModelUnavailableError(
                f"checkpoint {checkpoint} does not exist (MODERATION_MODEL__CHECKPOINT). "
                + _GET_WEIGHTS
            )
        pretrained: str | None = str(checkpoint)
        weights_sha256 = verify_sha256(checkpoint, settings.checkpoint_sha256)
    else:
        pretrained = settings.pretrained
        if pretrained:
            cached = _check_tag_obtainable(architecture, pretrained)
    local = checkpoint or cached  # the weights are on this machine: a failure is the file's
    try:
        with _hub_offline(cached is not None):
            model, _, preprocess = open_clip.create_model_and_transforms(
                architecture, pretrained=pretrained, device=device, precision=precision
            )
    except Exception as exc:  # open_clip raises RuntimeError/OSError/HF errors; all mean "no"
        where = f"checkpoint {checkpoint}" if checkpoint else f"pretrained tag {pretrained!r}"
        if local is not None:
            advice = (
                f"The file {local} exists but does not load as {architecture}: is it the "
                "weights of another architecture (MODERATION_MODEL__ARCHITECTURE), or damaged?"
            )
        else:
            advice = _GET_WEIGHTS
        raise ModelUnavailableError(
            f"cannot load open_clip {architecture} weights from {where}: "
            f"{load_error_detail(exc)}. {advice}"
        ) from exc
    model.eval()
    if weights_sha256 is None and pretrained:
        # The audit log names the exact weights: hash the file the tag resolved to.
        cached = cached or _cached_weights(architecture, pretrained)
        weights_sha256 = file_sha256(cached) if cached is not None else None
    tokenizer = open_clip.get_tokenizer(architecture)
    identity = ModelIdentity(
        architecture=architecture,
        pretrained=None if checkpoint is not None else pretrained,
        weights_sha256=weights_sha256,
        precision=precision,
        device=device.type,
    )
    encoder = ClipEncoder(
        model=model,
        preprocess=preprocess,
        tokenizer=tokenizer,
        identity=identity,
        device=device,
        precision=precision,
        text_batch_size=settings.text_batch_size,
        limits=limits,
        device_decode=device_decode,
    )
    if settings.traced:
        encoder.trace()
    log.info(
        "loaded %s on %s (%s%s)",
        identity.id,
        device,
        precision,
        ", traced" if encoder.traced else "",
    )
    return encoder
