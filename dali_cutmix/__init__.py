"""dali-cutmix: CutMix inside NVIDIA DALI pipelines, for fast ResNet training in PyTorch.

The names below load their module on first use (PEP 562), so ``import dali_cutmix.files`` (what
the bad-file check's worker processes import) loads neither torch nor DALI.
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
    "sample_cutmix": "mix",
    "sample_mix": "mix",
    "Normalize": "ops",
    "cutmix": "ops",
}
__all__ = sorted(_HOME)
__getattr__, __dir__ = lazy_names(__name__, _HOME)
