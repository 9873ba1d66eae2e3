"""Image preprocessing for the CLIP encoder, split so that the CPU does only what it must.

On the decode threads (:class:`CropPreprocess`): open_clip's eval geometry — resize the short side
to the model's input size (bicubic, antialiased) and take the centre crop — done by Pillow on the
decoded (draft-mode) image, computing only the cropped pixels, to a ``uint8`` HxWx3 array. No
torch runs on these threads (no OpenMP team per thread), and a crop is 150 KB instead of the
600 KB of a float tensor.

On the device, once per batch (:class:`Normalizer`): ``uint8 -> float``, ``(x / 255 - mean) /
std`` in one fused multiply-add, then the model's dtype (bf16/fp16 on a GPU).

JPEG files can instead be decoded on the GPU (:class:`DeviceJpeg`, nvJPEG through torchvision's
``decode_jpeg``): the decode threads only read the header (format, size, EXIF orientation, the
same bomb and size limits as the CPU decoder), and the batch is decoded, oriented, resized and
cropped on the device.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from moderation.adapters.support.crop import CropPreprocess, crop_geometry
from moderation.exceptions import ImageDecodeError, ImageTooLargeError, UnsupportedImageFormat
from moderation.settings import ImageLimits

__all__ = ["CropPreprocess", "DeviceJpeg", "JpegInput", "Normalizer", "crop_geometry"]


class Normalizer:
    """``(x / 255 - mean) / std`` on a uint8 NHWC batch, as one multiply-add on the device."""

    def __init__(
        self, mean: Sequence[float], std: Sequence[float], device: torch.device, dtype: torch.dtype
    ) -> None:
        std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.scale = (1.0 / (255.0 * std_t)).to(device)
        self.shift = (-mean_t / std_t).to(device)
        self.dtype = dtype

    def normalize(self, nhwc: torch.Tensor) -> torch.Tensor:
        """The model's input: float NCHW (channels-last memory), normalised, in its dtype."""
        x = nhwc.permute(0, 3, 1, 2).to(torch.float32)  # NCHW view, channels-last memory
        return torch.addcmul(self.shift, x, self.scale).to(self.dtype)


@dataclass(frozen=True, slots=True)
class JpegInput:
    """A JPEG file to decode on the device: its bytes, size and EXIF orientation."""

    data: bytes
    width: int
    height: int
    orientation: int


class DeviceJpeg:
    """Decodes JPEG batches on the device (nvJPEG on CUDA) and crops them to the model's input.

    Only baseline or progressive RGB/greyscale JPEGs qualify (:meth:`probe`); everything else
    takes the CPU path.
    """

    def __init__(self, size: int, limits: ImageLimits, device: torch.device) -> None:
        self.size = size
        self.limits = limits
        self.device = device

    def probe(self, data: bytes) -> JpegInput | None:
        """Header checks only (no pixel is decoded): a :class:`JpegInput`, or None when the file
        is not a JPEG this path takes.

        Raises:
            ImageTooLargeError, UnsupportedImageFormat, ImageDecodeError: the same refusals as
                the CPU decoder, before any decoding.
        """
        if not data.startswith(b"\xff\xd8\xff"):
            return None
        if len(data) > self.limits.max_bytes:
            raise ImageTooLargeError(
                f"{len(data)} bytes exceeds the {self.limits.max_bytes}-byte limit"
            )
        if "JPEG" not in self.limits.formats:
            raise UnsupportedImageFormat("JPEG images are not allowed here")
        try:
            with Image.open(io.BytesIO(data)) as image:
                if image.format != "JPEG" or image.mode not in ("RGB", "L"):
                    return None
                width, height = image.size
                orientation = int(image.getexif().get(0x0112, 1) or 1)
        except (OSError, SyntaxError, ValueError) as exc:
            raise ImageDecodeError(f"corrupt JPEG header: {exc}") from exc
        if (
            width > self.limits.max_side
            or height > self.limits.max_side
            or (width * height > self.limits.max_pixels)
        ):
            raise ImageTooLargeError(f"{width}x{height} exceeds the size limits")
        if min(width, height) < 1:
            raise ImageDecodeError("empty JPEG")
        return JpegInput(data, width, height, orientation)

    def decode(self, batch: Sequence[JpegInput]) -> torch.Tensor:
        """A uint8 NHWC batch on the device: decoded, EXIF-oriented, resized and cropped.

        Raises:
            ImageDecodeError: a JPEG failed to decode (the whole batch: the caller retries the
                images one by one on the CPU).
        """
        from torchvision.io import ImageReadMode, decode_jpeg

        raw = [torch.frombuffer(bytearray(item.data), dtype=torch.uint8) for item in batch]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchvision 0.29 deprecates its image decoders
            try:
                decoded = decode_jpeg(raw, mode=ImageReadMode.RGB, device=self.device)
            except RuntimeError as exc:
                raise ImageDecodeError(f"device JPEG decode failed: {exc}") from exc
        crops = [
            self._crop(_orient(img, item.orientation))
            for img, item in zip(decoded, batch, strict=True)
        ]
        return torch.stack(crops).permute(0, 2, 3, 1).contiguous()

    def _crop(self, chw: torch.Tensor) -> torch.Tensor:
        _, height, width = chw.shape
        s = self.size
        new_w, new_h, top, left = crop_geometry(width, height, s)
        x = chw[None].to(torch.float32)
        if (new_w, new_h) != (width, height):
            x = torch.nn.functional.interpolate(
                x, size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False
            )
        crop = x[0, :, top : top + s, left : left + s]
        return crop.round_().clamp_(0, 255).to(torch.uint8)


def _orient(chw: torch.Tensor, orientation: int) -> torch.Tensor:
    """Apply an EXIF orientation (1-8) to a CHW tensor, as PIL's ``exif_transpose`` does."""
    hw = (-2, -1)
    if orientation == 2:  # mirror left-right
        return chw.flip(-1)
    if orientation == 3:  # rotate 180
        return chw.flip(hw)
    if orientation == 4:  # mirror top-bottom
        return chw.flip(-2)
    if orientation == 5:  # transpose (main diagonal)
        return chw.transpose(-2, -1)
    if orientation == 6:  # rotate 90 clockwise
        return torch.rot90(chw, k=-1, dims=hw)
    if orientation == 7:  # transverse (anti-diagonal)
        return chw.transpose(-2, -1).flip(hw)
    if orientation == 8:  # rotate 90 counter-clockwise
        return torch.rot90(chw, k=1, dims=hw)
    return chw
