"""open_clip adapter: one model, its preprocess and tokenizer, from one name.

Weights come from a local checkpoint file (wins) or an open_clip pretrained tag. The device is
chosen automatically (CUDA with half precision when present, else CPU fp32). Every embedding is
L2-normalized so scoring is a dot product.
"""

from __future__ import annotations

import hashlib
import logging
import socket
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
from numpy.typing import NDArray
from PIL import Image

from moderation.core.compiled import ModelIdentity
from moderation.exceptions import ModelUnavailableError
from moderation.settings import ModelSettings

__all__ = ["ClipEncoder", "FastPreprocess", "fast_preprocess", "file_sha256", "load_clip"]

log = logging.getLogger(__name__)
_config_lock = threading.Lock()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _pick_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise ModelUnavailableError("MODERATION_MODEL__DEVICE=cuda but no CUDA device is visible")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def _pick_precision(requested: str, device: torch.device) -> str:
    if requested != "auto":
        return requested
    if device.type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class FastPreprocess:
    """open_clip's eval preprocess (resize shortest side, bicubic, antialiased; center crop; to
    tensor; normalize), about 3x cheaper than the torchvision-on-PIL pipeline.

    Shrinking by 1.25x or more runs on the uint8 channels-last tensor (torch's vectorised
    antialiased bicubic kernel, the same filter as Pillow's); other images go through Pillow
    for the cropped region only. The crop is a view and normalisation one fused pass. Same
    output sizes and crop offsets as torchvision; pixel values agree to within one 8-bit
    level (tests bound the difference). Build with :func:`fast_preprocess`.
    """

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float]) -> None:
        self.size = size
        std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.scale = 1.0 / (255.0 * std_t)  # (x / 255 - mean) / std == x * scale + shift
        self.shift = -mean_t / std_t

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if image.mode != "RGB":
            image = image.convert("RGB")
        width, height = image.size
        s = self.size
        # torchvision Resize(int): short side -> s, long side truncated like this.
        if width <= height:
            new_w, new_h = s, int(s * height / width)
        else:
            new_w, new_h = int(s * width / height), s
        # torchvision CenterCrop offsets, in resized coordinates.
        top, left = round((new_h - s) / 2.0), round((new_w - s) / 2.0)
        if min(width, height) < s * 1.25:
            # Enlarging or barely shrinking: Pillow (exact match), computing only the cropped
            # pixels; the image is small, so this is cheap too.
            sx, sy = width / new_w, height / new_h
            box = (left * sx, top * sy, (left + s) * sx, (top + s) * sy)
            image = image.resize((s, s), Image.Resampling.BICUBIC, box=box)
            new_w = new_h = s
            top = left = 0
        pixels = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)[None]
        if (new_w, new_h) != pixels.shape[-1:-3:-1]:
            pixels = torch.nn.functional.interpolate(
                pixels, size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False
            )
        crop = pixels[0, :, top : top + s, left : left + s]
        out = crop.to(torch.float32, memory_format=torch.contiguous_format)
        return out.mul_(self.scale).add_(self.shift)


def fast_preprocess(preprocess: Any) -> FastPreprocess | None:
    """A :class:`FastPreprocess` equivalent to ``preprocess``, or None when ``preprocess`` is
    not open_clip's standard eval pipeline (then the caller keeps using it as is)."""
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
    return FastPreprocess(resize.size, normalize.mean, normalize.std)


class ClipEncoder:
    """Image and text towers of one open_clip model. Thread-safe for inference."""

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
    ) -> None:
        self.model = model
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self._identity = identity
        self.device = device
        self.precision = precision
        self.dtype = _DTYPES[precision]
        self.text_batch_size = text_batch_size
        self._fast_preprocess = fast_preprocess(preprocess)
        self.image_size = int(
            model.visual.image_size[0]
            if isinstance(model.visual.image_size, tuple | list)
            else model.visual.image_size
        )
        self._logit_scale = float(model.logit_scale.exp().clamp(max=100).item())
        self.texts_encoded = 0  # for observability (compile cache tests and metrics)

    @property
    def identity(self) -> ModelIdentity:
        return self._identity

    @property
    def logit_scale(self) -> float:
        return self._logit_scale

    def prepare(self, image: Image.Image) -> torch.Tensor:
        """The model's own preprocessing (resize, crop, normalize) to a CPU tensor.

        Uses :class:`FastPreprocess` when the model's preprocess is open_clip's standard one.
        """
        if self._fast_preprocess is not None:
            return self._fast_preprocess(image)
        tensor: torch.Tensor = self.preprocess(image)
        return tensor

    @torch.inference_mode()
    def encode_prepared(self, batch: Sequence[torch.Tensor]) -> NDArray[np.float32]:
        if not batch:
            return np.zeros((0, self.model.visual.output_dim), dtype=np.float32)
        x = torch.stack(list(batch))
        if self.device.type == "cuda":
            x = x.pin_memory().to(self.device, non_blocking=True)
        x = x.to(self.dtype)
        features = self.model.encode_image(x, normalize=True)
        return np.asarray(features.float().cpu().numpy(), dtype=np.float32)

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


