"""Reading labelled datasets for ``moderation eval`` and ``moderation calibrate``.

A dataset is a labels file, or a folder holding one (``labels.csv`` or ``labels.jsonl``), in
either of two shapes:

* **labels**: ``image`` (a path relative to the labels file, or an image reference such as
  ``s3://…``, ``https://…``, ``inline:…``) and ``labels``, the categories the image violates
  (``policy/category`` or a bare category id; in CSV separated by ``;``, ``|`` or ``,``; empty:
  benign for every category). In JSON Lines ``labels`` may also be a list::

      image,labels
      img/0001.png,contraband_symbol
      img/0002.png,

      {"image": "img/0001.png", "labels": ["contraband_symbol"]}

* **a review export** (``moderation review export``, CSV or JSON Lines, as written): each row is
  one human decision on one category: ``remove`` labels the image violating for that category,
  ``allow`` benign for it, and other categories stay unlabelled; ``escalate`` labels nothing.

* **a folder per label** (no labels file): each subfolder is named after the category its
  files violate (a bare category id, or ``policy.category``); a subfolder named ``benign``,
  ``allow``, ``none`` or ``negative`` holds files that violate nothing. Its files (any depth)
  are images and videos, mixed freely, recognised by suffix; other files are counted as
  skipped::

      clips/contraband_symbol/star-12s.mp4
      clips/contraband_symbol/star.png
      clips/benign/beach.webm

Problems are reported as ``file:line: message``.
"""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from moderation.core.evaluation import Dataset, LabelledItem
from moderation.core.image_ref import ImageRef
from moderation.exceptions import DatasetError

__all__ = [
    "BENIGN_FOLDERS",
    "LABEL_FILES",
    "find_labels_file",
    "is_label_folders",
    "load_dataset",
    "load_label_folders",
]

#: Names a dataset folder's labels file may have.
LABEL_FILES = ("labels.csv", "labels.jsonl", "labels.json", "labels.ndjson")
_SPLIT = re.compile(r"[;|,]")
_HUMAN_LABELS = {"remove": True, "allow": False}


#: Subfolder names of a folder-per-label dataset that mean "violates nothing".
BENIGN_FOLDERS = frozenset({"benign", "allow", "none", "negative"})
#: File suffixes a folder-per-label dataset reads (images and videos).
IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".heic", ".heif", ".avif"}
)
VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".webm", ".mkv"})


def is_label_folders(path: Path) -> bool:
    """Whether ``path`` is a folder-per-label dataset: a folder without a labels file whose
    subfolders hold the files."""
    return (
        path.is_dir()
        and not any((path / name).is_file() for name in LABEL_FILES)
        and any(child.is_dir() for child in path.iterdir())
    )


def load_label_folders(path: Path) -> Dataset:
    """Read a folder-per-label dataset (see the module docstring).

    Raises:
        DatasetError: a subfolder name that cannot be a category, or no image or video.
    """
    items: list[LabelledItem] = []
    skipped: Counter[str] = Counter()
    for folder in sorted(p for p in path.iterdir() if p.is_dir()):
        label = folder.name.strip()
        if label.lower() in BENIGN_FOLDERS:
            positive: frozenset[str] = frozenset()
        elif re.fullmatch(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)?", label):
            positive = frozenset({label.replace(".", "/", 1)})
        else:
            raise DatasetError(
                f"{folder}: a label folder is named after a category (id or policy.category) "
                f"or one of {', '.join(sorted(BENIGN_FOLDERS))}"
            )
        for file in sorted(f for f in folder.rglob("*") if f.is_file()):
            suffix = file.suffix.lower()
            if suffix not in IMAGE_SUFFIXES | VIDEO_SUFFIXES:
                skipped[f"not an image or video ({suffix or 'no suffix'})"] += 1
                continue
            items.append(
                LabelledItem(
                    image=file.resolve().as_uri(),
                    positive=positive,
                    name=str(file.relative_to(path)),
                )
            )
    if not items:
        raise DatasetError(f"{path}: no image or video in its label folders")
    return Dataset(items=items, source=str(path), kind="folders", skipped=dict(skipped))


