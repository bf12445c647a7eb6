"""dali-cutmix: CutMix inside NVIDIA DALI pipelines, for fast ResNet training in PyTorch.

The names below load their module on first use (PEP 562), so ``import dali_cutmix.files`` loads
neither torch nor DALI: the bad-file check (``python -m pipelines.scan``, and under ``train.py``,
a light entry point) and ``pipelines.prepare`` start their workers in a fraction of a second.
"""

from .lazy import lazy_names

_HOME = {
    "mixed_cross_entropy": "loss",
    "mixed_targets": "loss",
    "CutMixParams": "sampling",
    "LoopMixer": "loop",
    "MixConfig": "recipe",
    "RecipeError": "recipe",
    "apply_cutmix": "paste",
    "cutmix_box": "sampling",
    "sample_mix": "sampling",
    "Normalize": "normalize",
    "Mixed": "ops",
    "cutmix": "ops",
    "epoch_prob": "ops",
}
__all__ = sorted(_HOME)
__getattr__, __dir__ = lazy_names(__name__, _HOME)
