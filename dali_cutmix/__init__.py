"""dali-cutmix: CutMix inside NVIDIA DALI pipelines, for fast ResNet training in PyTorch."""

from .loss import mixed_cross_entropy, mixed_targets
from .mix import CutMixParams, LoopMixer, MixConfig, apply_cutmix, cutmix_box, sample_cutmix, sample_mix
from .ops import Normalize, cutmix

__all__ = [
    "CutMixParams",
    "LoopMixer",
    "MixConfig",
    "Normalize",
    "apply_cutmix",
    "cutmix",
    "cutmix_box",
    "mixed_cross_entropy",
    "mixed_targets",
    "sample_cutmix",
    "sample_mix",
]
