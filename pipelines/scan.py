"""Find the files DALI's decoder would choke on, before training starts, and leave them out.

A corrupt file makes DALI's decoder fail and the pipeline object unusable, so a 90-epoch run dies
on the first bad JPEG it meets. The scan checks every file once, in parallel, and caches each
verdict by ``(path, size, mtime)``, so a restart on 1.28 million files scans only what changed.

Only verdicts about a file's content are cached. A storage error (an ``OSError`` with an errno:
EIO from NFS or Lustre, EMFILE, EACCES, a vanished file) says nothing about the file: it is
retried, and a file still unreadable is skipped for this run only, listed apart from the bad
files, and checked again by the next scan.

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
import re
import struct
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from dali_cutmix.errors import DataError
from dali_cutmix.files import atomic_write

from .folders import Split, load_split

# A JPEG codes every 8x8 block of its first scan in at least one bit, so a file smaller than
# width x height / 512 bytes cannot hold its image; the bound is four times looser than that.
MIN_PIXELS_PER_BYTE = 2048
DECODABLE = {"JPEG", "PNG", "BMP", "TIFF", "WEBP", "JPEG2000", "PPM"}
TAIL = 64  # bytes read from the end: an EOI marker may be followed by a little padding
RETRY_DELAYS = (0.2, 1.0)  # seconds before the second and third read of a file the storage failed
# What Pillow raises on a malformed header or stream (any other exception is a bug, and is raised).
MALFORMED = (OSError, ValueError, SyntaxError, EOFError, IndexError, KeyError, struct.error, ZeroDivisionError,
             OverflowError, MemoryError)  # fmt: skip


@dataclass(frozen=True)
class ScanResult:
    good: Split
    bad: list[tuple[str, str]]  # (path, reason): the content, cached
    scanned: int  # files checked in this call (not from the cache)
    seconds: float
    unreadable: list[tuple[str, str]] = ()  # (path, storage error): skipped this time, checked again next time

    @property
    def files_per_s(self) -> float:
        return self.scanned / self.seconds if self.seconds > 0 else float("inf")


@contextmanager
def worker_pool(workers: int):
    """Processes for checking files (a ``ProcessPoolExecutor``, shut down on leaving the block),
    started by a fork server: forking this process itself could copy a lock held by one of DALI's
    or torch's threads (a pipeline or a model built earlier in the process) and hang the child.

    A worker needs only this package's functions, never the user's script, so while the pool
    lives the main module is hidden from multiprocessing (its ``__spec__`` and ``__file__``): the
    workers do not import it again, and a plain script without ``if __name__ == "__main__":``
    works, as it does with torch's DataLoader on Linux (docs/DESIGN.md, "The bad-file check")."""
    with _main_hidden():
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("forkserver"),
                                   initializer=_quiet_sigint)  # fmt: skip
        try:
            yield pool
        finally:
            pool.shutdown(cancel_futures=True)


@contextmanager
def _main_hidden():
    """multiprocessing's children import ``__main__`` again (by module name, or by path) to find
    what it pickled by reference; with its ``__spec__`` None and no ``__file__`` they leave it be."""
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    saved = {name: main.__dict__[name] for name in ("__spec__", "__file__") if name in main.__dict__}
    main.__spec__ = None
    main.__dict__.pop("__file__", None)
    try:
        yield
    finally:
        main.__dict__.update(saved)
        if "__spec__" not in saved:
            main.__dict__.pop("__spec__", None)


def _quiet_sigint() -> None:
    """A worker's start: Ctrl-C reaches the whole process group, and the parent ends the pool and
    says so in one line, so the workers ignore it; and a worker dies with its parent (the fork
    server, which ends with the main process): a SIGKILLed prepare or scan leaves no worker
    behind (``prctl(PR_SET_PDEATHSIG)``, Linux)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform == "linux":
        import ctypes

        parent = os.getppid()
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the request
            os._exit(1)


def storage_error(e: BaseException) -> bool:
    """Whether ``e`` is about the storage (EIO, EMFILE, EACCES, ENOENT, ...) rather than a file's
    content: an ``OSError`` with an errno. Pillow's content errors carry none."""
    return isinstance(e, OSError) and e.errno is not None


def describe_storage_error(e: OSError) -> str:
    """``EIO (errno 5): Input/output error``: what the storage said, for a listing."""
    import errno

    name = errno.errorcode.get(e.errno, "?")
    return f"{name} (errno {e.errno}): {e.strerror or e}"


def retried(read, *args, delays=RETRY_DELAYS):
    """``read(*args)``, tried again after each of ``delays`` while the storage fails
    (:func:`storage_error`); the last storage error is raised."""
    for delay in (*delays, None):
        try:
            return read(*args)
        except OSError as e:
            if not storage_error(e) or delay is None:
                raise
            time.sleep(delay)


