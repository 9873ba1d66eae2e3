"""Reading policy YAML files with precise ``file:line: field: message`` errors, and writing new
versions of them.

Policy files are operator input, read defensively: at most :data:`MAX_POLICY_BYTES`, YAML
without aliases (``*name``: an alias "bomb" of a few hundred bytes expands to billions of
nodes), at most :data:`MAX_POLICY_NODES` nodes nested at most :data:`MAX_POLICY_DEPTH` deep; each
refusal is a :class:`~moderation.exceptions.PolicyValidationError` naming the file and line.

Exemplar images (``categories[i].exemplars``) are resolved here: each path is relative to its
policy file and must stay inside the policy file's folder (no absolute paths, no ``..`` or
symbolic link leading out of it); the file must exist, be readable and (when the caller passes
``check_image``) decode; its sha256 is filled into the policy, so the image's content is part of
the policy hash.

New versions (``moderation calibrate``, ``moderation policy promote``) are written by editing
the YAML text in place (:func:`edit_policy_text`): comments, order and formatting survive, and a
diff against the old file shows exactly what changed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from moderation.adapters.support.files import atomic_write
from moderation.core.policy import Policy, PolicyMode, PolicySet, VideoRule
from moderation.exceptions import ModerationError, PolicyError, PolicyIssue, PolicyValidationError
from moderation.ports import BlobStore, PolicyDocument, PolicyStore

__all__ = [
    "EXEMPLAR_PREFIX",
    "MAX_POLICY_DEPTH",
    "MAX_POLICY_NODES",
    "ImageCheck",
    "PolicyFolder",
    "StoredPolicyFolder",
    "compose_policy_yaml",
    "edit_policy_text",
    "exemplar_path",
    "find_policy_files",
    "load_policies",
    "load_policy_file",
    "load_policy_text",
    "policy_files_hash",
    "write_text_atomic",
]

PathKey = tuple[str | int, ...]
MAX_POLICY_BYTES = 1_000_000
#: YAML nodes (scalars, lists, mappings) a policy file may hold: far above any real policy.
MAX_POLICY_NODES = 100_000
#: How deep YAML lists and mappings may nest in a policy file (a policy needs about 6).
MAX_POLICY_DEPTH = 32
MAX_EXEMPLAR_BYTES = 20 * 1024 * 1024

#: Checks that bytes are an image the pipeline can decode; raises ModerationError if not.
ImageCheck = Callable[[bytes], None]


class _PolicyYamlLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` for untrusted-size documents: refuses aliases (so a document's size
    bounds its node count), more than :data:`MAX_POLICY_NODES` nodes, and nesting deeper than
    :data:`MAX_POLICY_DEPTH` (so composing never recurses far). Anchors alone are harmless."""

    def __init__(self, stream: str | bytes) -> None:
        super().__init__(stream)
        self._nodes = 0
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event: Any = self.peek_event()  # type: ignore[no-untyped-call]
        problem = None
        if isinstance(event, yaml.AliasEvent):
            problem = (
                f"aliases (*{event.anchor}) are not allowed in policy files; write the value out"
            )
        elif self._nodes >= MAX_POLICY_NODES:
            problem = f"more than {MAX_POLICY_NODES} YAML nodes; a policy file is far smaller"
        elif self._depth >= MAX_POLICY_DEPTH:
            problem = f"nested more than {MAX_POLICY_DEPTH} levels deep"
        if problem is not None:
            raise yaml.composer.ComposerError(None, None, problem, event.start_mark)
        self._nodes += 1
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def compose_policy_yaml(text: str) -> yaml.Node | None:
    """The YAML node tree of a policy document, read with :class:`_PolicyYamlLoader`.

    Raises:
        yaml.YAMLError: malformed YAML, an alias, too many nodes, or nesting too deep.
    """
    loader = _PolicyYamlLoader(text)
    try:
        return loader.get_single_node()
    finally:
        loader.dispose()


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


