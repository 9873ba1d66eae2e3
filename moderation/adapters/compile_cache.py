"""On-disk cache of compiled policies, keyed by policy content hash + model identity.

The :class:`~moderation.ports.CompileCache` port; compiling on a miss is the use case's
(:func:`moderation.pipeline.compile.compile_cached`).

One ``.npz`` per (policy, model): the prompt embeddings (and exemplar image embeddings) plus a
JSON header. Writes are atomic (temp file + rename), so concurrent workers compiling the same
policy never see a torn file. The key covers the exemplar images' content (their sha256 is part
of the policy hash), and exemplar images are encoded only on a miss.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
from pathlib import Path

import numpy as np

from moderation.adapters.support.files import atomic_write
from moderation.core.compiled import (
    CompiledCategory,
    CompiledPolicy,
    ModelIdentity,
    compiled_hash,
)
from moderation.core.policy import Policy, policy_hash

__all__ = ["CompileCache"]

log = logging.getLogger(__name__)
FORMAT_VERSION = 1


def _exemplar_header(category: CompiledCategory) -> dict[str, list[str]]:
    return {
        "exemplars": list(category.exemplars),
        "benign_exemplars": list(category.benign_exemplars),
    }


class CompileCache:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def path_for(self, policy: Policy, model: ModelIdentity) -> Path:
        key = compiled_hash(policy, model)
        return self.directory / f"{policy.id}-v{policy.version}-{key[:16]}.npz"

    def load(self, policy: Policy, model: ModelIdentity) -> CompiledPolicy | None:
        """The cached compiled policy, or None when absent or unreadable (then recompile)."""
        path = self.path_for(policy, model)
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                header = json.loads(str(data["header"]))
                if header.get("format") != FORMAT_VERSION or header["compiled_hash"] != (
                    compiled_hash(policy, model)
                ):
                    return None
                categories = []
                for index, category in enumerate(policy.categories):
                    entry = header["categories"][index]
                    if entry["id"] != category.id:
                        return None
                    compiled_category = CompiledCategory(
                        category=category,
                        prompts=tuple(entry["prompts"]),
                        benign_prompts=tuple(entry["benign_prompts"]),
                        positive=np.asarray(data[f"pos_{index}"], dtype=np.float32),
                        benign=np.asarray(data[f"ben_{index}"], dtype=np.float32),
                    )
                    if category.exemplars is not None:
                        compiled_category = dataclasses.replace(
                            compiled_category,
                            exemplars=tuple(entry["exemplars"]),
                            benign_exemplars=tuple(entry["benign_exemplars"]),
                            exemplar_positive=np.asarray(data[f"xpos_{index}"], np.float32),
                            exemplar_benign=np.asarray(data[f"xben_{index}"], np.float32),
                        )
                    categories.append(compiled_category)
        except (OSError, ValueError, KeyError, IndexError, json.JSONDecodeError) as exc:
            log.warning("ignoring unreadable compiled policy %s: %s", path, exc)
            return None
        return CompiledPolicy(
            policy=policy,
            policy_hash=policy_hash(policy),
            model=model,
            logit_scale=float(header["logit_scale"]),
            categories=tuple(categories),
            compiled_hash=header["compiled_hash"],
        )

    def save(self, compiled: CompiledPolicy) -> Path:
        path = self.path_for(compiled.policy, compiled.model)
        self.directory.mkdir(parents=True, exist_ok=True)
        header = {
            "format": FORMAT_VERSION,
            "policy_id": compiled.id,
            "policy_version": compiled.version,
            "policy_hash": compiled.policy_hash,
            "compiled_hash": compiled.compiled_hash,
            "model": compiled.model.to_dict(),
            "logit_scale": compiled.logit_scale,
            "categories": [
                {
                    "id": c.id,
                    "prompts": list(c.prompts),
                    "benign_prompts": list(c.benign_prompts),
                    **(
                        {
                            "exemplars": list(c.exemplars),
                            "benign_exemplars": list(c.benign_exemplars),
                        }
                        if c.category.exemplars is not None
                        else {}
                    ),
                }
                for c in compiled.categories
            ],
        }
        arrays: dict[str, np.ndarray] = {"header": np.array(json.dumps(header))}
        for index, category in enumerate(compiled.categories):
            arrays[f"pos_{index}"] = category.positive
            arrays[f"ben_{index}"] = category.benign
            if category.category.exemplars is not None:
                arrays[f"xpos_{index}"] = category.exemplar_positive
                arrays[f"xben_{index}"] = category.exemplar_benign
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)  # type: ignore[arg-type]
        atomic_write(path, buffer.getvalue())
        return path