def check_file(path: str, full: bool = False) -> str:
    """'' if DALI can decode ``path``, else the reason it cannot. Raises ``OSError`` when the
    storage fails to read it, after :data:`RETRY_DELAYS` retries."""

    def check() -> str:
        with open(path, "rb") as f:
            return check_stream(f, os.fstat(f.fileno()).st_size, full)

    return retried(check)


# The largest image the decoders take: JPEG's (and libjpeg-turbo's) 65,500 pixels a side. Pillow's
# own bomb limit (about 179 megapixels) would call a 187-megapixel photo unusable that DALI decodes.
DECODER_MAX_SIDE = 65500


@contextmanager
def decoder_limits():
    """Pillow's decompression-bomb limit raised to the decoders' real one for the block (Pillow
    refuses images above twice its ``MAX_IMAGE_PIXELS``)."""
    from PIL import Image

    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = DECODER_MAX_SIDE * DECODER_MAX_SIDE // 2
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def check_stream(f: BinaryIO, size: int, full: bool = False) -> str:
    """'' if DALI can decode the ``size`` bytes of the seekable binary file ``f`` (a file on disk
    or a member of a tar shard), else the reason it cannot. A storage error while reading ``f``
    is raised (:func:`storage_error`), as is any error that is not Pillow's word on the data."""
    from PIL import Image

    if size == 0:
        return "empty file"
    try:
        f.seek(max(0, size - TAIL))
        tail = f.read()
        f.seek(0)
        with warnings.catch_warnings(), decoder_limits():  # the decoders' limit, not Pillow's
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(f)
        with image:
            fmt = image.format
            if fmt not in DECODABLE:
                return f"{fmt} is not a format DALI decodes"
            if image.width < 1 or image.height < 1:
                return f"bad size {image.width}x{image.height}"
            if full:
                with decoder_limits():
                    image.load()
            elif fmt == "JPEG" and size < image.width * image.height // MIN_PIXELS_PER_BYTE:
                return f"{image.width}x{image.height} JPEG in only {size} bytes (truncated or forged header)"
    except (*MALFORMED, Image.DecompressionBombError) as e:  # unreadable, unknown format, truncated, a bomb
        if storage_error(e):
            raise
        return f"{type(e).__name__}: {e}".splitlines()[0][:200]
    if fmt == "JPEG" and b"\xff\xd9" not in tail:
        return "truncated JPEG (no end-of-image marker)"
    if fmt == "PNG" and b"IEND" not in tail:
        return "truncated PNG (no IEND chunk)"
    return ""


