"""Image files on disk: ImageNet-layout folders, file lists, ImageNet as downloaded, and the built-in
Fashion-MNIST demo. :class:`Split` is the source kind "image files" (:mod:`pipelines.sources`).

An ImageNet-layout root holds ``train/<class>/*.JPEG`` and ``val/<class>/*.JPEG``; classes are
the sorted folder names of ``train``. A split may instead be a text file list of
``relative/path label`` lines (DALI's ``file_list`` format), relative to the list's folder.
"""

from __future__ import annotations

import atexit
import gzip
import hashlib
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dali_cutmix.errors import DataError
from dali_cutmix.files import cache_root

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


CACHE = cache_root()
PREPARING = ".preparing"  # in a root that pipelines.prepare is writing, or that a stopped prepare left
_fallback: list[Path] = []  # this process's temporary cache, once one was needed


def usable_cache(cache: str | os.PathLike) -> Path:
    """``cache``, created if need be; when it cannot be written (a file, no permission, a full or
    read-only disk), a temporary folder for this process instead, with a one-line warning: a cache
    saves time, and its absence is no reason to stop."""
    cache = Path(cache)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=cache):
            return cache
    except OSError as e:
        why = "it is a file, not a folder" if cache.exists() and not cache.is_dir() else e.strerror or str(e)
        if not _fallback:
            _fallback.append(Path(tempfile.mkdtemp(prefix="dali-cutmix-cache-")))
            atexit.register(shutil.rmtree, _fallback[0], ignore_errors=True)
            print(f"warning: the cache {cache} cannot be used ({why}): this run caches in "
                  f"{_fallback[0]}, removed when it ends; set DALI_CUTMIX_CACHE to a writable folder",
                  file=sys.stderr)  # fmt: skip
        return _fallback[0]


FASHION_MNIST_CLASSES = (
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle-boot",
)


@dataclass(frozen=True)
class Split:
    """The files of one split, their integer labels and the class names."""

    files: list[str]
    labels: list[int]
    classes: list[str]

    def __len__(self) -> int:
        return len(self.files)

    def read(self, *, shard_id: int, num_shards: int, shuffle: bool, seed: int, name: str):
        """``(jpegs, labels)`` DataNodes of this rank's share, from ``fn.readers.file``: a graph
        fragment for a ``@pipeline_def`` (DALI is imported here, when a pipeline is built: the
        scan's worker processes import this module and stay light)."""
        import nvidia.dali.fn as fn

        return fn.readers.file(files=self.files, labels=self.labels, **reader_args(len(self), shard_id, num_shards,
                                                                                   shuffle, seed, name))  # fmt: skip

    def fingerprint(self, root: str | os.PathLike) -> str:
        """``"<count>:<hash>"`` of the files (paths under ``root``), labels and classes: what a
        checkpoint was trained on, wherever the folder has moved since."""
        digest = hashlib.sha1("\n".join(self.classes).encode())
        prefix = str(Path(root))  # the paths were made under it: D/, D// and ./D all give "D"
        for f, label in zip(self.files, self.labels):
            rel = f[len(prefix) :] if f.startswith(prefix + os.sep) else os.sep + os.path.relpath(f, root)
            digest.update(f"{rel} {label}\n".encode())
        return f"{len(self)}:{digest.hexdigest()[:16]}"


def reader_args(length: int, shard_id: int, num_shards: int, shuffle: bool, seed: int, name: str) -> dict:
    """What every DALI reader of a source takes: the share, the shuffle (a buffer of up to 4,096
    samples), equal shares (``pad_last_batch``) and the name DALI's iterators find it by."""
    fill = min(4096, max(length, 1))
    return dict(shard_id=shard_id, num_shards=num_shards, random_shuffle=shuffle, initial_fill=fill,
                pad_last_batch=True, seed=seed, name=name)  # fmt: skip


def list_classes(split_dir: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(split_dir) if e.is_dir())