def exemplar_path(base_dir: Path, path: str) -> Path:
    """Where an exemplar written as ``path`` in a policy file under ``base_dir`` is.

    Raises:
        PolicyError: ``path`` is absolute or leads out of ``base_dir`` (``..``, or a symbolic
            link pointing outside it).
    """
    if Path(path).is_absolute():
        raise PolicyError(f"exemplar {path}: must be relative to the policy file")
    folder = base_dir.resolve()
    file = (folder / path).resolve()
    if not file.is_relative_to(folder):
        raise PolicyError(f"exemplar {path}: leads out of the policy's folder {base_dir}")
    return file


def _resolve_exemplars(
    data: dict[str, Any],
    policy: Policy,
    located: _Located,
    base_dir: Path | None,
    check_image: ImageCheck | None,
) -> list[PolicyIssue]:
    """Fill in each exemplar's sha256 in ``data`` (the plain YAML data), or say what is wrong."""
    issues: list[PolicyIssue] = []

    def issue(path: PathKey, message: str) -> None:
        issues.append(
            PolicyIssue(
                source=located.source,
                line=located.line_of(path),
                field=_field_name(path),
                message=message,
            )
        )

    for index, category in enumerate(policy.categories):
        if category.exemplars is None:
            continue
        for kind in ("positive", "benign"):
            for position, exemplar in enumerate(getattr(category.exemplars, kind)):
                path: PathKey = ("categories", index, "exemplars", kind, position)
                if base_dir is None:
                    issue(path, "exemplars need a policy file (their paths are relative to it)")
                    continue
                try:
                    file = exemplar_path(base_dir, exemplar.path)
                except PolicyError as exc:
                    issue(path, str(exc).removeprefix("exemplar "))
                    continue
                try:
                    if file.stat().st_size > MAX_EXEMPLAR_BYTES:
                        issue(path, f"{exemplar.path}: larger than {MAX_EXEMPLAR_BYTES} bytes")
                        continue
                    raw = file.read_bytes()
                except OSError as exc:
                    issue(path, f"{exemplar.path}: cannot read ({exc.strerror or exc})")
                    continue
                digest = hashlib.sha256(raw).hexdigest()
                if exemplar.sha256 is not None and exemplar.sha256 != digest:
                    issue(path, f"{exemplar.path}: sha256 is {digest}, not the pinned one")
                    continue
                if check_image is not None:
                    try:
                        check_image(raw)
                    except ModerationError as exc:
                        issue(path, f"{exemplar.path}: not a usable image ({exc.code}: {exc})")
                        continue
                entries = data["categories"][index]["exemplars"][kind]
                entries[position] = {"path": exemplar.path, "sha256": digest}
    return issues


def load_policy_text(
    text: str,
    *,
    source: str = "<string>",
    signals: Collection[str] | None = None,
    base_dir: Path | None = None,
    check_image: ImageCheck | None = None,
) -> Policy:
    """Parse and validate one policy document.

    Args:
        text: the YAML.
        source: the file name used in messages.
        signals: the registered signal names (a category naming another is an error); None
            skips that check.
        base_dir: the folder exemplar paths are relative to (the policy file's).
        check_image: decodes an exemplar's bytes (raises ModerationError when it cannot); None
            checks only that the file can be read.

    Raises:
        PolicyValidationError: with every problem found, each located by file and line.
    """
    located = _Located(source)
    try:
        node = compose_policy_yaml(text)
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
    if any(c.exemplars is not None for c in policy.categories):
        issues = _resolve_exemplars(data, policy, located, base_dir, check_image)
        if issues:
            raise PolicyValidationError(issues)
        policy = Policy.model_validate(data)
    return policy


def load_policy_file(
    path: str | Path,
    *,
    signals: Collection[str] | None = None,
    check_image: ImageCheck | None = None,
) -> Policy:
    """Read and validate one policy file (exemplar paths are relative to its folder).

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
    return load_policy_text(
        text, source=str(path), signals=signals, base_dir=path.parent, check_image=check_image
    )


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
    paths: Iterable[str | Path],
    *,
    signals: Collection[str] | None = None,
    check_image: ImageCheck | None = None,
) -> PolicySet:
    """Load every policy under ``paths`` into a :class:`PolicySet`.

    ``signals``: the registered signal names, checked against each category's ``signal``;
    ``check_image``: decodes exemplar images (see :func:`load_policy_text`).

    Raises:
        PolicyValidationError: every invalid file's problems, together.
        DuplicatePolicyError: two files declare the same live policy id (or two shadows).
        PolicyVersionConflict: a shadow has its live policy's version but other content.
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
            loaded.append(
                (load_policy_file(file, signals=signals, check_image=check_image), str(file))
            )
        except PolicyValidationError as exc:
            issues.extend(exc.issues)
    if issues:
        raise PolicyValidationError(issues)
    return PolicySet(loaded)


