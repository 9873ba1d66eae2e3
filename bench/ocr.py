"""The text signal (``signal: text``, RapidOCR) on rendered text: recall of banned phrases and
false matches on look-alike text, per obfuscation kind, and OCR cost per image.

Each banned phrase is written in each obfuscation kind (``moderation.testmodel.text_images``:
clear, upper case, leetspeak, diacritics, Cyrillic look-alikes, spaced letters, dotted letters,
no spaces) with a font, size (28-64 px), angle (0, -8, 6 or 15 degrees) and colour drawn from
the seed, onto a background taken in turn from: the photographs inside the scikit-image wheel
(dev dependency) and matplotlib's sample photo, the test world's scenes, and busy synthetic
backgrounds (stripes and noise). Then:

* **recall**: the share of banned renderings where the rendered phrase matched (what the
  signal's scorer does: OCR, then the normalised token-run match);
* **false matches**: the share of renderings of look-alike text (a banned word inside a longer
  one, a near spelling), written the same ways, where *any* banned phrase matched; and the
  share of backgrounds without text where any matched;
* **cost**: OCR time per image (thread CPU time and wall time, one intra-op thread), and the
  engine's load time once per process.

Run under the suite lock; prints JSON (and writes it with ``--out``)::

    flock /work/notes/suite.lock .venv/bin/python bench/ocr.py [--kinds clear,leet] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

from PIL import Image

from moderation.compose.registries import build_signals
from moderation.core.text import find_phrase, tokenize_lines
from moderation.settings import Settings
from moderation.signals.text import TextSignal
from moderation.testmodel import world
from moderation.testmodel.text_images import (
    BENIGN_LOOKALIKES,
    OBFUSCATIONS,
    busy_background,
    render_text,
    samples,
)

#: Banned phrases beyond the tests' ones, with their look-alikes.
MORE: dict[str, list[str]] = {
    "buy followers": ["buy flowers", "busy followers", "buyer follow ups"],
    "crypto giveaway": ["crypto give way", "cryptography away", "crypt of giveaways"],
    "cash app me": ["cash applause", "cashapp meeting", "cash app men"],
    "wire the money": ["wire the monkey", "wired them on eyes", "wire theme money"],
}
PHRASES: dict[str, list[str]] = {**BENIGN_LOOKALIKES, **MORE}


def backgrounds() -> list[tuple[str, Image.Image]]:
    out: list[tuple[str, Image.Image]] = []
    try:
        import matplotlib
        import skimage

        data = Path(skimage.__file__).parent / "data"
        for name in ("astronaut", "coffee", "chelsea", "rocket", "motorcycle_left"):
            for path in data.glob(name + ".*"):
                if path.suffix in {".png", ".jpg"}:
                    out.append((f"skimage:{name}", Image.open(path).convert("RGB")))
        mpl = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
        out.append(("matplotlib:grace_hopper", Image.open(mpl).convert("RGB")))
    except ImportError:  # the dev extras are not installed: synthetic backgrounds only
        pass
    for k, (image, _) in enumerate(world.sample_images("allow", 3, seed=11)):
        out.append((f"testworld:{k}", image.resize((512, 512))))
    for k in range(3):
        out.append((f"busy:{k}", busy_background((640, 420), seed=k)))
    return out


def _fit(image: Image.Image, side: int = 640) -> Image.Image:
    scale = side / max(image.size)
    if scale >= 1:
        return image
    return image.resize((round(image.width * scale), round(image.height * scale)))


def _read(signal: TextSignal, image: Image.Image) -> tuple[list[str], float, float]:
    cpu, wall = time.thread_time(), time.perf_counter()
    lines = [line.text for line in signal.features(image).lines]
    return lines, (time.thread_time() - cpu) * 1000, (time.perf_counter() - wall) * 1000


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run(kinds: list[str], limit: int | None, seed: int) -> dict[str, Any]:
    signal = build_signals(Settings())["text"]
    assert isinstance(signal, TextSignal)
    rss_before = _rss_mb()
    start = time.perf_counter()
    signal.features(Image.new("RGB", (64, 64)))
    load_s = time.perf_counter() - start
    rss_loaded = _rss_mb()
    scenes = [(name, _fit(image)) for name, image in backgrounds()]
    banned = list(PHRASES)
    cpu_ms: list[float] = []
    wall_ms: list[float] = []
    per_kind: dict[str, dict[str, Any]] = {
        k: {"banned": 0, "found": 0, "lookalike": 0, "false_match": 0, "misses": []} for k in kinds
    }

    def matched(lines: list[str]) -> list[str]:
        stream = tokenize_lines(lines)
        return [p for p in banned if find_phrase(stream, p) is not None]

    jobs: list[tuple[str, str, str, Any]] = []
    for phrase, kind, how in samples(banned, kinds, seed):
        jobs.append(("banned", phrase, kind, how))
    lookalikes = [text for texts in PHRASES.values() for text in texts]
    for text, kind, how in samples(lookalikes, kinds, seed + 1):
        jobs.append(("lookalike", text, kind, how))
    if limit is not None:
        jobs = jobs[:limit]
    for index, (role, text, kind, how) in enumerate(jobs):
        name, scene = scenes[index % len(scenes)]
        image = render_text(
            scene, how.text, size=how.size, font=how.font, angle=how.angle, colour=how.colour
        )
        lines, cpu, wall = _read(signal, image)
        cpu_ms.append(cpu)
        wall_ms.append(wall)
        found = matched(lines)
        row = per_kind[kind]
        if role == "banned":
            row["banned"] += 1
            if text in found:
                row["found"] += 1
            else:
                row["misses"].append({"phrase": text, "written": how.text, "read": lines,
                                      "background": name})  # fmt: skip
        else:
            row["lookalike"] += 1
            if found:
                row["false_match"] += 1
                row.setdefault("false", []).append({"text": text, "read": lines, "matched": found})
        print(f"\r{index + 1}/{len(jobs)} images", end="", flush=True)
    print()
    empty_false = 0
    for _, scene in scenes:
        lines, cpu, wall = _read(signal, scene)
        cpu_ms.append(cpu)
        wall_ms.append(wall)
        empty_false += bool(matched(lines))
    for row in per_kind.values():
        row["recall"] = round(row["found"] / row["banned"], 4) if row["banned"] else None
        row["false_match_rate"] = (
            round(row["false_match"] / row["lookalike"], 4) if row["lookalike"] else None
        )
        row["misses"] = row["misses"][:5]
    return {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpus": __import__("os").cpu_count(),
        "engine": "rapidocr-onnxruntime (PP-OCRv4 det/rec, v2 angle classifier), 1 thread",
        "phrases": banned,
        "backgrounds": [name for name, _ in scenes],
        "per_kind": per_kind,
        "backgrounds_without_text": {"images": len(scenes), "false_match": empty_false},
        "cost_ms": {
            "images": len(cpu_ms),
            "cpu_median": round(statistics.median(cpu_ms), 1),
            "cpu_mean": round(statistics.fmean(cpu_ms), 1),
            "wall_median": round(statistics.median(wall_ms), 1),
            "wall_p90": round(sorted(wall_ms)[int(0.9 * (len(wall_ms) - 1))], 1),
        },
        "engine_load_s": round(load_s, 2),
        "process_rss_mb": {
            "before_engine": round(rss_before, 1),
            "engine_loaded": round(rss_loaded, 1),
            "after_all_images": round(_rss_mb(), 1),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kinds", default=",".join(OBFUSCATIONS))
    parser.add_argument("--limit", type=int, default=None, help="at most this many renderings")
    parser.add_argument("--seed", type=int, default=23)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    kinds = [k for k in args.kinds.split(",") if k]
    unknown = set(kinds) - set(OBFUSCATIONS)
    if unknown:
        parser.error(f"unknown kinds {sorted(unknown)}; known: {', '.join(OBFUSCATIONS)}")
    result = run(kinds, args.limit, args.seed)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
