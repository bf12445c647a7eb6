"""Where the images come from, decided once: :func:`resolve` turns what a user names (an ImageNet
root, as laid out or as downloaded; a ``<class>/<image>`` folder or a file list; WebDataset
shards) into source objects, and everything downstream takes those objects.

A source knows its ``classes``, its length, its ``fingerprint()`` (what a checkpoint was trained
on) and how to read itself (``read()``: the DALI reader of a rank's share). Each kind of source is
one :class:`Kind` in :data:`KINDS`: the object it loads, whether a spec names it, how it loads,
how its bad files are left out, and two facts the rest of the house asks (whether it needs its
validation data named, whether its images are files on disk). A new kind is a module with its
source class and those functions, and one line in :data:`KINDS` (docs/DESIGN.md, "One source").
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dali_cutmix.errors import DataError

from .folders import CACHE, Split, load_imagenet, load_split, usable_cache
from .scan import drop_undecodable, leave_out
from .shards import Shards, expand, is_shards, load_shards

Source = Split | Shards
SHARDS_NEED_VAL = "names WebDataset shards: give the validation data with {flag}"  # the rule, said with a name


@dataclass(frozen=True)
class Kind:
    """One kind of source.

    name: what messages and the config call it.
    type: its source class.
    claims: whether a spec (a path or pattern) names this kind.
    load: ``(spec, classes, check, workers, cache) -> source``.
    leave_out_bad: ``(source, name, check, strict, workers, listing_dir, report, cache) -> source``:
        the bad-file check, what DALI can read of the source.
    needs_val: a spec names training data only, so validation data must be named too.
    files_on_disk: its images are files one can open (sampled for the decoder's sizes, prepared).
    """

    name: str
    type: type
    claims: Callable[[str], bool]
    load: Callable
    leave_out_bad: Callable
    needs_val: bool
    files_on_disk: bool


def _load_shards(spec, classes, check, workers, cache):
    return load_shards(spec, classes, cache_dir=cache / "shards", check=check, workers=workers)


def _shards_usable(source, name, check, strict, workers, listing_dir, report, cache):
    if source.bad:  # indexed and checked when loaded
        total = len(source) + len(source.bad)
        leave_out(source.bad, total, name, strict=strict, listing_dir=listing_dir, report=report, what="samples")
    return source


def _claims_shards(spec) -> bool:
    if not is_shards(spec):
        return False
    expand(spec)  # a bad pattern is said now, not when the shards are indexed
    return True


def _files_usable(source, name, check, strict, workers, listing_dir, report, cache):
    if check == "off":
        return source
    return drop_undecodable(source, name, cache_dir=cache / "scan", workers=workers, full=check == "full",
                            strict=strict, listing_dir=listing_dir, report=report)  # fmt: skip


# In the order a spec is tried: the first kind that claims it loads it.
KINDS = (
    Kind("shards", Shards, _claims_shards, _load_shards, _shards_usable, needs_val=True, files_on_disk=False),
    Kind("files", Split, lambda spec: os.path.isdir(spec) or os.path.isfile(spec),
         lambda spec, classes, check, workers, cache: load_split(spec, classes), _files_usable, needs_val=False,
         files_on_disk=True),
)  # fmt: skip


def is_source(obj) -> bool:
    """Whether ``obj`` is a loaded source (the one ``isinstance`` over the kinds)."""
    return isinstance(obj, tuple(k.type for k in KINDS))


def kind_of(spec) -> Kind:
    """The kind of a loaded source, or of what a spec (a path or pattern) names: the one place
    that tells kinds apart. Raises :class:`DataError` for a path no kind claims, or a shard
    pattern that names no file."""
    for kind in KINDS:
        if isinstance(spec, kind.type) or (not is_source(spec) and kind.claims(spec)):
            return kind
    raise DataError(f"{str(spec)!r} is neither a directory nor .tar shards")


def source_kind(spec) -> str:
    """The name of :func:`kind_of` ``spec`` (``"shards"``, ``"files"``)."""
    return kind_of(spec).name


def load_source(spec, classes: list[str] | None = None, *, check: str = "quick", workers: int | None = None,
                cache_dir: str | os.PathLike | None = None) -> Source:  # fmt: skip
    """A source from one spec.

    spec: a loaded source (returned as it is), or a path or pattern some :data:`KINDS` claims
        (``.tar`` shards, indexed once; else a ``<class>/<image>`` folder or a file list).
    classes: the label order (validation takes the training classes); None: the source's own
        (sorted folder names, or the shards' ``classes.txt``).
    check: the shards' check, ``"quick"``, ``"full"`` (decode everything) or ``"off"``.
    workers: processes for that check; None: the cores.
    cache_dir: where shard indexes are kept (``cache_dir/shards``); None: ``CACHE``.
    """
    if is_source(spec):
        return spec
    kind = kind_of(spec)
    cache = usable_cache(cache_dir if cache_dir is not None else CACHE) if kind.name == "shards" else None
    return kind.load(spec, classes, check, workers, cache)


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
    return kind_of(source).leave_out_bad(source, name, check, strict, workers, listing_dir, report, cache)


def resolve(data, val=None, **checks) -> tuple[Source, Source]:
    """The training and validation sources of ``data`` (a path or pattern), checked (:func:`usable`,
    ``checks`` as there): an ImageNet root (``train/`` and ``val/``, folders or file lists, or ImageNet as
    downloaded), whose ``val/`` ``val`` replaces; or WebDataset training shards, which need ``val``
    (shards, a folder or a file list). Validation takes the training classes."""
    if kind_of(data).needs_val:
        if val is None:
            raise DataError(f"data {str(data)!r} {SHARDS_NEED_VAL.format(flag='val')}")
        train, held_out = data, val
    else:
        train, held_out = load_imagenet(data)
        held_out = held_out if val is None else val
    train = usable(train, "train", **checks)
    return train, usable(held_out, "val", train.classes, **checks)
