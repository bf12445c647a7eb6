"""ImageNet's size: how start-up grows with the number of files (not a timed test).

    python -m dali_cutmix_bench.scale --out /tmp/scale            # 10,000 and 100,000 files, 1,000 classes

Builds two 1,000-class trees of small real-photo JPEGs (random crops of Debian's
``mate-backgrounds`` photos, 48 px), then, for each, in a fresh process: listing the files, the
bad-file scan (uncached, then cached), building the training pipeline and its loader, the first
batch, and the resident memory. Prints each figure, its growth from the small tree to the large
one, and a linear extrapolation to ImageNet's 1.28 M files; writes ``scale.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from dali_cutmix_bench.benchdata import find_photos

IMAGENET_FILES = 1_281_167


def build_tree(out: Path, per_class: int, classes: int = 1000, side: int = 48, seed: int = 0) -> Path:
    """``out/train/<class>/*.JPEG`` (``per_class`` each) and a small ``out/val``; cached by marker."""
    from PIL import Image

    marker = out / ".complete"
    stamp = f"scale {per_class} {classes} {side} {seed}\n"
    if marker.is_file() and marker.read_text() == stamp:
        return out
    sources = []
    for path in find_photos():
        photo = Image.open(path).convert("RGB")
        photo.thumbnail((320, 320))  # crop from small copies: 100,000 crops of 4 MP photos take too long
        sources.append(photo)
    rng = np.random.default_rng(seed)
    for split, count in (("train", per_class), ("val", 1)):
        for c in range(classes):
            folder = out / split / f"n{c:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                photo = sources[(c + i) % len(sources)]
                W, H = photo.size
                s = int(rng.integers(side, min(W, H) + 1))
                x, y = int(rng.integers(0, W - s + 1)), int(rng.integers(0, H - s + 1))
                crop = photo.crop((x, y, x + s, y + s)).resize((side, side))
                crop.save(folder / f"n{c:08d}_{i}.JPEG", quality=85)
    marker.write_text(stamp)
    return out


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(root: Path) -> dict:
    """Start-up figures of one tree, in this (fresh) process."""
    from dali_cutmix.loader import DALILoader
    from pipelines.folders import load_split
    from pipelines.graphs import READER_NAME, train_pipeline
    from pipelines.scan import scan

    figures = {"rss_start_mb": rss_mb()}
    start = time.perf_counter()
    split = load_split(root / "train")
    figures |= {"files": len(split), "list_s": time.perf_counter() - start}
    with tempfile.TemporaryDirectory() as cache:
        for kind in ("scan_uncached", "scan_cached"):
            start = time.perf_counter()
            result = scan(split, cache_dir=Path(cache), workers=2)
            seconds = time.perf_counter() - start
            figures |= {f"{kind}_s": seconds, f"{kind}_files_per_s": len(split) / seconds}
        assert len(result.good) == len(split)
    figures["rss_after_scan_mb"] = rss_mb()
    start = time.perf_counter()
    pipe = train_pipeline(split, batch_size=64, image_size=48, num_threads=2)
    pipe.build()
    figures["build_s"] = time.perf_counter() - start
    loader = DALILoader(pipe, ("images", "labels_a", "labels_b", "lam"), reader_name=READER_NAME)
    batches = iter(loader)
    next(batches)  # DALI's iterator runs the first batch as it is made
    figures["first_batch_s"] = time.perf_counter() - start  # from the start of the build
    figures["rss_after_first_batch_mb"] = rss_mb()
    return figures


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for the two trees and scale.json")
    p.add_argument("--small", type=int, default=10, help="images per class of the small tree (1,000 classes)")
    p.add_argument("--large", type=int, default=100, help="images per class of the large tree")
    p.add_argument("--measure", help=argparse.SUPPRESS)  # the child: one tree's figures as JSON
    args = p.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(Path(args.measure))))
        return
    out = Path(args.out)
    figures = {}
    for per_class in (args.small, args.large):
        start = time.perf_counter()
        root = build_tree(out / f"tree-{per_class}", per_class)
        print(f"tree of {per_class * 1000} files ready in {time.perf_counter() - start:.0f} s", flush=True)
        command = [sys.executable, "-m", "dali_cutmix_bench.scale", "--out", args.out, "--measure", str(root)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"scale: measuring {root} failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
        figures[per_class * 1000] = json.loads(done.stdout.strip().splitlines()[-1])
    (small, a), (large, b) = figures.items()
    print(f"{'figure':28} {small:>10,} {large:>10,}   growth per file   extrapolated to {IMAGENET_FILES:,}")
    for key in ("list_s", "scan_uncached_s", "scan_cached_s", "build_s", "first_batch_s", "rss_after_first_batch_mb"):
        per_file = (b[key] - a[key]) / (large - small)
        at_imagenet = b[key] + per_file * (IMAGENET_FILES - large)
        unit = f"{per_file * 1024 * 1024:8.0f} bytes" if key.endswith("_mb") else f"{per_file * 1e6:8.2f} us"
        print(f"{key:28} {a[key]:10.2f} {b[key]:10.2f}   {unit}       {at_imagenet:10.1f}")
    for key in ("scan_uncached_files_per_s", "scan_cached_files_per_s"):
        print(f"{key:28} {a[key]:10.0f} {b[key]:10.0f}")
    (out / "scale.json").write_text(json.dumps(figures, indent=2))
    print(f"wrote {out / 'scale.json'}")


if __name__ == "__main__":
    main()
