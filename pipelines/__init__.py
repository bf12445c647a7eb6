"""The data: sources (:mod:`pipelines.sources`: image files, WebDataset shards), the bad-file scan,
the ``@pipeline_def`` builders, the PyTorch loaders over them and the Lightning module.

The names below load their module on first use (PEP 562), so ``python -m pipelines.scan`` and its
worker processes load neither torch nor DALI (under ``train.py`` the workers import ``train.py``
again, Python's rule for ``__main__``, and with it torch).
"""

from dali_cutmix.lazy import lazy_names

_HOME = {"train_pipeline": "imagenet", "val_pipeline": "imagenet", "train_loader": "loaders", "val_loader": "loaders"}
__all__ = sorted(_HOME)
__getattr__, __dir__ = lazy_names(__name__, _HOME)
