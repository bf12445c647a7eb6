"""Names a package loads on first use (PEP 562), so importing one light module of it (what worker
processes do) does not load torch or DALI."""

from __future__ import annotations

import sys
from importlib import import_module


def lazy_names(package: str, home: dict[str, str]):
    """``__getattr__`` and ``__dir__`` for ``package``: each name in ``home`` comes from its module."""

    def __getattr__(name: str):
        if name not in home:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(import_module(f".{home[name]}", package), name)

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(home))

    return __getattr__, __dir__
