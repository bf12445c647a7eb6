"""dali-cutmix: CutMix inside NVIDIA DALI pipelines, for fast ResNet training in PyTorch.

The names below load their module on first use (PEP 562), so ``import dali_cutmix.files`` loads
neither torch nor DALI: the bad-file check (``python -m pipelines.scan``) and ``pipelines.prepare``
start their workers in a fraction of a second. (Under ``train.py`` Python's fork server imports
``train.py`` again in each worker, its rule for ``__main__``, so there the workers load torch.)
"""

from .lazy import lazy_names

_HOME = {
    "mixed_cross_entropy": "loss",
    "mixed_targets": "loss",
    "CutMixParams": "mix",
    "LoopMixer": "mix",
    "MixConfig": "mix",
    "RecipeError": "mix",
    "apply_cutmix": "mix",
    "cutmix_box": "mix",
    "sample_mix": "mix",
    "Normalize": "ops",
    "Mixed": "ops",
    "cutmix": "ops",
}
__all__ = sorted(_HOME)
__getattr__, __dir__ = lazy_names(__name__, _HOME)
