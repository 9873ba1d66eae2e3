"""How exactly our vPDQ hashes agree with Meta's reference ``vpdq``, on ThreatExchange's own
sample videos (``tmk/sample-videos/*.mp4``) and the expected hashes of its regression test
(``vpdq/sample-hashes/<video>.txt``: every frame, full resolution). Prints JSON.

    python bench/vpdq_agreement.py --te-git /work/.mirror/facebook+ThreatExchange/repo
    python bench/vpdq_agreement.py --videos DIR --hashes DIR      # a checkout's two folders
    python bench/vpdq_agreement.py ... --limit 3                  # fewer videos

Two of our paths are compared with the reference's hash of the **same frame number**:

* ``full``: every frame decoded by PyAV (its bundled FFmpeg) to RGB at full size, hashed by
  ``pdqhash`` (Meta's PDQ C++): the PDQ implementation and the decoder, nothing else;
* ``pipeline``: what moderation stores and matches: the sampled frames (one a second plus scene
  cuts) decoded at the reduced size scoring needs and hashed by the hash-bank signal (short side
  in [224, 448)), with our estimated frame numbers.

Per video and overall: frames compared, exact hashes, Hamming distance (mean, median, p95, max),
the share within 31 bits (a frame match for vPDQ), the quality difference; and, video-level,
ThreatExchange's vPDQ shares of our hash against the reference's (query share: our frames that
match a reference frame; indexed share) and whether its rule (query >= 80 %) matches.

When the PyPI ``vpdq`` package is importable (built from source: cmake and FFmpeg's dev headers),
``--reference-build`` also hashes each video with it and compares with the committed expected
hashes (does the local build reproduce them?). Nothing here is needed by the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import av
import numpy as np
import pdqhash

from moderation.core.vpdq import VpdqFrame, format_text, hamming, match_brute, parse_text
from moderation.pipeline.video_banks import hash_video
from moderation.settings import Settings
from moderation.testmodel.clips import VPDQ_FIXTURE_CLIPS, vpdq_fixture_clip


def _git_files(git_dir: Path, folder: str, suffix: str, out: Path) -> list[Path]:
    names = subprocess.run(
        ["git", "--git-dir", str(git_dir), "ls-tree", "-r", "--name-only", "HEAD", folder],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    paths = []
    for name in names:
        if not name.endswith(suffix) or "/" in name[len(folder) + 1 :]:
            continue
        shown = subprocess.run(
            ["git", "--git-dir", str(git_dir), "show", f"HEAD:{name}"], capture_output=True
        )
        data = shown.stdout
        if shown.returncode != 0 or (suffix == ".mp4" and data[4:8] != b"ftyp"):
            print(f"{name}: not in the mirror, skipped", file=sys.stderr)
            continue  # absent from the snapshot (its largest files may be missing)
        path = out / Path(name).name
        path.write_bytes(data)
        paths.append(path)
    return paths


def _full_frames(path: Path) -> list[VpdqFrame]:
    out = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for number, frame in enumerate(container.decode(stream)):
            rgb = frame.to_ndarray(format="rgb24")
            bits, quality = pdqhash.compute(rgb)
            digest = np.packbits(np.asarray(bits, dtype=np.uint8)).tobytes().hex()
            stamp = float(frame.time) if frame.time is not None else 0.0
            out.append(VpdqFrame(number, int(quality), digest, stamp))
    return out


def write_fixtures(folder: Path) -> None:
    """Hash each fixture clip with the reference ``vpdq`` (every frame) into ``folder``."""
    import hashlib
    from importlib import metadata

    import vpdq  # type: ignore[import-not-found,unused-ignore]

    folder.mkdir(parents=True, exist_ok=True)
    for name in VPDQ_FIXTURE_CLIPS:
        data = vpdq_fixture_clip(name)
        with tempfile.NamedTemporaryFile(suffix=".mp4") as handle:
            handle.write(data)
            handle.flush()
            features = vpdq.computeHash(handle.name, seconds_per_hash=0)
        frames = [
            VpdqFrame(f.frame_number, f.quality, f.hex, round(f.timestamp, 3)) for f in features
        ]
        header = (
            f"# Meta's reference vpdq {metadata.version('vpdq')} (PyPI source build),"
            " every frame, of bench/vpdq_agreement.py's fixture clip\n"
            f"# clip {name} sha256 {hashlib.sha256(data).hexdigest()}\n"
        )
        (folder / f"{name}.txt").write_text(header + format_text(frames))
        print(f"{folder / name}.txt: {len(frames)} frames", file=sys.stderr)


def _sampled_at(decoder: Any, data: bytes, side: int) -> list[VpdqFrame]:
    """The pipeline's sampled frames decoded at short side ``side`` (0: full size), hashed by
    the hash-bank signal."""
    from moderation.signals.hash_bank import hash_frame

    media = decoder.decode_media(data, min_side=side)
    numbers = media.timeline.frame_numbers if media.timeline else (0,)
    stamps = media.timeline.timestamps if media.timeline else (0.0,)
    out = []
    for frame, number, stamp in zip(media.frames, numbers, stamps, strict=True):
        feature = hash_frame(frame)
        out.append(VpdqFrame(number, feature.quality, feature.hex, round(stamp, 3)))
    return out


def _compare(ours: list[VpdqFrame], ref: list[VpdqFrame]) -> dict[str, Any]:
    by_number = {f.frame_number: f for f in ref}
    pairs = [(f, by_number[f.frame_number]) for f in ours if f.frame_number in by_number]
    dist = [hamming(a.pdq, b.pdq) for a, b in pairs]
    out: dict[str, Any] = {"frames_ours": len(ours), "frames_compared": len(pairs)}
    if dist:
        out.update(
            exact=round(sum(d == 0 for d in dist) / len(dist), 4),
            within_31=round(sum(d <= 31 for d in dist) / len(dist), 4),
            mean_bits=round(statistics.fmean(dist), 2),
            median_bits=statistics.median(dist),
            p95_bits=int(np.percentile(dist, 95)),
            max_bits=max(dist),
            mean_quality_diff=round(
                statistics.fmean(abs(a.quality - b.quality) for a, b in pairs), 2
            ),
        )
    try:
        shares = match_brute(ours, ref)
        out.update(
            query_share=round(shares.query_percent, 2),
            indexed_share=round(shares.indexed_percent, 2),
            te_match=shares.query_percent >= 80.0,
        )
    except ValueError as exc:
        out["te_match_error"] = str(exc)
    out["_dist"] = dist
    return out


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    dist = [d for r in rows for d in r.pop("_dist")]
    if not dist:
        return {}
    return {
        "videos": len(rows),
        "frames_compared": len(dist),
        "exact": round(sum(d == 0 for d in dist) / len(dist), 4),
        "within_31": round(sum(d <= 31 for d in dist) / len(dist), 4),
        "mean_bits": round(statistics.fmean(dist), 2),
        "median_bits": statistics.median(dist),
        "p95_bits": int(np.percentile(dist, 95)),
        "max_bits": max(dist),
        "te_match_videos": sum(bool(r.get("te_match")) for r in rows),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--te-git", type=Path, help="a ThreatExchange git directory (bare is fine)")
    ap.add_argument("--videos", type=Path, help="folder of the sample videos (.mp4)")
    ap.add_argument("--hashes", type=Path, help="folder of the expected hashes (.txt)")
    ap.add_argument("--limit", type=int, default=0, help="at most this many videos")
    ap.add_argument("--reference-build", action="store_true", help="also run the vpdq package")
    ap.add_argument("--no-full", action="store_true", help="skip the every-frame comparison")
    ap.add_argument("--only", nargs="*", default=[], help="these videos (names without .mp4)")
    ap.add_argument(
        "--pipeline-side",
        type=int,
        nargs="*",
        default=[],
        help="also hash the sampled frames decoded at these short sides (0: full size)",
    )
    ap.add_argument(
        "--write-fixtures", type=Path, help="write the reference hashes of the test clips here"
    )
    args = ap.parse_args()
    if args.write_fixtures:
        write_fixtures(args.write_fixtures)
        return

    tmp = Path(tempfile.mkdtemp(prefix="vpdq-agreement-"))
    if args.te_git:
        videos = _git_files(args.te_git, "tmk/sample-videos", ".mp4", tmp)
        hashes_dir = tmp / "hashes"
        hashes_dir.mkdir()
        _git_files(args.te_git, "vpdq/sample-hashes", ".txt", hashes_dir)
    elif args.videos and args.hashes:
        videos = sorted(args.videos.glob("*.mp4"))
        hashes_dir = args.hashes
    else:
        ap.error("give --te-git, or --videos and --hashes")
    videos = sorted(v for v in videos if (hashes_dir / f"{v.stem}.txt").is_file())
    if args.only:
        videos = [v for v in videos if v.stem in args.only]
    if args.limit:
        videos = videos[: args.limit]

    settings = Settings()
    from moderation.compose.registries import media_decoder

    decoder = media_decoder(settings)
    reference_build = None
    if args.reference_build:
        try:
            import vpdq as reference_build  # type: ignore[import-not-found,unused-ignore]
        except ImportError as exc:
            print(f"vpdq not importable: {exc}", file=sys.stderr)

    per_video: dict[str, Any] = {}
    full_rows: list[dict[str, Any]] = []
    pipe_rows: list[dict[str, Any]] = []
    build_rows: list[dict[str, Any]] = []
    same_rows: list[dict[str, Any]] = []
    side_rows: dict[int, list[dict[str, Any]]] = {}
    for path in videos:
        ref = parse_text((hashes_dir / f"{path.stem}.txt").read_text())
        entry: dict[str, Any] = {"reference_frames": len(ref)}
        started = time.perf_counter()
        pipe = _compare(hash_video(decoder, path.read_bytes()), ref)
        pipe["seconds"] = round(time.perf_counter() - started, 2)
        pipe_rows.append(pipe)
        entry["pipeline"] = pipe
        for side in args.pipeline_side:
            row = _compare(_sampled_at(decoder, path.read_bytes(), side), ref)
            side_rows.setdefault(side, []).append(row)
            entry[f"pipeline_side_{side}"] = row
        full_frames: list[VpdqFrame] = []
        if not args.no_full:
            started = time.perf_counter()
            full_frames = _full_frames(path)
            full = _compare(full_frames, ref)
            full["seconds"] = round(time.perf_counter() - started, 2)
            full_rows.append(full)
            entry["full"] = full
        if reference_build is not None:
            features = reference_build.computeHash(str(path), seconds_per_hash=0)
            built = [
                VpdqFrame(f.frame_number, f.quality, f.hex, round(f.timestamp, 3)) for f in features
            ]
            row = _compare(built, ref)
            build_rows.append(row)
            entry["reference_build"] = row
            if full_frames:  # ours and the reference on the same machine and file
                row = _compare(full_frames, built)
                same_rows.append(row)
                entry["full_vs_reference_build"] = row
        per_video[path.stem] = entry
        print(f"{path.stem}: done", file=sys.stderr)

    result = {
        "bench": "vpdq_agreement",
        "machine": f"{platform.node()}: {os.cpu_count()} vCPU {platform.machine()}, "
        f"Python {platform.python_version()}, PyAV {av.__version__}",
        "reference": "ThreatExchange vpdq/sample-hashes (every frame, full resolution)",
        "summary": {
            "pipeline": _summary(pipe_rows),
            **({"full": _summary(full_rows)} if full_rows else {}),
            **({"reference_build": _summary(build_rows)} if build_rows else {}),
            **({"full_vs_reference_build": _summary(same_rows)} if same_rows else {}),
            **{f"pipeline_side_{side}": _summary(rows) for side, rows in side_rows.items()},
        },
        "videos": per_video,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
