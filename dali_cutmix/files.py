"""Files that survive crashes: each is written to a temporary name in its folder, fsynced and
renamed over the target, so a reader sees the old file or the new one, never half of one. And
where the caches live (:func:`cache_root`)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def cache_root() -> Path:
    """Where the caches go (the demo export, the scan's verdicts, the shard indexes, the operator
    built for a read-only install): ``DALI_CUTMIX_CACHE``, else ``$XDG_CACHE_HOME/dali-cutmix``,
    else ``~/.cache/dali-cutmix``."""
    if os.environ.get("DALI_CUTMIX_CACHE"):
        return Path(os.environ["DALI_CUTMIX_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dali-cutmix"


def atomic_write(path: Path, write, *, durable: bool = True) -> None:
    """Call ``write(file)`` on a temporary file, fsync it, then rename it to ``path``. ``durable``
    False skips the fsyncs: the rename still leaves the old file or the new one after a killed
    process, but not necessarily after a crash of the machine (for many small files that can be
    made again, such as a prepared copy of the data)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # the mode open() would give, not mkstemp's private 0600
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if not durable:
        return
    # The rename itself is durable only once the folder's entry is on disk.
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def write_json(path: Path, obj) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2, sort_keys=True).encode()))


def _read_umask() -> int:
    mask = os.umask(0)  # reading it means setting it: set it straight back (once, at import)
    os.umask(mask)
    return mask


_UMASK = _read_umask()
