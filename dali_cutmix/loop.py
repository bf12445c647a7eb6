"""CutMix (and MixUp) in the training loop, on the batch's device."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np

from .paste import apply_cutmix
from .recipe import MixConfig
from .sampling import CutMixParams, sample_mix


class LoopMixer:
    """CutMix (and MixUp) in the training loop, as the reference code does it: the loader gives
    plain batches and this mixes each one on its device after loading.

    The same recipe and sampler as in the pipeline (:func:`sample_mix`, then :func:`apply_cutmix`
    on the batch, CHW), drawn from a NumPy generator of its own; :meth:`state` and
    :meth:`load_state` carry that generator through checkpoints, so a resumed run mixes as an
    uninterrupted one. ``epoch`` per call gives the recipe's chance of mixing in that epoch.

    config: the recipe.
    seed: the generator's seed (:func:`dali_cutmix.seeds.derive_seed`, stream ``"loop_mixer"``).
    """

    def __init__(self, config: MixConfig, seed: int):
        self.config = config
        self.rng = np.random.default_rng(seed)

    def __call__(self, images, labels, epoch: int = 0):
        """``(B, C, H, W)`` images and ``(B,)`` labels -> ``images, labels_a, labels_b, lam``.
        A channels_last batch (a GPU loader's: the NCHW view of HWC memory) is mixed as the HWC
        block it is and handed back as the same kind of view, so nothing is copied to change the
        layout, here or in the training step."""
        B, _, H, W = images.shape
        params = self.sample(B, H, W, epoch)
        if _channels_last(images):
            mixed, labels_a, labels_b, lam = apply_cutmix(images.permute(0, 2, 3, 1), labels, params, "HWC")
            return mixed.permute(0, 3, 1, 2), labels_a, labels_b, lam
        return apply_cutmix(images, labels, params, "CHW")

    def sample(self, batch_size: int, height: int, width: int, epoch: int = 0) -> CutMixParams:
        """The parameters the next call mixes a batch of that size with (drawn: the generator moves on)."""
        config = replace(self.config, prob=self.config.prob_at(epoch), prob_schedule=(), off_epoch=None)
        return sample_mix(batch_size, height, width, config, self.rng)

    def state(self) -> str:
        return json.dumps(self.rng.bit_generator.state)

    def load_state(self, state: str) -> None:
        self.rng.bit_generator.state = json.loads(state)


def _channels_last(images) -> bool:
    """Whether ``images`` is a torch NCHW tensor laid out channels_last (and not also contiguous)."""
    import sys

    torch = sys.modules.get("torch")
    if torch is None or not isinstance(images, torch.Tensor) or images.ndim != 4:
        return False
    return images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous()
