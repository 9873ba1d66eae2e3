"""The input of an ONNX image classifier (:mod:`moderation.signals.classifier`): how a decoded
image becomes the model's input, as declared with the model in ``signals.classifiers``. Runs on
the decode threads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from PIL import Image

__all__ = ["Preprocessing"]


@dataclass(frozen=True, kw_only=True, slots=True)
class Preprocessing:
    """How a decoded RGB image becomes the model's input (one image, no batch axis)."""

    input_size: int
    resize_to: int | None = None
    pixel_scale: float = 1.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    channel_order: Literal["rgb", "bgr"] = "rgb"
    layout: Literal["nchw", "nhwc"] = "nchw"

    def __call__(self, image: Image.Image) -> NDArray[np.float32]:
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        side = self.resize_to or self.input_size
        rgb = rgb.resize((side, side), resample=Image.Resampling.BILINEAR)
        if side != self.input_size:
            offset = (side - self.input_size) // 2
            rgb = rgb.crop((offset, offset, offset + self.input_size, offset + self.input_size))
        pixels: NDArray[np.float32] = np.asarray(rgb, dtype=np.float32)
        pixels *= np.float32(self.pixel_scale / 255.0)
        if self.channel_order == "bgr":
            pixels = pixels[:, :, ::-1]
        pixels -= np.asarray(self.mean, np.float32)
        pixels /= np.asarray(self.std, np.float32)
        if self.layout == "nchw":
            pixels = pixels.transpose(2, 0, 1)
        return np.ascontiguousarray(pixels, dtype=np.float32)
