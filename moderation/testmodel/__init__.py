"""The project's own small CLIP-architecture test model and the synthetic world it was trained on.

Production uses real open_clip weights; tests use this ~8.7M-parameter open_clip ``CLIP`` (config
``assets/ModTest-RN-T.json``: a small ModifiedResNet image tower, a 3-layer text transformer)
trained by :mod:`moderation.testmodel.train` on coloured shapes from
:mod:`moderation.testmodel.world`, so tests can assert real moderation decisions on real forward
passes.

Usage::

    from moderation.testmodel import CHECKPOINT_PATH, MODEL_NAME, register_config
    register_config()
    model, _, preprocess = open_clip.create_model_and_transforms(
        MODEL_NAME, pretrained=str(CHECKPOINT_PATH)
    )
    tokenizer = open_clip.get_tokenizer(MODEL_NAME)

Nothing happens at import time; open_clip is imported only by :func:`register_config`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Final

from moderation.testmodel.world import (
    BACKGROUND_PHRASES,
    COLOURS,
    OBJECT_PHRASES,
    SHAPES,
    TEMPLATES,
    Band,
    phrase,
    render,
    sample_images,
)

if TYPE_CHECKING:
    from moderation.settings import ModelSettings

__all__ = [
    "ASSETS_DIR",
    "BACKGROUND_PHRASES",
    "CHECKPOINT_PATH",
    "COLOURS",
    "CONFIG_PATH",
    "MODEL_NAME",
    "OBJECT_PHRASES",
    "POLICY_PATH",
    "SHAPES",
    "TEMPLATES",
    "TRAIN_REPORT_PATH",
    "Band",
    "config_path_for",
    "model_settings",
    "phrase",
    "register_config",
    "render",
    "sample_images",
]

MODEL_NAME: Final = "ModTest-RN-T"
ASSETS_DIR: Final = Path(__file__).resolve().parent / "assets"
CONFIG_PATH: Final = ASSETS_DIR / f"{MODEL_NAME}.json"
CHECKPOINT_PATH: Final = ASSETS_DIR / "modtest-clip.pt"
TRAIN_REPORT_PATH: Final = ASSETS_DIR / "train_report.json"
#: The moderation policy written for this world (red stars, black crosses, blue rings).
POLICY_PATH: Final = ASSETS_DIR / "testworld.yaml"


def register_config() -> None:
    """Make :data:`MODEL_NAME` known to open_clip. Idempotent; cheap after the first call."""
    import open_clip  # heavy import, deferred to first use

    if MODEL_NAME not in open_clip.list_models():
        open_clip.add_model_config(CONFIG_PATH)


def config_path_for(architecture: str) -> Path | None:
    """The model config JSON of ``architecture`` when it is the test model (open_clip does not
    ship it), else None."""
    return CONFIG_PATH if architecture == MODEL_NAME else None


def model_settings(base: ModelSettings | None = None) -> ModelSettings:
    """Model settings of the bundled test model (keeping ``base``'s device and precision)."""
    from moderation.settings import ModelSettings

    base = base or ModelSettings()
    return base.model_copy(
        update={
            "architecture": MODEL_NAME,
            "pretrained": None,
            "checkpoint": CHECKPOINT_PATH,
            "fallback_to_test_model": False,
        }
    )
