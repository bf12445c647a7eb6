"""Storage faults injected into every Python process started with this folder on PYTHONPATH (the
scan's worker processes too), as ``DALI_CUTMIX_TEST_FAULTS`` says: JSON ``{"open": [paths], "read":
[paths], "times": N or null (always), "tally": a folder counting the tries}``. Opening a listed path
raises EIO, or reading it does; after ``times`` tries of a path the storage is healthy again."""

import builtins
import errno
import hashlib
import json
import os

_spec = os.environ.get("DALI_CUTMIX_TEST_FAULTS")
if _spec:
    _faults = json.loads(_spec)
    _real_open = builtins.open

    def _fails(path: str, kind: str) -> bool:
        if path not in _faults.get(kind, ()):
            return False
        if _faults.get("times") is None:
            return True
        tally = os.path.join(_faults["tally"], hashlib.sha1(f"{kind} {path}".encode()).hexdigest())
        with _real_open(tally, "a") as f:  # one byte a try, across processes
            f.write("x")
        return os.path.getsize(tally) <= _faults["times"]

    class _FailingReads:
        def __init__(self, f):
            self._f = f

        def read(self, *args):
            raise OSError(errno.EIO, os.strerror(errno.EIO))

        def __getattr__(self, name):
            return getattr(self._f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._f.close()

    def _open(file, mode="r", *args, **kwargs):
        path = os.fspath(file) if isinstance(file, (str, os.PathLike)) else None
        if path and _fails(path, "open"):
            raise OSError(errno.EIO, os.strerror(errno.EIO), path)
        f = _real_open(file, mode, *args, **kwargs)
        if path and "r" in mode and _fails(path, "read"):
            return _FailingReads(f)
        return f

    builtins.open = _open
