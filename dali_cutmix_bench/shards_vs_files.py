"""WebDataset shards against the same images as files (not a timed test).

    python -m dali_cutmix_bench.shards_vs_files --data /tmp/bd1k --out /tmp/bd1k-wds

Writes ``--data``'s training images as tar shards (webdataset's own ``ShardWriter``, once), then
measures the check and index of the shards (uncached and cached) beside the folder scan of the
same images, and the training loader (CutMix, native backend) iterated for whole epochs back to
back on each, in a process of its own per turn (``dali_cutmix_bench.bench``'s epoch worker): images/s
and process CPU time per batch. Prints a table; writes ``shards.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from dali_cutmix_bench.bench import epoch_run
from pipelines.folders import load_imagenet
from pipelines.scan import scan
from pipelines.shards import CLASSES_FILE, load_shards

CONFIG = "DALI + CutMix (native)"


def write_shards(split, pattern: Path, per_shard: int) -> None:
    """``split`` as tar shards ``pattern`` (with ``%06d``) in its order, written by webdataset's own
    ``ShardWriter`` (``<key>.jpg`` + ``<key>.cls``), and a ``classes.txt`` beside them."""
    import webdataset

    pattern.parent.mkdir(parents=True, exist_ok=True)
    with webdataset.ShardWriter(str(pattern), maxcount=per_shard, verbose=0) as sink:
        for k, (path, label) in enumerate(zip(split.files, split.labels)):
            sink.write({"__key__": f"{k:08d}", "jpg": Path(path).read_bytes(), "cls": label})
    (pattern.parent / CLASSES_FILE).write_text("".join(c + "\n" for c in split.classes))


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="ImageNet-layout root (dali_cutmix_bench.benchdata)")
    p.add_argument("--out", required=True, help="where the shards go (reused when there)")
    p.add_argument("--per-shard", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args(argv)
    args.device = "cpu"
    train, _ = load_imagenet(args.data)
    shards_dir = Path(args.out)
    if not (shards_dir / CLASSES_FILE).is_file():  # written once, kept
        write_shards(train, shards_dir / "train-%06d.tar", args.per_shard)
    report = {"images": len(train), "per_shard": args.per_shard}
    with tempfile.TemporaryDirectory() as cache:
        report["index_cold_s"], shards = timed(lambda: load_shards(shards_dir, cache_dir=cache, workers=args.workers))
        report["index_cached_s"], _ = timed(lambda: load_shards(shards_dir, cache_dir=cache, workers=args.workers))
        report["scan_cold_s"], _ = timed(lambda: scan(train, cache_dir=Path(cache), workers=args.workers))
        report["scan_cached_s"], _ = timed(lambda: scan(train, cache_dir=Path(cache), workers=args.workers))
    assert len(shards) == len(train) and not shards.bad, "the shards must hold every image"
    runs = {"files": [], "shards": []}
    for rep in range(args.reps):
        order = ("files", "shards") if rep % 2 == 0 else ("shards", "files")
        for kind in order:
            got = epoch_run(args, args.data if kind == "files" else shards_dir, CONFIG)
            runs[kind].append((got["images"] / got["wall"], 1000 * got["cpu"] / got["images"] * args.batch_size))
    print(f"{len(train)} images in {len(shards.paths)} shards of {args.per_shard}")
    print(f"check + index: {report['index_cold_s']:.2f} s cold, {report['index_cached_s']:.3f} s cached")
    print(f"folder scan:   {report['scan_cold_s']:.2f} s cold, {report['scan_cached_s']:.3f} s cached")
    print(f"| source | img/s (median of {args.reps}) | cpu ms per batch of {args.batch_size} |")
    print("| --- | ---: | ---: |")
    for kind, values in runs.items():
        rate = statistics.median(v[0] for v in values)
        cpu = statistics.median(v[1] for v in values)
        report[kind] = {"images_per_s": [v[0] for v in values], "cpu_ms": [v[1] for v in values]}
        print(f"| {kind} | {rate:.0f} | {cpu:.1f} |")
    ratio = [s[0] / f[0] for s, f in zip(runs["shards"], runs["files"])]
    cpu_ratio = [s[1] / f[1] for s, f in zip(runs["shards"], runs["files"])]
    report["shards_over_files"] = {"images_per_s": ratio, "cpu_ms": cpu_ratio}
    print(
        f"shards / files: img/s x{statistics.median(ratio):.3f} ({min(ratio):.3f}..{max(ratio):.3f}), "
        f"CPU per image x{statistics.median(cpu_ratio):.3f} ({min(cpu_ratio):.3f}..{max(cpu_ratio):.3f})"
    )
    (Path(args.out) / "shards.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
