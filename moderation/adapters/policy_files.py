"""Reading policy YAML files with precise ``file:line: field: message`` errors."""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from moderation.core.policy import Policy, PolicySet
from moderation.exceptions import PolicyIssue, PolicyValidationError

__all__ = [
    "find_policy_files",
    "load_policies",
    "load_policy_file",
    "load_policy_text",
    "policy_files_hash",
]

PathKey = tuple[str | int, ...]
MAX_POLICY_BYTES = 1_000_000


def _field_name(path: Sequence[str | int]) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


class _Located:
    """Plain Python data from a YAML node tree, plus the line of every path."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.lines: dict[PathKey, int] = {}
        self.issues: list[PolicyIssue] = []

    def convert(self, node: yaml.Node, path: PathKey) -> Any:
        self.lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = self.convert(key_node, (*path, "<key>"))
                if not isinstance(key, str):
                    self._issue(key_node, path, f"keys must be strings, got {key!r}")
                    continue
                if key in out:
                    self._issue(key_node, (*path, key), f"duplicate key {key!r}")
                    continue
                out[key] = self.convert(value_node, (*path, key))
                self.lines[(*path, key)] = key_node.start_mark.line + 1
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.convert(item, (*path, i)) for i, item in enumerate(node.value)]
        assert isinstance(node, yaml.ScalarNode)
        return _scalar(node)

    def _issue(self, node: yaml.Node, path: PathKey, message: str) -> None:
        self.issues.append(
            PolicyIssue(
                source=self.source,
                line=node.start_mark.line + 1,
                field=_field_name(path),
                message=message,
            )
        )

    def line_of(self, path: Sequence[str | int]) -> int | None:
        key: PathKey = tuple(path)
        while True:
            if key in self.lines:
                return self.lines[key]
            if not key:
                return None
            key = key[:-1]


def _scalar(node: yaml.ScalarNode) -> Any:
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    finally:
        loader.dispose()


def _pydantic_message(error: Any) -> str:
    message = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            message = message[len(prefix) :]
    if error["type"] == "extra_forbidden":
        message = "unknown key (check spelling; see `moderation policy schema`)"
    return message


def load_policy_text(
    text: str, *, source: str = "<string>", signals: Collection[str] | None = None
) -> Policy:
    """Parse and validate one policy document.

    Args:
        text: the YAML.
        source: the file name used in messages.
        signals: the registered signal names (a category naming another is an error); None
            skips that check.

    Raises:
        PolicyValidationError: with every problem found, each located by file and line.
    """
    located = _Located(source)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise PolicyValidationError(
            [PolicyIssue(source=source, line=line, field="", message=f"invalid YAML: {problem}")]
        ) from exc
    if node is None:
        raise PolicyValidationError(
            [PolicyIssue(source=source, line=1, field="", message="empty policy file")]
        )
    data = located.convert(node, ())
    if located.issues:
        raise PolicyValidationError(located.issues)
    if not isinstance(data, dict):
        raise PolicyValidationError(
            [PolicyIssue(source=source, line=1, field="", message="a policy must be a mapping")]
        )
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        issues = []
        for error in exc.errors():
            loc = tuple(error["loc"])
            issues.append(
                PolicyIssue(
                    source=source,
                    line=located.line_of(loc),
                    field=_field_name(loc),
                    message=_pydantic_message(error),
                )
            )
        issues.sort(key=lambda i: i.line or 0)
        raise PolicyValidationError(issues) from None
    problems = policy.semantic_problems(signals)
    if problems:
        raise PolicyValidationError(
            [
                PolicyIssue(
                    source=source, line=located.line_of(path), field=_field_name(path), message=m
                )
                for path, m in problems
            ]
        )
    return policy


def load_policy_file(path: str | Path, *, signals: Collection[str] | None = None) -> Policy:
    """Read and validate one policy file.

    Raises:
        PolicyValidationError: unreadable, too large, malformed, or invalid.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PolicyValidationError(
            [PolicyIssue(source=str(path), line=None, field="", message=f"cannot read: {exc}")]
        ) from exc
    if len(raw) > MAX_POLICY_BYTES:
        raise PolicyValidationError(
            [PolicyIssue(source=str(path), line=None, field="", message="file too large")]
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyValidationError(
            [PolicyIssue(source=str(path), line=None, field="", message="not UTF-8 text")]
        ) from exc
    return load_policy_text(text, source=str(path), signals=signals)


def find_policy_files(paths: Iterable[str | Path]) -> list[Path]:
    """Expand directories (``*.yaml``/``*.yml``, not recursive) and keep files as given."""
    out: list[Path] = []
    for item in paths:
        path = Path(item)
        if path.is_dir():
            out.extend(sorted(p for p in path.iterdir() if p.suffix in {".yaml", ".yml"}))
        else:
            out.append(path)
    return out


def load_policies(
    paths: Iterable[str | Path], *, signals: Collection[str] | None = None
) -> PolicySet:
    """Load every policy under ``paths`` into a :class:`PolicySet`.

    ``signals``: the registered signal names, checked against each category's ``signal``.

    Raises:
        PolicyValidationError: every invalid file's problems, together.
        DuplicatePolicyError: two files declare the same policy id.
    """
    loaded: list[tuple[Policy, str]] = []
    issues: list[PolicyIssue] = []
    files = find_policy_files(paths)
    if not files:
        raise PolicyValidationError(
            [
                PolicyIssue(
                    source=", ".join(map(str, paths)),
                    line=None,
                    field="",
                    message="no policy files found",
                )
            ]
        )
    for file in files:
        try:
            loaded.append((load_policy_file(file, signals=signals), str(file)))
        except PolicyValidationError as exc:
            issues.extend(exc.issues)
    if issues:
        raise PolicyValidationError(issues)
    return PolicySet(loaded)


def policy_files_hash(paths: Sequence[Path]) -> str:
    """Content hash of every policy file under ``paths`` (names and bytes): cheap to poll for
    hot reload."""
    digest = hashlib.sha256()
    for file in sorted(find_policy_files(paths)):
        digest.update(str(file).encode() + b"\0")
        try:
            digest.update(file.read_bytes())
        except OSError:
            digest.update(b"<unreadable>")
    return digest.hexdigest()
