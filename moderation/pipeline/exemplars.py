"""Encoding a policy's exemplar images when it is compiled: the same safe decode, preprocessing
and image tower as live traffic (first frame of an animation), one forward pass per policy.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

from moderation.core.compiled import exemplar_keys
from moderation.core.policy import Policy
from moderation.exceptions import ModerationError, PolicyError
from moderation.ports import Encoder, ImageDecoder

__all__ = ["ExemplarImages"]


class ExemplarImages:
    """Encodes the exemplar images of one policy file: ``read(path)`` returns the bytes of the
    exemplar written as ``path`` in it.
    """

    def __init__(
        self,
        *,
        encoder: Encoder,
        decoder: ImageDecoder,
        read: Callable[[str], bytes],
    ) -> None:
        self.encoder = encoder
        self.decoder = decoder
        self.read = read

    def __call__(self, policy: Policy) -> dict[str, NDArray[np.float32]]:
        """sha256 -> L2-normalized image embedding of every exemplar image of ``policy``.

        Raises:
            PolicyError: an exemplar cannot be read or decoded (code ``policy_exemplar``).
        """
        keys = exemplar_keys(policy)
        if not keys:
            return {}
        inputs = []
        for path in keys.values():
            try:
                frames = self.decoder.decode(self.read(path), min_side=self.encoder.image_size)
            except (ModerationError, OSError) as exc:
                raise PolicyError(
                    f"policy {policy.id}: exemplar {path}: {exc}", code="policy_exemplar"
                ) from exc
            inputs.append(self.encoder.prepare(frames[0]))
        embeddings = self.encoder.encode_prepared(inputs)
        return dict(zip(keys, np.asarray(embeddings, np.float32), strict=True))
