"""Files that survive crashes: each is written to a temporary name in its folder, fsynced and
renamed over the target, so a reader sees the old file or the new one, never half of one. Where
the caches live (:func:`cache_root`), and the OS lock a job holds on the folder it writes
(:class:`FolderLock`: a run folder, a prepared copy)."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import tempfile
import time
from pathlib import Path

from .errors import UserError


def cache_root() -> Path:
    """Where the caches go (the demo export, the scan's verdicts, the shard indexes, the operator
    built for a read-only install): ``DALI_CUTMIX_CACHE``, else ``$XDG_CACHE_HOME/dali-cutmix``,
    else ``~/.cache/dali-cutmix``."""
    if os.environ.get("DALI_CUTMIX_CACHE"):
        return Path(os.environ["DALI_CUTMIX_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dali-cutmix"


class FolderInUse(UserError):
    """``path`` is locked by a live process, ``holder`` (``"pid N on HOST since TIME"``)."""

    def __init__(self, path: Path, holder: str):
        self.path, self.holder = path, holder
        super().__init__(f"{Path(path).parent} is in use by a live process ({holder}): wait for it to end")


def lock_holder(path: Path) -> str | None:
    """Who holds the lock file ``path`` (its text), or None when no live process does. Looks
    without creating anything."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return _holder(fd)
    finally:
        os.close(fd)  # closing drops a lock this call took
    return None


def _holder(fd: int) -> str:
    return os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"


class FolderLock:
    """An OS lock (``fcntl.flock``) on the lock file ``path`` for as long as this object lives: a
    second job sees it (:func:`lock_holder`), and the kernel drops it when the process ends, so a
    killed job leaves no stale lock. Creates the folder; :class:`FolderInUse` if a live process
    holds it."""

    def __init__(self, path: Path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(path)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(self.fd)
            os.close(self.fd)
            raise FolderInUse(self.path, holder) from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%H:%M:%S')}".encode(), 0)

    def release(self, tidy: bool = False) -> None:
        """Drop the lock; ``tidy``: also remove the lock file, and the folder if nothing else is in it
        (a job that failed before writing anything leaves no trace)."""
        if tidy:
            self.path.unlink(missing_ok=True)
            if not any(self.path.parent.iterdir()):
                self.path.parent.rmdir()
        os.close(self.fd)


def atomic_write(path: Path, write, *, durable: bool = True) -> None:
    """Call ``write(file)`` on a temporary file, fsync it, then rename it to ``path``. ``durable``
    False skips the fsyncs: the rename still leaves the old file or the new one after a killed
    process, but not necessarily after a crash of the machine (for many small files that can be
    made again, such as a prepared copy of the data)."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:  # said of the file asked for, not of its temporary name
        raise OSError(e.errno, e.strerror, str(path)) from e
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
