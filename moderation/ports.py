"""Ports: the outside concerns the service talks to. Adapters implement them; unit tests of the
pure core use in-memory twins."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from moderation.audit import AuditRecord
from moderation.compiled import ModelIdentity, TextEncoder

__all__ = ["AuditSink", "ClipModel", "ImageEncoder", "ImageSource", "ReviewSink", "TextEncoder"]


class ImageEncoder(Protocol):
    """Batched image embeddings. ``prepare`` runs on CPU threads (decode side); ``encode_prepared``
    runs one forward pass on a batch of prepared tensors."""

    @property
    def identity(self) -> ModelIdentity: ...

    def prepare(self, image: Image.Image) -> Any: ...

    def encode_prepared(self, batch: Sequence[Any]) -> NDArray[np.float32]: ...

    def encode_images(self, images: Sequence[Image.Image]) -> NDArray[np.float32]: ...


class ClipModel(ImageEncoder, TextEncoder, Protocol):
    """Image and text towers of one model; every embedding is L2-normalized."""


class ImageSource(Protocol):
    def fetch(self, ref: str) -> bytes: ...


class AuditSink(Protocol):
    def write(self, record: AuditRecord) -> None: ...


class ReviewSink(Protocol):
    """Where borderline verdicts go for a human decision (the review queue)."""

    def submit(self, item: Any) -> None: ...
