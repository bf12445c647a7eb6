"""dali-cutmix: CutMix inside NVIDIA DALI pipelines, for fast ResNet training in PyTorch.

The names below load their module on first use (PEP 562), so ``import dali_cutmix.files`` (what
the bad-file check's worker processes import) loads neither torch nor DALI.
"""

from importlib import import_module

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


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module 'dali_cutmix' has no attribute {name!r}")
    return getattr(import_module(f".{_HOME[name]}", __name__), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOME))
