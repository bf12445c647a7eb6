"""The data: sources (:mod:`pipelines.sources`: image files, WebDataset shards), the bad-file scan,
a loader's settings, the ``@pipeline_def`` builders, the PyTorch loaders over them and the
Lightning module.

The names below load their module on first use (PEP 562), so ``python -m pipelines.scan`` and its
worker processes load neither torch nor DALI (docs/DESIGN.md, "Three packages by job").
"""

from dali_cutmix.lazy import lazy_names

_HOME = {
    "LoaderSettings": "settings",
    "SizeSchedule": "settings",
    "train_pipeline": "graphs",
    "val_pipeline": "graphs",
    "train_loader": "loaders",
    "val_loader": "loaders",
}
__all__ = sorted(_HOME)
__getattr__, __dir__ = lazy_names(__name__, _HOME)
