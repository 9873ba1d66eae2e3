"""open_clip's eval geometry on the CPU, torch-free (so that prepare processes never load torch):
resize the short side to the model's input size and take the centre crop, as ``uint8``.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from PIL import Image

__all__ = ["CropPreprocess", "crop_geometry"]


def crop_geometry(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """torchvision ``Resize(size)`` + ``CenterCrop(size)``: the resized width and height and the
    crop's top and left offsets, in resized coordinates."""
    if width <= height:
        new_w, new_h = size, int(size * height / width)
    else:
        new_w, new_h = int(size * width / height), size
    return new_w, new_h, round((new_h - size) / 2.0), round((new_w - size) / 2.0)


class CropPreprocess:
    """open_clip's eval resize + centre crop with Pillow, to ``uint8`` (size, size, 3).

    Pillow resizes only the crop's region of the source (``box``), with the same bicubic filter
    torchvision applies to PIL images, so values match open_clip's preprocess to within one 8-bit
    level (tests bound the difference).
    """

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, image: Image.Image) -> NDArray[np.uint8]:
        if image.mode != "RGB":
            image = image.convert("RGB")
        width, height = image.size
        s = self.size
        new_w, new_h, top, left = crop_geometry(width, height, s)
        sx, sy = width / new_w, height / new_h
        box = (left * sx, top * sy, (left + s) * sx, (top + s) * sy)
        return np.asarray(image.resize((s, s), Image.Resampling.BICUBIC, box=box))
