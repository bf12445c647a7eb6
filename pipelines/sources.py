"""Where the images come from, decided once: :func:`resolve` turns what a user names (an ImageNet
root, as laid out or as downloaded; a ``<class>/<image>`` folder or a file list; WebDataset
shards) into source objects, and everything downstream takes those objects.

A source knows its ``classes``, its length, its ``fingerprint()`` (what a checkpoint was trained
on) and how to read itself (``read()``: the DALI reader of a rank's share). The kinds:
:class:`pipelines.folders.Split` (image files) and :class:`pipelines.shards.Shards`. A new kind is a
class with those four, and a line in :func:`load_source`.
"""

from __future__ import annotations

import os
from pathlib import Path

from dali_cutmix.errors import DataError

from .folders import CACHE, Split, load_imagenet, load_split, usable_cache
from .scan import drop_undecodable, leave_out
from .shards import Shards, expand, is_shards, load_shards

Source = Split | Shards
SHARDS_NEED_VAL = "names WebDataset shards: give the validation data with {flag}"  # the rule, said with a name


def is_source(obj) -> bool:
    """Whether ``obj`` is a loaded source (the one ``isinstance`` over the kinds)."""
    return isinstance(obj, (Split, Shards))


def source_kind(spec) -> str:
    """``"shards"`` or ``"files"``: the one place that tells them apart.

    spec: a loaded source (its ``kind``), a ``.tar`` path, pattern or folder of them, or a folder
        or file list.
    Raises :class:`DataError` for a path that is neither, or a shard pattern that names no file.
    """
    if is_source(spec):
        return spec.kind
    if is_shards(spec):
        expand(spec)  # a bad pattern is said now, not when the shards are indexed
        return "shards"
    if os.path.isdir(spec) or os.path.isfile(spec):
        return "files"
    raise DataError(f"{str(spec)!r} is neither a directory nor .tar shards")


def load_source(spec, classes: list[str] | None = None, *, check: str = "quick", workers: int | None = None,
                cache_dir: str | os.PathLike | None = None) -> Source:  # fmt: skip
    """A source from one spec.

    spec: a Split or Shards (returned as it is); ``.tar`` paths, patterns and folders of them
        (:class:`Shards`, indexed once); else a ``<class>/<image>`` folder or a file list (:class:`Split`).
    classes: the label order (validation takes the training classes); None: the source's own
        (sorted folder names, or the shards' ``classes.txt``).
    check: the shards' check, ``"quick"``, ``"full"`` (decode everything) or ``"off"``.
    workers: processes for that check; None: the cores.
    cache_dir: where shard indexes are kept (``cache_dir/shards``); None: ``CACHE``.
    """
    if is_source(spec):
        return spec
    if source_kind(spec) == "shards":
        cache = usable_cache(cache_dir if cache_dir is not None else CACHE)
        return load_shards(spec, classes, cache_dir=cache / "shards", check=check, workers=workers)
    return load_split(spec, classes)


def usable(source, name: str, classes: list[str] | None = None, *, check: str = "quick", strict: bool = False,
           workers: int | None = None, listing_dir: Path, report: bool = True,
           cache_dir: Path | None = None) -> Source:  # fmt: skip
    """What DALI can read of ``source``, as a trainer needs it.

    source: a spec, Split or Shards (:func:`load_source`).
    name: the split's name in messages and listings (``"train"``, ``"val"``).
    classes: as in :func:`load_source`.
    check: ``"quick"``, ``"full"`` (decode everything) or ``"off"``.
    strict: raise :class:`pipelines.scan.UnusableData` instead of leaving the bad files out.
    workers: processes for the check; None: the cores.
    listing_dir: where ``bad_files_{name}.txt`` lists what was left out.
    report: print what was left out (rank 0 only, under DDP).
    cache_dir: where verdicts and shard indexes are kept; None: ``CACHE``.
    """
    cache = usable_cache(cache_dir if cache_dir is not None else CACHE)
    source = load_source(source, classes, check=check, workers=workers, cache_dir=cache)
    if source.kind == "shards":
        if source.bad:
            total = len(source) + len(source.bad)
            leave_out(source.bad, total, name, strict=strict, listing_dir=listing_dir, report=report, what="samples")
        return source
    if check == "off":
        return source
    return drop_undecodable(source, name, cache_dir=cache / "scan", workers=workers, full=check == "full",
                            strict=strict, listing_dir=listing_dir, report=report)  # fmt: skip


def resolve(data, val=None, **checks) -> tuple[Source, Source]:
    """The training and validation sources of ``data`` (a path or pattern), checked (:func:`usable`,
    ``checks`` as there): an ImageNet root (``train/`` and ``val/``, folders or file lists, or ImageNet as
    downloaded), whose ``val/`` ``val`` replaces; or WebDataset training shards, which need ``val``
    (shards, a folder or a file list). Validation takes the training classes."""
    if source_kind(data) == "shards":
        if val is None:
            raise DataError(f"data {str(data)!r} {SHARDS_NEED_VAL.format(flag='val')}")
        train, held_out = data, val
    else:
        train, held_out = load_imagenet(data)
        held_out = held_out if val is None else val
    train = usable(train, "train", **checks)
    return train, usable(held_out, "val", train.classes, **checks)
