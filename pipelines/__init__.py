"""The data: sources (:mod:`pipelines.sources`: image files, WebDataset shards), the bad-file scan,
the ``@pipeline_def`` builders, the PyTorch loaders over them and the Lightning module.

The names below load their module on first use (PEP 562), so the scan's worker processes, which
import :mod:`pipelines.scan`, load neither torch nor DALI.
"""

from importlib import import_module

_HOME = {"train_pipeline": "imagenet", "val_pipeline": "imagenet", "train_loader": "loaders", "val_loader": "loaders"}
__all__ = sorted(_HOME)


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module 'pipelines' has no attribute {name!r}")
    return getattr(import_module(f".{_HOME[name]}", __name__), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOME))
