"""Find the files DALI's decoder would choke on, before training starts, and leave them out.

A corrupt file makes DALI's decoder fail and the pipeline object unusable, so a 90-epoch run dies
on the first bad JPEG it meets. The scan checks every file once, in parallel, and caches each
verdict by ``(path, size, mtime)``, so a restart on 1.28 million files scans only what changed.

The default check is structural and cheap: the file opens and is not empty, its header parses
(Pillow reads only the header: format, size, mode), its format is one DALI decodes, and its data
is complete (JPEG ends with an EOI marker, PNG with an IEND chunk). ``full=True`` decodes every
image as well, for data of unknown origin.
"""

from __future__ import annotations

import gzip
import hashlib
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from dali_cutmix.files import atomic_write

from .files import Split, load_split

DECODABLE = {"JPEG", "PNG", "BMP", "TIFF", "WEBP", "JPEG2000", "PPM"}
TAIL = 64  # bytes read from the end: an EOI marker may be followed by a little padding


@dataclass(frozen=True)
class ScanResult:
    good: Split
    bad: list[tuple[str, str]]  # (path, reason)
    scanned: int  # files checked in this call (not from the cache)
    seconds: float

    @property
    def files_per_s(self) -> float:
        return self.scanned / self.seconds if self.seconds > 0 else float("inf")


def worker_pool(workers: int) -> ProcessPoolExecutor:
    """Processes for checking files, started by a fork server: forking this process itself could
    copy a lock held by one of DALI's or torch's threads (a pipeline or a model built earlier in
    the process) and hang the child. The price: each worker imports the ``__main__`` module anew
    (docs/BENCHMARKS.md has the cost)."""
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("forkserver"))


def check_file(path: str, full: bool = False) -> str:
    """'' if DALI can decode ``path``, else the reason it cannot."""
    try:
        with open(path, "rb") as f:
            return check_stream(f, os.fstat(f.fileno()).st_size, full)
    except OSError as e:
        return f"{type(e).__name__}: {e}".splitlines()[0][:200]


def check_stream(f: BinaryIO, size: int, full: bool = False) -> str:
    """'' if DALI can decode the ``size`` bytes of the seekable binary file ``f`` (a file on disk
    or a member of a tar shard), else the reason it cannot."""
    from PIL import Image

    if size == 0:
        return "empty file"
    try:
        f.seek(max(0, size - TAIL))
        tail = f.read()
        f.seek(0)
        with Image.open(f) as image:
            fmt = image.format
            if fmt not in DECODABLE:
                return f"{fmt} is not a format DALI decodes"
            if image.width < 1 or image.height < 1:
                return f"bad size {image.width}x{image.height}"
            if full:
                image.load()
    except OSError as e:  # unreadable, unknown format, truncated on full decode
        return f"{type(e).__name__}: {e}".splitlines()[0][:200]
    except Exception as e:  # Pillow raises assorted errors on garbage headers
        return f"{type(e).__name__}: {e}".splitlines()[0][:200]
    if fmt == "JPEG" and b"\xff\xd9" not in tail:
        return "truncated JPEG (no end-of-image marker)"
    if fmt == "PNG" and b"IEND" not in tail:
        return "truncated PNG (no IEND chunk)"
    return ""


def _check_chunk(paths: list[str], full: bool) -> list[str]:
    return [check_file(p, full) for p in paths]


