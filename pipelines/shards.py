"""WebDataset tar shards, read by DALI's own ``fn.readers.webdataset``.

A shard is a plain tar; a sample is the consecutive members that share a key (the name up to the
first dot of the file name), e.g. ``n01440764_10026.jpg`` + ``n01440764_10026.cls``, the layout of
the common ImageNet WebDataset copies. A sample gives one image (``jpg``, ``jpeg``, ``png``, ...)
and its class index as text (``cls``). Class names come from a ``classes.txt`` beside the shards
(one per line, in index order; ImageNet's sorted wnids make indices equal torchvision
``ImageFolder``'s), or are the indices themselves.

Each shard is checked once, in parallel, as the folder scan checks files
(:func:`pipelines.scan.check_stream`), and a DALI index file (``wds2idx``'s ``v1.2`` format) is
written that holds only the good samples: the reader never meets a broken member. The index and
the verdicts are cached by the shard's path, size and modification time.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dali_cutmix.errors import DataError
from dali_cutmix.files import atomic_write

from .folders import IMAGE_EXTENSIONS, reader_args
from .scan import check_stream, retried, storage_error, worker_pool

IMAGE_EXTS = tuple(ext.lstrip(".") for ext in IMAGE_EXTENSIONS)  # WebDataset names members without the dot
LABEL_EXT = "cls"
CLASSES_FILE = "classes.txt"
INDEX_VERSION = "v1.2"  # DALI's wds2idx format: "v1.2 <samples>", then "ext offset size name ..." a sample
_CACHE_VERSION = 1


@dataclass(frozen=True)
class Shards:
    """The good samples of a set of WebDataset shards, ready for ``fn.readers.webdataset``."""

    paths: list[str]  # the tar files
    index_paths: list[str]  # DALI index files listing only the good samples, one per tar
    counts: list[int]  # good samples per tar
    classes: list[str]
    digests: list[str]  # per tar: a hash of its good samples' keys and labels
    bad: list[tuple[str, str]]  # ("shard.tar:member", reason), left out

    def __len__(self) -> int:
        return sum(self.counts)

    def read(self, *, shard_id: int, num_shards: int, shuffle: bool, seed: int, name: str):
        """``(jpegs, labels (1,) int32)`` DataNodes of this rank's share, from
        ``fn.readers.webdataset`` through the index of good samples (DALI imported here, as in
        :meth:`pipelines.folders.Split.read`)."""
        import nvidia.dali.fn as fn

        jpegs, cls = fn.readers.webdataset(
            paths=self.paths,
            index_paths=self.index_paths,
            ext=[";".join(IMAGE_EXTS), LABEL_EXT],
            case_sensitive_extensions=False,
            missing_component_behavior="error",
            **reader_args(len(self), shard_id, num_shards, shuffle, seed, name),
        )
        return jpegs, fn.python_function(cls, function=parse_labels, batch_processing=True)

    def fingerprint(self, root=None) -> str:
        """``"<count>:<hash>"`` of the shard names, their samples and the classes (see
        :meth:`pipelines.folders.Split.fingerprint`); ``root`` is unused, shards are named by file name."""
        digest = hashlib.sha1("\n".join(self.classes).encode())
        for path, tar_digest in zip(self.paths, self.digests):
            digest.update(f"{os.path.basename(path)} {tar_digest}\n".encode())
        return f"{len(self)}:{digest.hexdigest()[:16]}"


def parse_labels(texts: list[np.ndarray]) -> list[np.ndarray]:
    """A batch of ``cls`` members (ASCII digits, checked when indexed) as (1,) int32 labels."""
    return [np.array([int(t.tobytes())], dtype=np.int32) for t in texts]


def is_shards(spec: str | os.PathLike) -> bool:
    """Whether ``spec`` names tar shards: a ``.tar`` path or pattern, or a folder holding ``.tar`` files."""
    spec = str(spec)
    if spec.endswith(".tar"):
        return True
    return os.path.isdir(spec) and any(e.name.endswith(".tar") and e.is_file() for e in os.scandir(spec))


def expand(spec: str | os.PathLike) -> list[str]:
    """The tar files of ``spec``: a folder (its ``*.tar``, sorted), a path, or a pattern with
    brace ranges and lists, ``train-{000000..000146}.tar`` or ``{train,extra}-0.tar``."""
    spec = str(spec)
    if os.path.isdir(spec):
        paths = sorted(os.path.join(spec, e.name) for e in os.scandir(spec) if e.name.endswith(".tar"))
        if not paths:
            raise DataError(f"{spec!r} holds no .tar shards")
        return paths
    paths = _braces(spec)
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise DataError(f"shards {spec!r}: {len(missing)} of {len(paths)} files do not exist, first {missing[0]!r}")
    return paths


def _braces(spec: str) -> list[str]:
    match = re.search(r"\{([^{}]*)\}", spec)
    if not match:
        return [spec]
    head, body, tail = spec[: match.start()], match.group(1), spec[match.end() :]
    numeric = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if numeric:
        first, last = numeric.groups()
        if int(last) < int(first):
            raise DataError(f"shards {spec!r}: range {{{body}}} runs backwards")
        width = len(first) if first.startswith("0") else 0
        items = [str(i).zfill(width) for i in range(int(first), int(last) + 1)]
    elif "," in body:
        items = body.split(",")
    else:
        raise DataError(f"shards {spec!r}: {{{body}}} is neither a range {{a..b}} nor a list {{a,b}}")
    return [p for item in items for p in _braces(head + item + tail)]


def load_shards(
    spec: str | os.PathLike,
    classes: list[str] | None = None,
    *,
    cache_dir: str | os.PathLike,
    check: str = "quick",
    workers: int | None = None,
) -> Shards:
    """Check and index the shards of ``spec`` (see :func:`expand`).

    ``classes`` fixes the class names (validation takes training's); otherwise ``classes.txt``
    beside the shards, or the indices ``0..max``. ``check``: ``"quick"`` (structure, as the
    folder scan), ``"full"`` (decode every image) or ``"off"`` (only that a sample has an image and
    a class index). Samples without an image or a valid class index, with an image DALI cannot
    decode, or with a class index beyond ``classes``, are left out and listed in ``Shards.bad``.
    Raises ``ValueError`` naming the spec when no good sample is left.
    """
    if check not in ("quick", "full", "off"):
        raise ValueError(f"check must be 'quick', 'full' or 'off', got {check!r}")
    paths = expand(spec)
    if classes is None:
        listing = Path(paths[0]).parent / CLASSES_FILE
        classes = _read_classes(listing) if listing.is_file() else None
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    results = [_cached(p, cache_dir, check) for p in paths]
    todo = [i for i, r in enumerate(results) if r is None]
    workers = min(workers or os.cpu_count() or 1, len(todo))
    if workers > 1:  # only the shards not cached start worker processes; this one writes the cache
        with worker_pool(workers) as pool:
            fresh = list(pool.map(_index_retried, [paths[i] for i in todo], [check] * len(todo)))
    else:
        fresh = [_index_retried(paths[i], check) for i in todo]
    for i, found in zip(todo, fresh):
        results[i] = _store(paths[i], cache_dir, check, *found)
    if classes is None:
        top = max((r["max_label"] for r in results), default=-1)
        classes = [str(i) for i in range(top + 1)]
    bad = [tuple(b) for r in results for b in r["bad"]]
    index_paths, counts, digests = [], [], []
    kept = []
    for path, r in zip(paths, results):
        if r["max_label"] >= len(classes):  # rare: an index without those samples (not cached)
            r, beyond = _within(r, len(classes), cache_dir)
            bad.extend(
                (f"{path}:{name}", f"class {label} is beyond the {len(classes)} classes") for name, label in beyond
            )
        if not r["count"]:
            continue  # a tar with no good sample (empty, or not a tar) is listed in bad and not read
        kept.append(path)
        index_paths.append(r["index"])
        counts.append(r["count"])
        digests.append(r["digest"])
    if not sum(counts):
        raise DataError(f"shards {str(spec)!r} hold no usable samples ({len(bad)} bad), first {bad[0] if bad else ''}")
    return Shards(kept, index_paths, counts, list(classes), digests, bad)


def _read_classes(path: Path) -> list[str]:
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(set(names)) != len(names):
        raise DataError(f"{path} lists a class twice")
    return names


def _cache_key(path: str, cache_dir, check: str) -> tuple[str, Path, Path]:
    st = os.stat(path)
    key = f"{_CACHE_VERSION} {os.path.abspath(path)} {st.st_size} {st.st_mtime_ns} {check}"
    stem = Path(cache_dir) / hashlib.sha1(key.encode()).hexdigest()[:20]
    return key, stem.with_suffix(".json"), stem.with_suffix(".idx")


def _cached(path: str, cache_dir, check: str) -> dict | None:
    """The cached index of one shard (see :func:`_store`), or None."""
    key, meta_path, index_path = _cache_key(path, cache_dir, check)
    try:
        meta = json.loads(meta_path.read_text())
        return meta if meta["key"] == key and index_path.is_file() else None
    except (OSError, ValueError, KeyError):
        return None  # not cached, or a damaged cache: index again


def _store(path: str, cache_dir, check: str, lines: list[str], labels: list[tuple[str, int]], bad: list) -> dict:
    """Cache one shard's index (see :func:`_index`): ``{"index", "count", "digest", "max_label",
    "labels" (of the indexed samples, in order), "bad": [(item, reason)]}``."""
    key, meta_path, index_path = _cache_key(path, cache_dir, check)
    atomic_write(index_path, lambda f: f.write(_index_text(lines).encode()))
    meta = {
        "key": key,
        "index": str(index_path),
        "bad": bad,
        **_summary(labels),
        "labels": [label for _, label in labels],
    }
    atomic_write(meta_path, lambda f: f.write(json.dumps(meta).encode()))
    return meta


def _summary(labels: list[tuple[str, int]]) -> dict:
    text = "".join(f"{name} {label}\n" for name, label in labels)
    return {
        "count": len(labels),
        "digest": hashlib.sha1(text.encode()).hexdigest()[:16],
        "max_label": max((label for _, label in labels), default=-1),
    }


def _index_text(lines: list[str]) -> str:
    return f"{INDEX_VERSION} {len(lines)}\n" + "".join(line + "\n" for line in lines)


def _within(meta: dict, num_classes: int, cache_dir: Path) -> tuple[dict, list[tuple[str, int]]]:
    """``meta`` with an index of only the samples whose class is below ``num_classes``, and the others."""
    lines = Path(meta["index"]).read_text().splitlines()[1:]
    keep, beyond = [], []
    for line, label in zip(lines, meta["labels"]):
        name = line.split()[3]  # the image member: "ext offset size name ..."
        (keep if label < num_classes else beyond).append((line, name, label))
    text = _index_text([line for line, _, _ in keep])
    index_path = cache_dir / f"{hashlib.sha1((meta['key'] + text).encode()).hexdigest()[:20]}.idx"
    index_path.write_text(text)
    summary = _summary([(name, label) for _, name, label in keep])
    return {**meta, "index": str(index_path), **summary}, [(name, label) for _, name, label in beyond]


def _index_retried(path: str, check: str):
    """:func:`_index`, retried while the storage fails; a storage error that persists is raised
    naming the shard (a shard is too large a part of the data to skip quietly)."""
    try:
        return retried(_index, path, check)
    except OSError as e:
        if storage_error(e) and not e.filename:
            raise OSError(e.errno, f"{e.strerror or e} (reading the shard)", path) from e
        raise


def _index(path: str, check: str) -> tuple[list[str], list[tuple[str, int]], list[tuple[str, str]]]:
    """Read one tar: the index line of each good sample, its (image member, label), and the bad
    ``(path:member, reason)`` pairs. A tar that breaks off keeps the samples before the break. A
    storage error (:func:`pipelines.scan.storage_error`) is raised."""
    lines, labels, bad = [], [], []
    size = os.path.getsize(path)

    def finish(key: str, members: list[tarfile.TarInfo], tar: tarfile.TarFile) -> None:
        image = next((m for m in members if _ext(m.name).lower() in IMAGE_EXTS), None)
        label = next((m for m in members if _ext(m.name) == LABEL_EXT), None)
        where = f"{path}:{(image or members[0]).name}"
        if image is None or label is None:
            bad.append((where, f"sample {key!r} has no {'image' if image is None else '.' + LABEL_EXT} member"))
            return
        if any(m.offset_data + m.size > size for m in (image, label)):
            bad.append((where, "member runs past the end of the tar (truncated shard)"))
            return
        text = tar.extractfile(label).read().strip()
        if not text.isdigit():
            bad.append((where, f"class index {text[:20]!r} is not a non-negative integer"))
            return
        reason = "" if check == "off" else check_stream(tar.extractfile(image), image.size, check == "full")
        if reason:
            bad.append((where, reason))
            return
        # The image's own extension keys the first output; the reader is told all of IMAGE_EXTS.
        lines.append(" ".join(f"{_ext(m.name)} {m.offset_data} {m.size} {m.name}" for m in (image, label)))
        labels.append((image.name, int(text)))

    with open(path, "rb") as f:
        try:
            tar = tarfile.open(fileobj=f, mode="r:")
        except tarfile.TarError as e:
            return [], [], [(path, f"not a readable tar: {e}")]
        key, members = None, []
        try:
            for member in tar:
                if not member.isfile():
                    continue
                name_key = _key(member.name)
                if not name_key:
                    continue  # hidden files, as wds2idx skips them
                if name_key != key and members:
                    finish(key, members, tar)
                    members = []
                key = name_key
                members.append(member)
        except (tarfile.TarError, OSError) as e:
            if storage_error(e):
                raise  # the storage's failure, not the tar's: retried, never cached
            bad.append((path, f"the tar breaks off after {len(lines)} good samples: {e}"))
        if members:
            finish(key, members, tar)
    return lines, labels, bad


def _key(name: str) -> str:
    """The sample key: the member name up to the first dot of its file name (WebDataset's rule)."""
    dot = name.find(".", name.rfind("/") + 1)
    key = name if dot < 0 else name[:dot]
    return "" if not key or key.endswith("/") else key


def _ext(name: str) -> str:
    dot = name.find(".", name.rfind("/") + 1)
    return "" if dot < 0 else name[dot + 1 :]