def _cached_weights(architecture: str, tag: str) -> Path | None:
    """The local file of a pretrained tag's weights in the Hugging Face cache, if there."""
    cfg = open_clip.get_pretrained_cfg(architecture, tag)
    hub = str((cfg or {}).get("hf_hub") or "").strip("/")
    if not hub:
        return None
    from huggingface_hub import try_to_load_from_cache

    for filename in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
        found = try_to_load_from_cache(hub, filename)
        if isinstance(found, str):
            return Path(found)
    return None


def _check_tag_obtainable(architecture: str, tag: str) -> None:
    """Fail fast when a pretrained tag is neither cached nor downloadable (instead of the hub
    client's minute of retries)."""
    cfg = open_clip.get_pretrained_cfg(architecture, tag)
    if not cfg:
        known = [t for a, t in open_clip.list_pretrained() if a == architecture]
        raise ModelUnavailableError(
            f"open_clip has no pretrained tag {tag!r} for {architecture}; known: {known}"
        )
    if _cached_weights(architecture, tag) is not None:
        return
    if not _hub_reachable():
        raise ModelUnavailableError(
            f"open_clip weights {architecture}/{tag} are not in the local cache and the hub is "
            "unreachable. Download them where there is network access (they are cached under "
            "~/.cache/huggingface; copy that folder here) or set MODERATION_MODEL__CHECKPOINT to a"
            " local .pt/.bin/.safetensors file."
        )


def register_model_config(config: Path) -> None:
    """Make a custom open_clip architecture JSON known by its file stem (idempotent)."""
    with _config_lock:
        if config.stem not in open_clip.list_models():
            open_clip.add_model_config(config)


def load_clip(settings: ModelSettings, *, config_path: Path | None = None) -> ClipEncoder:
    """Build model + preprocess + tokenizer from one architecture name.

    Args:
        settings: architecture, weights (checkpoint path or pretrained tag), device, precision.
        config_path: a JSON model config for an architecture open_clip does not ship.

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
    device = _pick_device(settings.device)
    precision = _pick_precision(settings.precision, device)
    checkpoint = settings.checkpoint
    weights_sha256: str | None = None
    if checkpoint is not None:
        if not checkpoint.is_file():
            raise ModelUnavailableError(f"checkpoint {checkpoint} does not exist")
        pretrained: str | None = str(checkpoint)
        weights_sha256 = file_sha256(checkpoint)
    else:
        pretrained = settings.pretrained
        if pretrained:
            _check_tag_obtainable(architecture, pretrained)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            architecture, pretrained=pretrained, device=device, precision=precision
        )
    except Exception as exc:  # open_clip raises RuntimeError/OSError/HF errors; all mean "no"
        where = f"checkpoint {checkpoint}" if checkpoint else f"pretrained tag {pretrained!r}"
        raise ModelUnavailableError(
            f"cannot load open_clip {architecture} weights from {where}: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}. "
            "Download them on a machine with network access (open_clip caches them under "
            "~/.cache/huggingface) or point MODERATION_MODEL__CHECKPOINT at a local .pt/.bin/"
            ".safetensors file."
        ) from exc
    model.eval()
    if weights_sha256 is None and pretrained:
        # The audit log names the exact weights: hash the file the tag resolved to.
        cached = _cached_weights(architecture, pretrained)
        weights_sha256 = file_sha256(cached) if cached is not None else None
    tokenizer = open_clip.get_tokenizer(architecture)
    identity = ModelIdentity(
        architecture=architecture,
        pretrained=None if checkpoint is not None else pretrained,
        weights_sha256=weights_sha256,
    )
    log.info("loaded %s on %s (%s)", identity.id, device, precision)
    return ClipEncoder(
        model=model,
        preprocess=preprocess,
        tokenizer=tokenizer,
        identity=identity,
        device=device,
        precision=precision,
        text_batch_size=settings.text_batch_size,
    )