def policy_files_hash(paths: Sequence[Path]) -> str:
    """Content hash of every policy file under ``paths`` (names and bytes), and of the size and
    modification time of the exemplar images they name: cheap to poll for hot reload."""
    digest = hashlib.sha256()
    for file in sorted(find_policy_files(paths)):
        digest.update(str(file).encode() + b"\0")
        try:
            raw = file.read_bytes()
        except OSError:
            digest.update(b"<unreadable>")
            continue
        digest.update(raw)
        if b"exemplars" in raw:
            for exemplar in _exemplar_paths(raw):
                try:
                    stat = (file.parent / exemplar).stat()
                    digest.update(f"{exemplar}:{stat.st_size}:{stat.st_mtime_ns}".encode())
                except OSError:
                    digest.update(f"{exemplar}:missing".encode())
    return digest.hexdigest()


def _exemplar_paths(raw: bytes) -> list[str]:
    """The exemplar paths a policy file names (best effort: for the reload fingerprint)."""
    try:
        loader = _PolicyYamlLoader(raw)
        try:
            data = loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError:
        return []
    found: list[str] = []
    categories = data.get("categories") if isinstance(data, dict) else None
    for category in categories if isinstance(categories, list) else []:
        block = category.get("exemplars") if isinstance(category, dict) else None
        if not isinstance(block, dict):
            continue
        for kind in ("positive", "benign"):
            for item in block.get(kind) or []:
                path = item.get("path") if isinstance(item, dict) else item
                if isinstance(path, str):
                    found.append(path)
    return found


# --- writing new versions ------------------------------------------------------------------