def find_failed_file(paths: list[str], since: float, *, images: bool, workers: int | None = None):
    """The file a DALI failure that named none is about, as ``(path, reason, changed)``, or None.

    paths: the source's files (images, or tar shards when ``images`` is False).
    since: when the run began (``time.time()``): a file changed or gone since is the first suspect.
    First every file is looked at without reading it: one that vanished, or changed (its
    content, size or permissions) since the run began, is checked in full. With none, each image
    is decoded in full (``images``), in parallel, until the bad one is found: a file the quick
    check passed but the decoder fails on (a PNG cut mid-stream that kept its end)."""
    suspects = []
    for path in paths:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return path, "it vanished during the run", True
        except OSError as e:
            return path, f"it became unreadable during the run ({describe_storage_error(e)})", True
        if max(st.st_mtime, st.st_ctime) >= since:
            suspects.append(path)
    for path in suspects:
        try:
            reason = check_file(path, full=images) if images else _readable_shard(path)
        except OSError as e:
            return path, f"it became unreadable during the run ({describe_storage_error(e)})", True
        if reason:
            return path, f"it changed during the run: {reason}", True
    if not images:
        return None
    print(f"DALI failed on a file it does not name: decoding this run's {len(paths)} files to find it "
          f"(a run with --scan full checks them all before training)", file=sys.stderr, flush=True)  # fmt: skip
    workers = min(workers or os.cpu_count() or 1, os.cpu_count() or 1)
    chunk = max(1, min(256, len(paths) // (workers * 8) or 1))
    chunks = [paths[i : i + chunk] for i in range(0, len(paths), chunk)]
    if workers == 1 or len(chunks) == 1:
        results = (_check_chunk(c, True) for c in chunks)
        return _first_bad(chunks, results)
    with worker_pool(workers) as pool:
        return _first_bad(chunks, pool.map(_check_chunk, chunks, [True] * len(chunks)))


def _first_bad(chunks, results):
    for paths, found in zip(chunks, results):
        for path, (reason, storage) in zip(paths, found):
            if reason or storage:
                return path, reason or f"unreadable ({storage})", bool(storage)
    return None


def _readable_shard(path: str) -> str:
    """'' if the tar shard reads to its end, else why not."""
    with open(path, "rb") as f:
        while f.read(1 << 20):
            pass
    return ""


def _check_chunk(paths: list[str], full: bool) -> list[tuple[str, str]]:
    """``(reason, storage error)`` of each path: one of the two is ''."""
    out = []
    for p in paths:
        try:
            out.append((check_file(p, full), ""))
        except OSError as e:
            if not storage_error(e):
                raise
            out.append(("", describe_storage_error(e)))
    return out


def scan(split: Split, *, cache_dir: Path | None = None, workers: int | None = None, full: bool = False) -> ScanResult:
    """Check every file of ``split``; return the decodable ones, the reasons for the bad ones, and
    the files the storage failed to read (with its error; not cached)."""
    start = time.perf_counter()
    cache_path = _cache_path(split, cache_dir, full) if cache_dir is not None else None
    cache = _read_cache(cache_path) if cache_path else {}
    stats, verdicts, unreadable, todo = [], {}, {}, []
    for path in split.files:
        try:
            st = retried(os.stat, path)
            key = (st.st_size, st.st_mtime_ns)
        except OSError as e:
            unreadable[path] = describe_storage_error(e)
            continue
        stats.append((path, key))
        cached = cache.get(path)
        if cached is not None and cached[0] == key:
            verdicts[path] = cached[1]
        else:
            todo.append(path)
    if todo:
        workers = min(workers or os.cpu_count() or 1, os.cpu_count() or 1)  # more processes than cores only cost
        chunk = max(1, min(2048, len(todo) // (workers * 8) or 1))
        chunks = [todo[i : i + chunk] for i in range(0, len(todo), chunk)]
        if workers == 1 or len(chunks) == 1:
            results = [_check_chunk(c, full) for c in chunks]
        else:
            with worker_pool(workers) as pool:
                results = list(pool.map(_check_chunk, chunks, [full] * len(chunks)))
        for paths, found in zip(chunks, results):
            for path, (reason, storage) in zip(paths, found):
                if storage:
                    unreadable[path] = storage
                else:
                    verdicts[path] = reason
    if cache_path and todo:  # content verdicts only: what the storage failed to read is checked again
        _write_cache(cache_path, {p: (key, verdicts[p]) for p, key in stats if p in verdicts})
    good_files, good_labels, bad = [], [], []
    for path, label in zip(split.files, split.labels):
        if path in unreadable:
            continue
        if verdicts[path]:
            bad.append((path, verdicts[path]))
        else:
            good_files.append(path)
            good_labels.append(label)
    good = Split(good_files, good_labels, split.classes)
    skipped = [(p, unreadable[p]) for p in split.files if p in unreadable]
    return ScanResult(good, bad, len(todo), time.perf_counter() - start, skipped)


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
    if result.unreadable:
        skip_unreadable(result.unreadable, len(split), name, strict=strict, listing_dir=listing_dir, report=report)
    if result.bad:
        leave_out(result.bad, len(split), name, strict=strict, listing_dir=listing_dir, report=report)
    if not len(result.good):
        raise DataError(f"no decodable {name} images left ({len(result.bad)} bad, {len(result.unreadable)} "
                         f"unreadable files)")  # fmt: skip
    return result.good if result.bad or result.unreadable else split


class UnusableData(DataError):
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
        listing = write_listing(listing_dir / f"bad_files_{name}.txt", bad)
        print(f"left out {len(bad)} of {total} {name} {what} that are unusable, first {first}; all listed in {listing}")


def write_listing(path: Path, pairs: list[tuple[str, str]]) -> Path:
    """``item<TAB>why`` lines, one a pair (a name's tabs and newlines escaped); returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{escape(item)}\t{escape(why)}\n" for item, why in pairs), errors="surrogateescape")
    return path


def skip_unreadable(unreadable: list[tuple[str, str]], total: int, name: str, *, strict: bool, listing_dir: Path,
                    report: bool) -> None:  # fmt: skip
    """Say that the storage failed to read ``unreadable`` ``(path, error)`` files of a split of
    ``total``: skipped for this run only and listed in ``listing_dir/unreadable_files_{name}.txt``
    (the next scan checks them again); with ``strict``, raise :class:`UnusableData` instead."""
    first = f"{unreadable[0][0]} ({unreadable[0][1]})"
    if strict:
        raise UnusableData(f"the storage failed to read {len(unreadable)} {name} files, first {first}")
    if report:
        listing = write_listing(listing_dir / f"unreadable_files_{name}.txt", unreadable)
        print(f"warning: the storage failed to read {len(unreadable)} of {total} {name} files after "
              f"{len(RETRY_DELAYS) + 1} tries, first {first}: skipped in this run only (the next run checks them "
              f"again); all listed in {listing}")  # fmt: skip


def _cache_path(split: Split, cache_dir: Path, full: bool) -> Path:
    """One cache file per set of files (and check depth): named by a hash of the first path."""
    root = os.path.dirname(os.path.dirname(split.files[0])) if split.files else ""
    digest = hashlib.sha1(f"{root} {full}".encode()).hexdigest()[:16]
    return Path(cache_dir) / f"scan-{digest}.tsv.gz"


_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}


def escape(text: str) -> str:
    """``text`` on one line with no tab (a file name may hold both): backslash escapes, reversed
    by :func:`unescape`."""
    return "".join(_ESCAPES.get(c, c) for c in text) if any(c in text for c in _ESCAPES) else text


def unescape(text: str) -> str:
    if "\\" not in text:
        return text
    return re.sub(r"\\(.)", lambda m: {"t": "\t", "n": "\n", "r": "\r"}.get(m.group(1), m.group(1)), text)


def _read_cache(path: Path) -> dict[str, tuple[tuple[int, int], str]]:
    """{path: ((size, mtime_ns), reason)}; a damaged cache is ignored (the scan redoes it)."""
    if not path.is_file():
        return {}
    cache = {}
    try:
        with gzip.open(path, "rt", encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                size, mtime, reason, file = line.rstrip("\n").split("\t", 3)
                cache[unescape(file)] = ((int(size), int(mtime)), unescape(reason))
    except (OSError, ValueError, EOFError):
        return {}
    return cache


def _write_cache(path: Path, entries: dict[str, tuple[tuple[int, int], str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = "".join(f"{k[0]}\t{k[1]}\t{escape(reason)}\t{escape(p)}\n" for p, (k, reason) in entries.items())
    data = gzip.compress(lines.encode("utf-8", errors="surrogateescape"), compresslevel=1)
    atomic_write(path, lambda f: f.write(data))


def main(argv=None) -> int:
    """``python -m pipelines.scan DIR``: report the files of a split that DALI cannot decode."""
    import argparse

    p = argparse.ArgumentParser(description="Find the images in a <class>/<image> folder that DALI cannot decode.")
    p.add_argument("path", help="a split folder (<class>/<image>) or a file list")
    p.add_argument("--full", action="store_true", help="decode every image, not only check its structure")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (at most the cores)")
    p.add_argument("--cache", default=None, help="cache folder (default: none, scan everything)")
    p.add_argument("--repeat", type=int, default=1, help="scan again N-1 times (measures the cached restart)")
    args = p.parse_args(argv)
    if args.workers < 1 or args.repeat < 1:
        p.error(f"--workers and --repeat must be >= 1, got {args.workers} and {args.repeat}")
    if args.cache and os.path.exists(args.cache) and not os.path.isdir(args.cache):
        p.error(f"--cache {args.cache!r} is a file, not a folder: give a folder for the cache")
    if str(args.path).endswith(".tar") or (os.path.isdir(args.path) and any(
            e.name.endswith(".tar") for e in os.scandir(args.path))):  # fmt: skip
        p.error(
            f"{args.path!r} holds WebDataset shards: they are checked sample by sample when indexed "
            f"(train.py --data, or pipelines.sources.load_source); this command checks folders and file lists"
        )
    try:
        split = load_split(args.path)
        for _ in range(args.repeat):
            result = scan(split, cache_dir=Path(args.cache) if args.cache else None, workers=args.workers,
                          full=args.full)  # fmt: skip
            rate = len(split) / result.seconds if result.seconds > 0 else float("inf")
            print(f"{len(split)} files, {len(result.bad)} bad, {len(result.unreadable)} unreadable, "
                  f"{result.scanned} checked, {result.seconds:.2f} s, {rate:.0f} files/s")  # fmt: skip
    except ValueError as e:
        p.error(str(e))
    except OSError as e:  # the cache folder (unwritable, a read-only disk), or the storage
        p.exit(1, f"{p.prog}: error: {e.filename or args.cache or args.path}: {e.strerror or e}: give a writable "
                  f"--cache (or none), or fix the storage\n")  # fmt: skip
    except KeyboardInterrupt:
        print("pipelines.scan: interrupted; the verdicts of a finished scan are cached, nothing else was written",
              file=sys.stderr)  # fmt: skip
        return 130
    for path, reason in result.bad:
        print(f"{printable(path)}\t{reason}")
    for path, error in result.unreadable:
        print(f"{printable(path)}\tunreadable this time, not cached: {error}")
    return 0


def printable(path: str) -> str:
    """``path`` on one line: control characters (a newline in a name) escaped, as ``repr`` does."""
    return path if path.isprintable() else repr(path)[1:-1]


if __name__ == "__main__":
    # The worker processes unpickle this module's functions by its importable name, never as
    # __main__ (which the pool hides from them): run the imported module's main.
    from pipelines.scan import main as _main

    sys.exit(_main())