def find_labels_file(path: Path) -> Path:
    """The labels file of a dataset path (the file itself, or the one in a folder).

    Raises:
        DatasetError: missing, or a folder with none or several labels files.
    """
    if path.is_file():
        return path
    if not path.is_dir():
        raise DatasetError(f"{path}: no such file or folder")
    found = [path / name for name in LABEL_FILES if (path / name).is_file()]
    if len(found) != 1:
        names = ", ".join(LABEL_FILES)
        what = "no labels file" if not found else "several labels files"
        raise DatasetError(f"{path}: {what}; a dataset folder holds exactly one of {names}")
    return found[0]


def _rows(file: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, row) of a CSV or JSON Lines file."""
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{file}: cannot read: {exc}") from exc
    if file.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        try:
            if not reader.fieldnames or "image" not in reader.fieldnames:
                raise DatasetError(f"{file}:1: a CSV labels file needs an 'image' column")
            for row in reader:
                yield reader.line_num, dict(row)
        except csv.Error as exc:  # a cell over the field limit, a NUL byte
            raise DatasetError(f"{file}:{reader.line_num}: not readable as CSV: {exc}") from exc
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{file}:{number}: not JSON: {exc.msg}") from exc
        except RecursionError as exc:
            raise DatasetError(f"{file}:{number}: not JSON: nested too deeply") from exc
        if not isinstance(row, dict):
            raise DatasetError(f"{file}:{number}: each line must be a JSON object")
        yield number, row


def _image_ref(value: Any, base: Path, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DatasetError(f"{where}: missing 'image'")
    text = value.strip()
    scheme = ImageRef(uri=text).scheme
    if len(scheme) > 1:  # a URI (a one-letter "scheme" is a Windows drive)
        return text
    path = Path(text)
    return (path if path.is_absolute() else base / path).resolve().as_uri()


def _labels(value: Any, where: str) -> frozenset[str]:
    if value is None:
        return frozenset()
    if isinstance(value, str):
        return frozenset(part.strip() for part in _SPLIT.split(value) if part.strip())
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return frozenset(v.strip() for v in value if v.strip())
    raise DatasetError(f"{where}: 'labels' must be a list of category ids or a string")


def load_dataset(path: Path) -> Dataset:
    """Read a dataset (a labels file, a folder with one, or a review export).

    Raises:
        DatasetError: unreadable, malformed, or without any labelled image.
    """
    if is_label_folders(path):
        return load_label_folders(path)
    file = find_labels_file(path)
    base = file.parent
    items: list[LabelledItem] = []
    skipped: Counter[str] = Counter()
    kind: str | None = None
    for number, row in _rows(file):
        where = f"{file}:{number}"
        row_kind = "review_export" if "human_label" in row else "labels"
        if kind is None:
            kind = row_kind
        elif kind != row_kind:
            raise DatasetError(f"{where}: mixes review-export rows with plain label rows")
        image = _image_ref(row.get("image"), base, where)
        if row_kind == "review_export":
            label = str(row.get("human_label") or "").strip()
            category = str(row.get("category") or "").strip()
            if not category:
                raise DatasetError(f"{where}: a review-export row without 'category'")
            policy = str(row.get("policy_id") or "").strip()
            key = f"{policy}/{category}" if policy else category
            if label not in _HUMAN_LABELS:
                skipped[f"human_label {label or 'missing'} (no ground truth)"] += 1
                continue
            violates = _HUMAN_LABELS[label]
            items.append(
                LabelledItem(
                    image=image,
                    positive=frozenset({key}) if violates else frozenset(),
                    negative=frozenset() if violates else frozenset({key}),
                    name=str(row.get("review_id") or row.get("job_id") or where),
                )
            )
        else:
            items.append(
                LabelledItem(
                    image=image,
                    positive=_labels(row.get("labels"), where),
                    name=str(row.get("image")),
                )
            )
    if not items:
        raise DatasetError(f"{file}: no labelled images")
    return Dataset(items=items, source=str(file), kind=kind or "labels", skipped=dict(skipped))