def load_split(path: str | os.PathLike, classes: list[str] | None = None) -> Split:
    """Read a split folder (``<class>/<image>``) or a ``path label`` file list.

    ``classes`` fixes the label order (val uses train's); by default the folder's sorted names.
    Raises ``ValueError`` naming the path when nothing usable is there.
    """
    path = Path(path)
    check_finished(path.parent)
    check_finished(path.parent.parent)  # a prepared root's file-list images lie in OUT/images/<split>
    if path.is_file():
        return _load_file_list(path, classes)
    if not path.is_dir():
        raise DataError(f"data path {str(path)!r} does not exist")
    found = list_classes(path)
    if not found:
        raise DataError(f"{str(path)!r} has no class folders (expected <class>/<image> files)")
    if {"train", "val"} <= set(found) and list_classes(path / "train"):
        train, val = str(path / "train"), str(path / "val")
        raise DataError(f"{str(path)!r} is an ImageNet root (train/ and val/ hold the class folders), not a split: "
                        f"give {train!r} for training and {val!r} for validation")  # fmt: skip
    classes = list(classes) if classes is not None else found
    index = {name: i for i, name in enumerate(classes)}
    files, labels, empty = [], [], []
    for name in found:
        if name not in index:
            raise DataError(f"class folder {str(path / name)!r} is not among the training classes")
        before = len(files)
        for root, _, names in os.walk(path / name):
            for f in sorted(names):
                if f.lower().endswith(IMAGE_EXTENSIONS):
                    files.append(os.path.join(root, f))
                    labels.append(index[name])
        if len(files) == before:
            empty.append(name)
    if not files:
        raise DataError(f"{str(path)!r} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    if empty:  # a class no sample trains; torchvision's ImageFolder refuses such a folder too
        shown = ", ".join(repr(n) for n in empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
        raise DataError(
            f"{str(path)!r} has class folders without images: {shown}; add images ({', '.join(IMAGE_EXTENSIONS)}) "
            f"or remove the folders"
        )
    return Split(files, labels, classes)


def _load_file_list(path: Path, classes: list[str] | None) -> Split:
    files, labels = [], []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        name, _, label = line.rpartition(" ")
        if not name or not label.strip().isdigit():
            raise DataError(f"{path}:{n}: expected 'relative/path label', got {line!r}")
        files.append(str(path.parent / name))
        labels.append(int(label))
    if not files:
        raise DataError(f"file list {str(path)!r} is empty")
    if classes is not None and max(labels) >= len(classes):
        n = next(i for i, label in enumerate(labels) if label >= len(classes))
        raise DataError(f"file list {str(path)!r}: {files[n]} has label {labels[n]}, beyond the {len(classes)} "
                        f"training classes (0..{len(classes) - 1})")  # fmt: skip
    num_classes = max(labels) + 1
    return Split(files, labels, list(classes) if classes else [str(i) for i in range(num_classes)])


def check_finished(root: Path) -> None:
    """A :class:`DataError` when ``root`` is a prepared root that is not finished (``pipelines.prepare``)."""
    if (root / PREPARING).exists():
        raise DataError(f"{str(root)!r} is being prepared, or its preparation stopped half-way: run the same "
                        f"python -m pipelines.prepare command to finish it")  # fmt: skip


def load_imagenet(root: str | os.PathLike) -> tuple[Split, Split]:
    """``root/train`` and ``root/val`` (folders or file lists ``train.txt``/``val.txt``).

    ImageNet as downloaded (the ILSVRC 2012 CLS-LOC layout) is read as it is: ``root`` may hold
    ``ILSVRC/Data/CLS-LOC/{train,val}``, and a flat ``val/`` (no class folders) takes its labels
    from ``LOC_val_solution.csv`` beside it or in ``root``; ``LOC_synset_mapping.txt``, when
    present, must list the training classes in their (sorted) order, so class indices equal
    torchvision ``ImageFolder``'s.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data {str(root)!r} is not a directory")
    check_finished(root)
    images = root / "ILSVRC" / "Data" / "CLS-LOC"
    images = images if images.is_dir() else root
    parts = []
    for name in ("train", "val"):
        folder, listing = images / name, images / f"{name}.txt"
        if not folder.is_dir() and not listing.is_file():
            raise DataError(f"data {str(root)!r} has no {name}/ folder (ImageNet layout expected)")
        parts.append(folder if folder.is_dir() else listing)
    train = load_split(parts[0])
    val_dir = parts[1]
    solution = _beside(root, images, "LOC_val_solution.csv")
    if val_dir.is_dir() and not list_classes(val_dir) and solution:
        _check_synsets(_beside(root, images, "LOC_synset_mapping.txt"), train.classes)
        return train, load_val_solution(val_dir, solution, train.classes)
    return train, load_split(val_dir, classes=train.classes)


def _beside(root: Path, images: Path, name: str) -> Path | None:
    found = [p for p in (root / name, images / name) if p.is_file()]
    return found[0] if found else None


def _check_synsets(mapping: Path | None, classes: list[str]) -> None:
    if mapping is None:
        return
    wnids = [line.split()[0] for line in mapping.read_text().splitlines() if line.strip()]
    if wnids != classes:
        raise DataError(
            f"{mapping} lists {len(wnids)} classes that are not the training folders ({len(classes)}) in the same order"
        )


def load_val_solution(val_dir: Path, solution: Path, classes: list[str]) -> Split:
    """A flat validation folder labelled by ``LOC_val_solution.csv`` (``ImageId,PredictionString``;
    the first word of the prediction string is the image's class)."""
    index = {name: i for i, name in enumerate(classes)}
    files, labels = [], []
    lines = solution.read_text().splitlines()
    for n, line in enumerate(lines[1:], 2):
        if not line.strip():
            continue
        image_id, _, prediction = line.partition(",")
        wnid = prediction.split()[0] if prediction.split() else ""
        if wnid not in index:
            raise DataError(f"{solution}:{n}: class {wnid!r} of {image_id} is not among the training classes")
        path = val_dir / f"{image_id}.JPEG"
        if not path.is_file():
            raise DataError(f"{solution}:{n}: {path} does not exist")
        files.append(str(path))
        labels.append(index[wnid])
    if not files:
        raise DataError(f"{solution} labels no images")
    order = sorted(range(len(files)), key=files.__getitem__)  # a stable order, like a folder's
    return Split([files[i] for i in order], [labels[i] for i in order], list(classes))


# --- the demo data: Fashion-MNIST from Debian's dataset-fashion-mnist -------------------------


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (as used by MNIST), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 8:
        raise DataError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def export_fashion_mnist(
    out_dir: str | os.PathLike,
    *,
    per_class_train: int = 600,
    per_class_val: int = 100,
    source: Path = FASHION_MNIST_DIR,
) -> Path:
    """Write Fashion-MNIST as ImageNet-layout JPEG folders under ``out_dir`` (cached).

    The first ``per_class_*`` images of each class are taken, so the export is deterministic.
    A ``.complete`` marker records the sizes; a matching export is reused as it is.
    """
    from PIL import Image

    out = Path(out_dir)
    marker = out / ".complete"
    stamp = f"fashion-mnist {per_class_train} {per_class_val}\n"
    if marker.is_file() and marker.read_text() == stamp:
        return out
    pairs = {
        "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", per_class_train),
        "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", per_class_val),
    }
    for split, (images_name, labels_name, per_class) in pairs.items():
        images_path, labels_path = (_find_idx(source, n) for n in (images_name, labels_name))
        images, labels = read_idx(images_path), read_idx(labels_path)
        for k, name in enumerate(FASHION_MNIST_CLASSES):
            folder = out / split / f"{k}-{name}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in np.flatnonzero(labels == k)[:per_class]:
                Image.fromarray(images[i]).save(folder / f"{i:05d}.JPEG", quality=95)
    marker.write_text(stamp)
    return out


def _find_idx(source: Path, name: str) -> Path:
    for candidate in (source / f"{name}.gz", source / name):
        if candidate.is_file():
            return candidate
    raise DataError(
        f"Fashion-MNIST file {source / name}.gz not found: install the demo data with "
        f"'sudo apt-get install dataset-fashion-mnist'"
    )


def demo_root(per_class: int) -> Path:
    """The demo data (Fashion-MNIST, ``per_class`` training images a class) as JPEG folders."""
    return export_fashion_mnist(usable_cache(CACHE) / f"fashion-mnist-{per_class}", per_class_train=per_class)