def scan(split: Split, *, cache_dir: Path | None = None, workers: int | None = None, full: bool = False) -> ScanResult:
    """Check every file of ``split``; return the decodable ones and the reasons for the rest."""
    import time

    start = time.perf_counter()
    cache_path = _cache_path(split, cache_dir, full) if cache_dir is not None else None
    cache = _read_cache(cache_path) if cache_path else {}
    stats, verdicts, todo = [], {}, []
    for path in split.files:
        try:
            st = os.stat(path)
            key = (st.st_size, st.st_mtime_ns)
        except OSError as e:
            verdicts[path] = f"{type(e).__name__}: {e.strerror}"
            continue
        stats.append((path, key))
        cached = cache.get(path)
        if cached is not None and cached[0] == key:
            verdicts[path] = cached[1]
        else:
            todo.append(path)
    if todo:
        workers = workers or os.cpu_count() or 1
        chunk = max(1, min(2048, len(todo) // (workers * 8) or 1))
        chunks = [todo[i : i + chunk] for i in range(0, len(todo), chunk)]
        if workers == 1 or len(chunks) == 1:
            results = [_check_chunk(c, full) for c in chunks]
        else:
            with worker_pool(workers) as pool:
                results = list(pool.map(_check_chunk, chunks, [full] * len(chunks)))
        for paths, reasons in zip(chunks, results):
            verdicts.update(zip(paths, reasons))
    if cache_path and todo:
        _write_cache(cache_path, {p: (key, verdicts[p]) for p, key in stats})
    good_files, good_labels, bad = [], [], []
    for path, label in zip(split.files, split.labels):
        if verdicts[path]:
            bad.append((path, verdicts[path]))
        else:
            good_files.append(path)
            good_labels.append(label)
    good = Split(good_files, good_labels, split.classes)
    return ScanResult(good, bad, len(todo), time.perf_counter() - start)


def drop_undecodable(
    split: Split,
    name: str,
    *,
    cache_dir: Path | None,
    workers: int | None,
    full: bool,
    strict: bool | str,
    listing_dir: Path,
    report: bool,
) -> Split:
    """``split`` without the files DALI cannot decode, as a trainer needs it.

    With ``report``, prints the scan speed, classes left empty and a one-line summary, and writes
    every bad file with its reason to ``listing_dir/bad_files_{name}.txt``. With ``strict``, any bad
    file is a ``ValueError`` instead; so is a split with nothing decodable left.
    """
    result = scan(split, cache_dir=cache_dir, workers=workers, full=full)
    empty = sorted(set(split.classes) - {split.classes[label] for label in result.good.labels})
    if report and result.scanned:
        print(f"scanned {result.scanned} {name} files in {result.seconds:.1f} s ({result.files_per_s:.0f} files/s)")
    if report and empty and name == "train":
        print(f"warning: {len(empty)} {name} classes have no usable images: {', '.join(empty[:5])}")
    if not result.bad:
        return split
    leave_out(result.bad, len(split), name, strict=strict, listing_dir=listing_dir, report=report)
    if not len(result.good):
        raise ValueError(f"no decodable {name} images left ({len(result.bad)} bad files)")
    return result.good


class UnusableData(ValueError):
    """``strict``: some files or samples are unusable (the message says how many and the first)."""


def leave_out(
    bad: list[tuple[str, str]],
    total: int,
    name: str,
    *,
    strict: bool,
    listing_dir: Path,
    report: bool,
    what: str = "files",
):
    """Say that the ``bad`` ``(item, reason)`` pairs of a split of ``total`` ``what`` are left out: a
    one-line summary, and every one listed in ``listing_dir/bad_files_{name}.txt``; with ``strict``,
    raise :class:`UnusableData` instead (its caller names its own switch)."""
    first = f"{bad[0][0]} ({bad[0][1]})"
    if strict:
        raise UnusableData(f"{len(bad)} {name} {what} are unusable, first {first}")
    if report:
        listing_dir.mkdir(parents=True, exist_ok=True)
        listing = listing_dir / f"bad_files_{name}.txt"
        listing.write_text("".join(f"{item}\t{reason}\n" for item, reason in bad))
        print(f"left out {len(bad)} of {total} {name} {what} that are unusable, first {first}; all listed in {listing}")


def _cache_path(split: Split, cache_dir: Path, full: bool) -> Path:
    """One cache file per set of files (and check depth): named by a hash of the first path."""
    root = os.path.dirname(os.path.dirname(split.files[0])) if split.files else ""
    digest = hashlib.sha1(f"{root} {full}".encode()).hexdigest()[:16]
    return Path(cache_dir) / f"scan-{digest}.tsv.gz"


def _read_cache(path: Path) -> dict[str, tuple[tuple[int, int], str]]:
    """{path: ((size, mtime_ns), reason)}; a damaged cache is ignored (the scan redoes it)."""
    if not path.is_file():
        return {}
    cache = {}
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                size, mtime, reason, file = line.rstrip("\n").split("\t", 3)
                cache[file] = ((int(size), int(mtime)), reason)
    except (OSError, ValueError, EOFError):
        return {}
    return cache


def _write_cache(path: Path, entries: dict[str, tuple[tuple[int, int], str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = "".join(f"{k[0]}\t{k[1]}\t{reason}\t{p}\n" for p, (k, reason) in entries.items())
    atomic_write(path, lambda f: f.write(gzip.compress(lines.encode("utf-8"), compresslevel=1)))


def main(argv=None) -> None:
    """``python -m pipelines.scan DIR``: report the files of a split that DALI cannot decode."""
    import argparse

    p = argparse.ArgumentParser(description="Find the images in a <class>/<image> folder that DALI cannot decode.")
    p.add_argument("path", help="a split folder (<class>/<image>) or a file list")
    p.add_argument("--full", action="store_true", help="decode every image, not only check its structure")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--cache", default=None, help="cache folder (default: none, scan everything)")
    p.add_argument("--repeat", type=int, default=1, help="scan again N-1 times (measures the cached restart)")
    args = p.parse_args(argv)
    try:
        split = load_split(args.path)
    except ValueError as e:
        p.error(str(e))
    for _ in range(args.repeat):
        result = scan(split, cache_dir=Path(args.cache) if args.cache else None, workers=args.workers, full=args.full)
        rate = len(split) / result.seconds if result.seconds > 0 else float("inf")
        print(
            f"{len(split)} files, {len(result.bad)} bad, {result.scanned} checked, {result.seconds:.2f} s, "
            f"{rate:.0f} files/s"
        )
    for path, reason in result.bad:
        print(f"{path}\t{reason}")


if __name__ == "__main__":
    main()