def _number(value: float) -> str:
    text = f"{value:.6f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def edit_policy_text(
    text: str,
    *,
    version: int | None = None,
    mode: PolicyMode | None = None,
    thresholds: Mapping[str, tuple[float, float]] | None = None,
    video: VideoRule | None = None,
    source: str = "<string>",
) -> str:
    """The policy YAML ``text`` with a new ``version``, ``mode``, per-category
    ``thresholds`` (category id -> (review, block)) and ``video`` rule, edited in place:
    everything else, comments included, is kept byte for byte. A missing ``mode`` key is added
    after ``version``; a ``video`` section replaces the old one (or is appended).

    Raises:
        PolicyValidationError: the text is not a policy mapping, or a named category or one of
            its thresholds is not found.
    """
    try:
        root = compose_policy_yaml(text)
    except yaml.YAMLError as exc:
        raise PolicyValidationError(
            [PolicyIssue(source=source, line=None, field="", message=f"invalid YAML: {exc}")]
        ) from exc

    def problem(message: str) -> PolicyValidationError:
        return PolicyValidationError(
            [PolicyIssue(source=source, line=None, field="", message=message)]
        )

    if not isinstance(root, yaml.MappingNode):
        raise problem("a policy must be a mapping")
    top = {k.value: (k, v) for k, v in root.value if isinstance(k, yaml.ScalarNode)}
    edits: list[tuple[int, int, str]] = []  # (start, end, replacement)
    if version is not None:
        if "version" not in top:
            raise problem("no version key to update")
        node = top["version"][1]
        edits.append((node.start_mark.index, node.end_mark.index, str(version)))
    if mode is not None:
        if "mode" in top:
            node = top["mode"][1]
            edits.append((node.start_mark.index, node.end_mark.index, mode.value))
        else:
            key, value = top.get("version") or top["id"]
            end = text.find("\n", value.end_mark.index)
            end = len(text) if end < 0 else end
            indent = " " * key.start_mark.column
            edits.append((end, end, f"\n{indent}mode: {mode.value}"))
    wanted = dict(thresholds or {})
    categories = top.get("categories", (None, None))[1]
    if wanted and isinstance(categories, yaml.SequenceNode):
        for item in categories.value:
            if not isinstance(item, yaml.MappingNode):
                continue
            fields = {k.value: v for k, v in item.value if isinstance(k, yaml.ScalarNode)}
            cid = getattr(fields.get("id"), "value", None)
            if cid not in wanted:
                continue
            block = fields.get("thresholds")
            if not isinstance(block, yaml.MappingNode):
                raise problem(f"category {cid!r} has no thresholds mapping")
            cuts = {k.value: v for k, v in block.value if isinstance(k, yaml.ScalarNode)}
            for name, value in zip(("review", "block"), wanted.pop(cid), strict=True):
                node = cuts.get(name)
                if node is None:
                    raise problem(f"category {cid!r} has no thresholds.{name}")
                edits.append((node.start_mark.index, node.end_mark.index, _number(value)))
    if wanted:
        raise problem(f"categories not found: {', '.join(sorted(wanted))}")
    if video is not None:
        section = (
            f"video:\n  min_block_frames: {video.min_block_frames}\n"
            f"  min_block_seconds: {_number(video.min_block_seconds)}\n"
        )
        if "video" in top:
            key, value = top["video"]
            end = value.end_mark.index
            tail = section if text[end - 1 : end] == "\n" else section.rstrip("\n")
            edits.append((key.start_mark.index, end, tail))
        else:
            edits.append((len(text), len(text), ("" if text.endswith("\n") else "\n") + section))
    out = text
    for start, end, replacement in sorted(edits, reverse=True):
        out = out[:start] + replacement + out[end:]
    return out


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temp file + rename in the same folder): a reader
    (a worker's hot reload) sees the old file or the new one, never half of one."""
    atomic_write(path, text.encode("utf-8"))


# --- the policy folder (PolicyFiles port) --------------------------------------------------


class PolicyFolder:
    """The policy files under ``paths`` (:class:`~moderation.ports.PolicyFiles`)."""

    def __init__(
        self,
        paths: Sequence[Path],
        *,
        signals: Collection[str] | None = None,
        check_image: ImageCheck | None = None,
    ) -> None:
        self.paths = list(paths)
        self.signals = signals
        self.check_image = check_image

    def load(self) -> PolicySet:
        return load_policies(self.paths, signals=self.signals, check_image=self.check_image)

    def promotion_plan(self, shadow_source: str, live_source: str | None) -> dict[str, str]:
        shadow = Path(shadow_source)
        policy = load_policy_file(shadow, signals=self.signals)
        if live_source is None:
            return {"live_file": str(shadow), "from_file": str(shadow), "retired_file": ""}
        live = Path(live_source)
        if live.parent.resolve() != shadow.parent.resolve() and any(
            c.exemplars is not None for c in policy.categories
        ):
            raise PolicyValidationError(
                [
                    PolicyIssue(
                        source=str(shadow),
                        line=None,
                        field="",
                        message=f"has exemplars relative to its folder; put it next to "
                        f"{live} before promoting it",
                    )
                ]
            )
        old = load_policy_file(live, signals=self.signals)
        retired = live.parent / "retired" / f"{live.stem}.v{old.version}{live.suffix}"
        return {"live_file": str(live), "from_file": str(shadow), "retired_file": str(retired)}

    def promote(self, plan: dict[str, str]) -> None:
        shadow, live = Path(plan["from_file"]), Path(plan["live_file"])
        promoted = edit_policy_text(
            shadow.read_text(encoding="utf-8"), mode=PolicyMode.LIVE, source=str(shadow)
        )
        if plan.get("retired_file"):
            write_text_atomic(Path(plan["retired_file"]), live.read_text(encoding="utf-8"))
        write_text_atomic(live, promoted)
        if shadow != live:
            shadow.unlink()


# --- policies served from the policy store (PolicyFiles port) ---------------------------------

#: Where exemplar images of stored policies are in the object store (by sha256).
EXEMPLAR_PREFIX = "policy-exemplars/"
_STORE = "policy-store"


def exemplar_key(sha256: str) -> str:
    """The object-store key of an exemplar image of a stored policy."""
    return f"{EXEMPLAR_PREFIX}{sha256}"


class StoredPolicyFolder:
    """The policies of a :class:`~moderation.ports.PolicyStore` (``policy_source: database``),
    as a :class:`~moderation.ports.PolicyFiles`.

    Each serving document is written once under ``root/<document id>/policy.yaml`` with its
    exemplar images beside it (fetched from the object store by sha256 and checked against
    it), then read like any policy file: the same validation, the same exemplar rules, and the
    compile cache and exemplar encoders work unchanged. A document never changes (a new version
    is a new document), so what is on disk is reused. :meth:`fingerprint` is the store's version:
    one cheap read that workers poll to follow a promotion without a restart.

    Raises (every method): ``PolicyError`` subclasses; ``DatabaseUnavailable`` and
    ``BlobStoreUnavailable`` (transient) when a store cannot be reached.
    """

    def __init__(
        self,
        store: PolicyStore,
        blobs: BlobStore,
        root: Path,
        *,
        signals: Collection[str] | None = None,
        check_image: ImageCheck | None = None,
        actor: str = "promotion",
    ) -> None:
        self.store = store
        self.blobs = blobs
        self.root = root
        self.signals = signals
        self.check_image = check_image
        self.actor = actor

    def fingerprint(self) -> str:
        return f"{_STORE}:{self.store.version()}"

    def materialize(self, doc: PolicyDocument) -> Path:
        """The local file of ``doc`` (written with its exemplars the first time)."""
        folder = self.root / str(doc.id)
        file = folder / "policy.yaml"
        if file.exists():
            return file
        for path, digest in sorted(doc.exemplars.items()):
            target = exemplar_path(folder, path)
            if target.exists():
                continue
            data = self.blobs.get(exemplar_key(digest))
            if hashlib.sha256(data).hexdigest() != digest:
                raise PolicyError(
                    f"exemplar {path} of policy {doc.policy_id} v{doc.version}: the object "
                    f"store's bytes do not have sha256 {digest}",
                    code="policy_exemplar_changed",
                )
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(target, data, durable=False)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(file, doc.body.encode("utf-8"), durable=False)  # last: marks it complete
        return file

    def load(self) -> PolicySet:
        documents = self.store.serving()
        if not documents:
            raise PolicyValidationError(
                [
                    PolicyIssue(
                        source=_STORE,
                        line=None,
                        field="",
                        message="the policy store holds no policies: publish them with "
                        "`moderation policy publish`",
                    )
                ]
            )
        loaded: list[tuple[Policy, str]] = []
        issues: list[PolicyIssue] = []
        for doc in documents:
            file = self.materialize(doc)
            try:
                policy = load_policy_file(file, signals=self.signals, check_image=self.check_image)
            except PolicyValidationError as exc:
                issues.extend(exc.issues)
                continue
            loaded.append((policy, str(file)))
        if issues:
            raise PolicyValidationError(issues)
        return PolicySet(loaded)

    @staticmethod
    def document_id(source: str) -> int:
        """The document a materialized file holds."""
        try:
            return int(Path(source).parent.name)
        except ValueError:
            raise PolicyError(
                f"{source} is not a file of the policy store", code="policy_document_unknown"
            ) from None

    def promotion_plan(self, shadow_source: str, live_source: str | None) -> dict[str, str]:
        shadow = self.store.document(self.document_id(shadow_source))
        return {
            "live_file": f"{_STORE}:{shadow.policy_id}/live",
            "from_file": f"{_STORE}:document/{shadow.id}",
            "retired_file": (
                f"{_STORE}:document/{self.document_id(live_source)}" if live_source else ""
            ),
        }

    def promote(self, plan: dict[str, str]) -> None:
        shadow = self.store.document(int(plan["from_file"].rsplit("/", 1)[1]))
        body = edit_policy_text(shadow.body, mode=PolicyMode.LIVE, source=plan["from_file"])
        self.store.promote(shadow.id, body=body, actor=self.actor)
