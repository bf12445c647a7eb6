"""Data prepared for speed: a copy of a data set whose training images are at most ``--max-side``
pixels on their longer side, and whose validation images keep just enough pixels for their
centre crop, as FFCV and fast.ai store ImageNet.

    python -m pipelines.prepare SRC OUT --max-side 256 [--val-size 224] [--quality 90] [--workers W]

``SRC`` is anything ``train.py --data`` takes that holds files (an ImageNet-layout root, ImageNet
as downloaded, ``train.txt``/``val.txt`` file lists). ``OUT`` is an ImageNet-layout root that
``--data``, ``train_loader(OUT/train)`` and ``val_loader(OUT/val)`` take, with the same classes
and class indices: class folders named as the source's classes when their sorted order is their
index order (any folder source), else ``train.txt``/``val.txt`` lists over ``OUT/images``.

A training image whose longer side is above ``--max-side`` is decoded at the smallest scale
libjpeg offers above the target (Pillow's draft mode), turned upright (its EXIF orientation, as
DALI would), resized with Lanczos and re-encoded at ``--quality``; a smaller image is copied byte
for byte. A validation image is resized only when its shorter side is above
``ceil(--val-size / 0.875)`` (the validation pipeline resizes the shorter side to
``size / 0.875`` before its centre crop), so validation at up to ``--val-size`` stays a
downscale. Files the bad-file check finds unusable are left out and listed in
``OUT/bad_files_{train,val}.txt``.

Each file is written to a temporary name and renamed, so a stopped run continues where it
stopped (``python -m pipelines.prepare`` again, with the same flags). ``OUT/.preparing`` says
that a run is under way or was stopped; it is removed last, after ``OUT/prepared.json``, and a
root holding it is refused as data (:func:`pipelines.folders.check_finished`).
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import os
import shutil
import sys
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path

from dali_cutmix.errors import UserError
from dali_cutmix.files import FolderInUse, FolderLock, atomic_write, write_json

from .folders import PREPARING, Split
from .scan import MALFORMED, decoder_limits, describe_storage_error, retried, storage_error, worker_pool
from .settings import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE, VAL_CROP

PREPARED = "prepared.json"
LOCK = ".prepare.lock"  # held by the prepare writing the folder


@dataclass(frozen=True)
class Settings:
    """What a prepared root was made with; a stopped run continues only with the same."""

    max_side: int  # training images: the longest side
    val_size: int  # validation crops up to this size stay a downscale
    quality: int  # JPEG quality of re-encoded images

    @property
    def val_shorter_side(self) -> int:
        return math.ceil(self.val_size / VAL_CROP)


def prepare_image(src: str, dst: str, quality: int = 90, sides: dict | None = None) -> str:
    """Write ``src`` to ``dst``, downscaled so that its longer side is at most ``sides["longer"]``
    (or its shorter side at most ``sides["shorter"]``), or copied byte for byte when it is small
    enough already.
    Returns ``"copied"`` or ``"resized"``. High-bit-depth images (16-bit PNG, TIFF) are scaled to 8
    bits as DALI decodes them, not clipped."""
    from PIL import Image, ImageOps

    longer = (sides or {}).get("longer")

    def side(size: tuple[int, int]) -> int:
        return max(size) if longer is not None else min(size)

    limit = longer if longer is not None else sides["shorter"]
    with decoder_limits(), Image.open(src) as image:
        if side(image.size) <= limit:
            atomic_write(Path(dst), lambda f: _copy(src, f), durable=False)  # 1.28 M files: no fsync each
            return "copied"
        scale = limit / side(image.size)
        image.draft("RGB", (round(image.width * scale), round(image.height * scale)))  # JPEG: 1/2, 1/4, 1/8 scale
        upright = ImageOps.exif_transpose(to_rgb(image))  # as DALI shows it: EXIF orientation applied
    scale = limit / side(upright.size)
    size = (max(1, round(upright.width * scale)), max(1, round(upright.height * scale)))
    resized = upright.resize(size, Image.LANCZOS)
    atomic_write(Path(dst), lambda f: resized.save(f, format="JPEG", quality=quality), durable=False)
    return "resized"


def to_rgb(image):
    """``image`` as 8-bit RGB. 16-bit and 32-bit grey levels (Pillow's ``I;16``, ``I``, ``F``) are
    scaled from their full range to 0-255, as DALI's decoders scale them; ``convert("RGB")`` alone
    would clip them, whitening the image."""
    if image.mode not in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return image.convert("RGB")
    import numpy as np
    from PIL import Image

    values = np.asarray(image, dtype=np.float64)
    top = 65535.0 if image.mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
    grey = np.clip(np.floor(values * (255.0 / top) + 0.5), 0, 255).astype(np.uint8)
    return Image.fromarray(grey, "L").convert("RGB")


def _copy(src: str, f) -> None:
    with open(src, "rb") as source:
        shutil.copyfileobj(source, f)


def _prepare_chunk(jobs: list[tuple[str, str, str]], settings: Settings) -> list[tuple[str, str]]:
    """Each job's outcome: ``("copied" | "resized", "")``, ``("bad", why)`` for a file the decoder
    cannot read (left out and listed), or ``("unreadable", error)`` when the storage failed to
    read the source (retried; left out this run, prepared by the next). A failure to write the
    copy (a full disk) is raised: it stops the run."""
    from PIL import Image

    out = []
    for split, src, dst in jobs:
        args = dict(longer=settings.max_side) if split == "train" else dict(shorter=settings.val_shorter_side)
        try:
            out.append((retried(prepare_image, src, dst, settings.quality, args), ""))
        except OSError as e:
            if storage_error(e) and (e.errno in WRITE_ERRNOS or getattr(e, "filename", None) not in (None, src)):
                raise
            out.append(("unreadable", describe_storage_error(e)) if storage_error(e) else ("bad", _why(e)))
        except (*MALFORMED, Image.DecompressionBombError) as e:
            out.append(("bad", _why(e)))
    return out


WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)  # the copy's disk, not the source file


def _why(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".splitlines()[0][:200]


def layout(splits: dict[str, Split], out: Path) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Where each file of ``splits`` goes under ``out`` (same order), and the file lists to write
    (``{name: text}``; none when class folders keep the indices). Two sources of one name in a
    class get names of their own (``x-2.JPEG``, the first number no other file there takes)."""
    classes = list(splits["train"].classes)
    names_ok = all(c and "/" not in c and c not in (".", "..") for c in classes)
    present = set(splits["train"].labels)
    folders = sorted(classes) == classes and names_ok and present == set(range(len(classes)))
    if not folders and classes != [str(i) for i in range(len(classes))]:
        missing = ", ".join(repr(classes[i]) for i in range(len(classes)) if i not in present)
        raise UserError(f"the classes {missing} have no usable training image, so a prepared copy could not keep "
                        f"the class names and indices: add images or remove them")  # fmt: skip
    targets, lists = {}, {}
    for name, split in splits.items():
        base = out / name if folders else out / "images" / name
        originals: dict[str, set[str]] = {}
        for f, label in zip(split.files, split.labels):
            originals.setdefault(classes[label] if folders else str(label), set()).add(os.path.basename(f))
        used: dict[str, set[str]] = {}
        paths = []
        for f, label in zip(split.files, split.labels):
            folder = classes[label] if folders else str(label)
            taken = used.setdefault(folder, set())
            stem = os.path.basename(f)
            if stem in taken:
                root, ext = os.path.splitext(stem)
                n = 2
                while f"{root}-{n}{ext}" in taken or f"{root}-{n}{ext}" in originals[folder]:
                    n += 1
                stem = f"{root}-{n}{ext}"
            taken.add(stem)
            paths.append(str(base / folder / stem))
        targets[name] = paths
        if not folders:
            lists[f"{name}.txt"] = "".join(
                f"{os.path.relpath(p, out)} {label}\n" for p, label in zip(paths, split.labels)
            )
    return targets, lists


def prepare(src, out, settings: Settings, *, workers: int | None = None, check: str = "quick",
            show: bool = True) -> dict:  # fmt: skip
    """Prepare ``src`` into ``out`` (see the module docstring).

    src: what ``train.py --data`` takes that holds image files (not shards).
    out: the prepared root: new, empty, a stopped prepare of the same ``src`` and ``settings``,
        or a finished one, which is brought up to date with ``src``.
    settings: the sizes and quality (:class:`Settings`).
    workers: processes; None: the cores.
    check: the bad-file check, ``"quick"`` or ``"full"``.
    show: draw a progress bar.
    Returns the summary written to ``out``: ``settings``, ``source``, ``files``, ``train``, ``val``,
    ``classes``, the counts of each outcome (``copied``, ``resized``, ``bad``, ``unreadable``),
    ``skipped`` (there from an earlier run), ``removed`` (copies of files no longer in the source),
    ``seconds``, ``files_per_s``; ``changes`` (what changed in the source since a finished copy).
    """
    from tqdm import tqdm

    from .sources import kind_of, resolve

    out, source = Path(out), os.path.abspath(src)
    real_out, real_src = Path(os.path.realpath(out)), Path(os.path.realpath(src))
    if real_out == real_src or real_out.is_relative_to(real_src):
        raise UserError(f"{out} is inside {src} (as the links resolve): prepare into a folder outside the data")
    if real_src.is_relative_to(real_out):
        raise UserError(f"{src} is inside {out} (as the links resolve): prepare into a folder outside the data")
    made = not out.exists()
    try:
        lock = FolderLock(out / LOCK)  # one prepare at a time into a folder
    except FolderInUse as e:
        raise UserError(f"{out} is being prepared by another process ({e.holder}): wait for it to end") from None
    ok = False
    try:
        summary = _prepare_locked(src, out, source, settings, workers, check, show, made, tqdm, kind_of, resolve)
        ok = True
        return summary
    finally:
        if not ok and made and not (out / PREPARING).exists():  # a start that fails leaves nothing behind
            lock.release()
            listings = list(out.glob("bad_files_*.txt"))  # but the listing it said the bad files are in
            for p in out.iterdir() if listings else ():
                if p not in listings:
                    shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
            if not listings:
                shutil.rmtree(out, ignore_errors=True)
        else:  # a stopped run's files stay, for the same command to continue
            lock.release(tidy=True)


def _prepare_locked(src, out: Path, source: str, settings: Settings, workers, check, show, made, tqdm, kind_of,
                    resolve) -> dict:  # fmt: skip
    marker = out / PREPARING
    record = _record(out / PREPARED) if (out / PREPARED).is_file() and not marker.exists() else None
    if record is not None and (record.get("settings") != asdict(settings) or record.get("source") != source):
        raise UserError(f"{out} is already prepared from {record.get('source')} with {_flags(record.get('settings'))}: "
                        f"choose another output folder")  # fmt: skip
    if record is None and not marker.exists() and any(p.name != LOCK for p in out.iterdir()):
        raise UserError(f"{out} holds other files: give a new or empty folder to prepare into")
    if marker.exists():
        begun = _record(marker)
        if begun.get("settings") != asdict(settings) or begun.get("source") != source:
            raise UserError(f"{out} is a stopped prepare of {begun.get('source')} with "
                            f"{_flags(begun.get('settings'))}: continue it with those, or choose another output "
                            f"folder")  # fmt: skip
    if not kind_of(src).files_on_disk:
        raise UserError(f"{src}: pipelines.prepare reads image files (folders or file lists), not shards")
    train, val = resolve(src, check=check, workers=workers, listing_dir=out, report=True)  # bad files listed
    targets, _ = layout({"train": train, "val": val}, out)
    write_json(marker, {"settings": asdict(settings), "source": source})
    expected = {d for name in targets for d in targets[name]}
    removed = _remove_stale(out, expected)  # half-written temporaries, copies of files gone from the source
    jobs = [
        (name, src_path, dst)
        for name, split in (("train", train), ("val", val))
        for src_path, dst in zip(split.files, targets[name])
        if not os.path.exists(dst)  # written atomically: what is there is whole
    ]
    total = len(train) + len(val)
    for dst in {os.path.dirname(d) for _, _, d in jobs}:
        os.makedirs(dst, exist_ok=True)
    start = time.perf_counter()
    counts = {"copied": 0, "resized": 0, "bad": 0, "unreadable": 0}
    missing = {"train": {}, "val": {}}  # dst -> (kind, why): left out of the copy this run
    workers = min(workers or os.cpu_count() or 1, os.cpu_count() or 1)
    chunk = max(1, min(256, len(jobs) // (workers * 8) or 1))
    chunks = [jobs[i : i + chunk] for i in range(0, len(jobs), chunk)]
    bar = tqdm(total=len(jobs), desc="prepare", unit="file", disable=not show, mininterval=1.0)
    with bar, ExitStack() as stack:
        if workers == 1 or len(chunks) <= 1:
            results = (_prepare_chunk(c, settings) for c in chunks)
        else:
            pool = stack.enter_context(worker_pool(workers))  # shut down on the way out, an error's too
            results = pool.map(_prepare_chunk, chunks, [settings] * len(chunks))
        for batch, found in zip(chunks, results):
            for (name, src_path, dst), (kind, why) in zip(batch, found):
                counts[kind] += 1
                if why:
                    missing[name][dst] = (kind, f"{src_path}\t{why}")
            bar.update(len(found))
    seconds = time.perf_counter() - start
    _write_lists(out, {"train": train, "val": val}, targets, missing)
    changes = _changes(record, train, counts, removed) if record is not None else None
    summary = {
        "settings": asdict(settings),
        "source": source,
        "files": total,
        "train": len(train),
        "val": len(val),
        "classes": len(train.classes),
        "class_names": list(train.classes),
        **counts,
        "skipped": total - len(jobs),
        "removed": len(removed),
        "seconds": round(seconds, 3),
        "files_per_s": round(len(jobs) / seconds, 1) if seconds > 0 and jobs else None,
    }
    write_json(out / PREPARED, summary)
    (out / PREPARING).unlink()  # last: the root is whole
    return summary | ({"changes": changes} if changes is not None else {})


def prepared_val_size(root) -> int | None:
    """The validation crop a prepared root keeps pixels for (its ``--val-size``), or None for a
    root that is not prepared (or whose record cannot be read: the data check says so)."""
    path = Path(root) / PREPARED
    try:
        return int(json.loads(path.read_text())["settings"]["val_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _record(path: Path) -> dict:
    """A prepare's record (``prepared.json``, ``.preparing``): a :class:`UserError` naming it when damaged."""
    try:
        record = json.loads(path.read_text() or "{}")
        if not isinstance(record, dict) or "settings" not in record or "source" not in record:
            raise ValueError("no settings and source in it")
        return record
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is damaged ({str(e).splitlines()[0][:100]}): remove {path.parent} and prepare "
                        f"again (the source is untouched)") from None  # fmt: skip


def _remove_stale(out: Path, expected: set[str]) -> list[str]:
    """Delete, under ``out``'s image folders, the temporaries of writes a kill cut short and the
    copies of source files that are no longer there; returns the copies removed."""
    removed = []
    for top in ("train", "val", "images"):
        for folder, _, names in os.walk(out / top):
            for name in names:
                path = os.path.join(folder, name)
                if name.startswith(".") and name.endswith(".tmp"):
                    os.unlink(path)
                elif path not in expected:
                    os.unlink(path)
                    removed.append(path)
    return removed


def _write_lists(out: Path, splits: dict, targets: dict, missing: dict) -> None:
    """The file lists (when class folders cannot keep the indices) of the files that are in the
    copy, and the listings of what was left out this run."""
    _, lists = layout(splits, out)
    for name, split in splits.items():
        kept = [(dst, label) for dst, label in zip(targets[name], split.labels) if dst not in missing[name]]
        if f"{name}.txt" in lists:
            text = "".join(f"{os.path.relpath(dst, out)} {label}\n" for dst, label in kept)
            atomic_write(out / f"{name}.txt", lambda f, text=text: f.write(text.encode()))
        for kind, listing in (("bad", f"bad_files_{name}.txt"), ("unreadable", f"unreadable_files_{name}.txt")):
            lines = [why for k, why in missing[name].values() if k == kind]
            if kind == "bad" and (out / listing).is_file():  # the scan's listing of this run comes first
                lines = (out / listing).read_text().splitlines() + lines
            if lines:
                atomic_write(out / listing, lambda f, lines=lines: f.write(("\n".join(lines) + "\n").encode()))
            elif kind == "unreadable":
                (out / listing).unlink(missing_ok=True)


def _changes(record: dict, train: Split, counts: dict, removed: list[str]) -> dict:
    """What changed in the source since a finished copy, as this run found and mended it."""
    before = record.get("class_names") or []
    return {
        "added": counts["copied"] + counts["resized"],
        "removed": len(removed),
        "new_classes": [c for c in train.classes if c not in before] if before else [],
        "gone_classes": [c for c in before if c not in train.classes],
        "left_out": counts["bad"] + counts["unreadable"],
    }


def _flags(settings: dict | None) -> str:
    """Settings as the flags that give them."""
    return " ".join(f"--{k.replace('_', '-')} {v}" for k, v in (settings or {}).items())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("src", help="what train.py --data takes: an ImageNet-layout root, as downloaded, or file lists")
    p.add_argument("out", help="the prepared root (new or empty, or a stopped prepare to continue)")
    p.add_argument("--max-side", type=int, required=True, help="training images: the longest side, in pixels")
    p.add_argument("--val-size", type=int, default=224, help="validation crops up to this size stay a downscale")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality of resized images (FFCV's default)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (at most the cores)")
    p.add_argument("--scan", choices=("quick", "full"), default="quick", help="the bad-file check's depth")
    args = p.parse_args(argv)
    bounds = [
        ("--max-side", args.max_side, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE),
        ("--quality", args.quality, 1, 95),
        ("--val-size", args.val_size, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE),
        ("--workers", args.workers, 1, None),
    ]
    for flag, value, low, high in bounds:
        if value < low or (high is not None and value > high):
            p.error(f"{flag} must be in [{low}, {high if high is not None else 'inf'}], got {value}")
    if not os.path.isdir(args.src):
        p.error(f"src {args.src!r} is not a folder: give an ImageNet-layout root")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        p.error(f"out {args.out!r} is a file: give a folder to prepare into")
    settings = Settings(args.max_side, args.val_size, args.quality)
    try:
        done = prepare(args.src, args.out, settings, workers=args.workers, check=args.scan)
    except UserError as e:
        p.exit(2, f"{p.prog}: error: {e}\n")
    except KeyboardInterrupt:
        print(f"{p.prog}: interrupted; what was written is kept: run the same command to continue", file=sys.stderr)
        return 130
    except OSError as e:
        p.exit(1, f"{p.prog}: error: {e.filename or args.out}: {e.strerror or e}; run the same command to continue\n")
    changes = done.get("changes")
    left_out = done["bad"] + done["unreadable"]
    note = (f"; {done['bad']} undecodable and {done['unreadable']} unreadable files left out (listed in "
            f"{args.out}/bad_files_*.txt and unreadable_files_*.txt; the unreadable ones are tried again by the "
            f"next run)") if left_out else ""  # fmt: skip
    if changes is not None and not any(changes[k] for k in ("added", "removed", "new_classes", "gone_classes")):
        print(f"{args.out} is already prepared from {done['source']} ({done['files']} files) and up to date: "
              f"nothing to do{note}")  # fmt: skip
        return 0
    if changes is not None:
        news = f", new classes {', '.join(changes['new_classes'])}" if changes["new_classes"] else ""
        gone = f", classes gone {', '.join(changes['gone_classes'])}" if changes["gone_classes"] else ""
        print(f"the source changed since {args.out} was prepared: {changes['added']} files added or mended, "
              f"{changes['removed']} removed{news}{gone}; the copy is up to date{note}")  # fmt: skip
        return 0
    files_per_s = done.get("files_per_s") or 0
    eta = f", {1_281_167 / files_per_s / 3600:.1f} h for ImageNet's 1,281,167" if files_per_s else ""
    print(f"prepared {done['files']} files into {args.out}: {done['resized']} resized, {done['copied']} copied, "
          f"{done['skipped']} there already; {files_per_s:.0f} files/s{eta}{note}")  # fmt: skip
    return 0


if __name__ == "__main__":
    # The worker processes unpickle this module's functions by its importable name, never as
    # __main__ (which the pool hides from them): run the imported module's main.
    from pipelines.prepare import main as _main

    sys.exit(_main())
