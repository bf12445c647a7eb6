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
from dali_cutmix.files import atomic_write, write_json

from .folders import PREPARING, Split
from .scan import worker_pool
from .settings import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE, VAL_CROP

PREPARED = "prepared.json"


@dataclass(frozen=True)
class Settings:
    """What a prepared root was made with; a stopped run continues only with the same."""

    max_side: int  # training images: the longest side
    val_size: int  # validation crops up to this size stay a downscale
    quality: int  # JPEG quality of re-encoded images

    @property
    def val_shorter_side(self) -> int:
        return math.ceil(self.val_size / VAL_CROP)


def prepare_image(src: str, dst: str, *, longer: int | None = None, shorter: int | None = None,
                  quality: int = 90) -> str:  # fmt: skip
    """Write ``src`` to ``dst``, downscaled so that its longer side is at most ``longer`` (or its
    shorter side at most ``shorter``), or copied byte for byte when it is small enough already.
    Returns ``"copied"`` or ``"resized"``."""
    from PIL import Image, ImageOps

    def side(size: tuple[int, int]) -> int:
        return max(size) if longer is not None else min(size)

    limit = longer if longer is not None else shorter
    with Image.open(src) as image:
        if side(image.size) <= limit:
            atomic_write(Path(dst), lambda f: _copy(src, f), durable=False)  # 1.28 M files: no fsync each
            return "copied"
        scale = limit / side(image.size)
        image.draft("RGB", (round(image.width * scale), round(image.height * scale)))  # JPEG: 1/2, 1/4, 1/8 scale
        upright = ImageOps.exif_transpose(image.convert("RGB"))  # as DALI shows it: EXIF orientation applied
    scale = limit / side(upright.size)
    size = (max(1, round(upright.width * scale)), max(1, round(upright.height * scale)))
    resized = upright.resize(size, Image.LANCZOS)
    atomic_write(Path(dst), lambda f: resized.save(f, format="JPEG", quality=quality), durable=False)
    return "resized"


def _copy(src: str, f) -> None:
    with open(src, "rb") as source:
        shutil.copyfileobj(source, f)


def _prepare_chunk(jobs: list[tuple[str, str, str]], settings: Settings) -> list[str]:
    out = []
    for split, src, dst in jobs:
        if split == "train":
            out.append(prepare_image(src, dst, longer=settings.max_side, quality=settings.quality))
        else:
            out.append(prepare_image(src, dst, shorter=settings.val_shorter_side, quality=settings.quality))
    return out


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
    out: the prepared root: new, empty, or a stopped prepare of the same ``src`` and ``settings``.
    settings: the sizes and quality (:class:`Settings`).
    workers: processes; None: the cores.
    check: the bad-file check, ``"quick"`` or ``"full"``.
    show: draw a progress bar.
    Returns the summary written to ``out``: ``settings``, ``source``, ``files``, ``train``, ``val``,
    ``classes``, the counts of each outcome, ``skipped`` (there from a stopped run), ``seconds``
    and ``files_per_s``; with ``already`` True when ``out`` was finished before.
    """
    from tqdm import tqdm

    from .sources import kind_of, resolve

    out, source = Path(out), os.path.abspath(src)
    if Path(os.path.abspath(out)).is_relative_to(source):
        raise UserError(f"{out} is inside {src}: prepare into a folder outside the data")
    marker = out / PREPARING
    if (out / PREPARED).is_file() and not marker.exists():
        done = json.loads((out / PREPARED).read_text())
        if done.get("settings") != asdict(settings) or done.get("source") != source:
            raise UserError(f"{out} is already prepared from {done.get('source')} with {_flags(done.get('settings'))}: "
                            f"choose another output folder")  # fmt: skip
        return {**done, "already": True}
    if out.exists() and not marker.exists() and any(out.iterdir()):
        raise UserError(f"{out} holds other files: give a new or empty folder to prepare into")
    if marker.exists():
        begun = json.loads(marker.read_text() or "{}")
        if begun.get("settings") != asdict(settings) or begun.get("source") != source:
            raise UserError(f"{out} is a stopped prepare of {begun.get('source')} with "
                            f"{_flags(begun.get('settings'))}: continue it with those, or choose another output "
                            f"folder")  # fmt: skip
    made = not out.exists()
    try:
        if not kind_of(src).files_on_disk:
            raise UserError(f"{src}: pipelines.prepare reads image files (folders or file lists), not shards")
        train, val = resolve(src, check=check, workers=workers, listing_dir=out, report=True)  # bad files listed
        targets, lists = layout({"train": train, "val": val}, out)
    except BaseException:
        if made:  # a start that fails leaves nothing behind
            shutil.rmtree(out, ignore_errors=True)
        raise
    out.mkdir(parents=True, exist_ok=True)
    write_json(marker, {"settings": asdict(settings), "source": source})
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
    counts = {"copied": 0, "resized": 0}
    workers = min(workers or os.cpu_count() or 1, os.cpu_count() or 1)
    chunk = max(1, min(256, len(jobs) // (workers * 8) or 1))
    chunks = [jobs[i : i + chunk] for i in range(0, len(jobs), chunk)]
    with (
        tqdm(total=len(jobs), desc="prepare", unit="file", disable=not show, mininterval=1.0) as bar,
        ExitStack() as stack,
    ):
        if workers == 1 or len(chunks) <= 1:
            results = (_prepare_chunk(c, settings) for c in chunks)
        else:
            pool = stack.enter_context(worker_pool(workers))  # shut down on the way out, an error's too
            results = pool.map(_prepare_chunk, chunks, [settings] * len(chunks))
        for found in results:
            for kind in found:
                counts[kind] += 1
            bar.update(len(found))
    seconds = time.perf_counter() - start
    for name, text in lists.items():
        atomic_write(out / name, lambda f, text=text: f.write(text.encode()))
    summary = {
        "settings": asdict(settings),
        "source": source,
        "files": total,
        "train": len(train),
        "val": len(val),
        "classes": len(train.classes),
        **counts,
        "skipped": total - len(jobs),
        "seconds": round(seconds, 3),
        "files_per_s": round(len(jobs) / seconds, 1) if seconds > 0 else None,
    }
    write_json(out / PREPARED, summary)
    marker.unlink()  # last: the root is whole
    return summary


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
    if done.get("already"):
        print(f"{args.out} is already prepared from {done['source']} ({done['files']} files): nothing to do")
        return 0
    files_per_s = done.get("files_per_s") or 0
    eta = f", {1_281_167 / files_per_s / 3600:.1f} h for ImageNet's 1,281,167" if files_per_s else ""
    print(f"prepared {done['files']} files into {args.out}: {done['resized']} resized, {done['copied']} copied, "
          f"{done['skipped']} there already; {files_per_s:.0f} files/s{eta}")  # fmt: skip
    return 0


if __name__ == "__main__":
    # The worker processes unpickle this module's functions by its importable name, never as
    # __main__ (which the pool hides from them): run the imported module's main.
    from pipelines.prepare import main as _main

    sys.exit(_main())
