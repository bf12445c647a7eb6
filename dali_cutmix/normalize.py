"""The normalisation applied after the mix, :class:`Normalize`: what ``crop_mirror_normalize``
does, given to :func:`dali_cutmix.cutmix` so that a backend can do it in its own pass."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import nvidia.dali.fn as fn
from nvidia.dali import types


@dataclass(frozen=True)
class Normalize:
    """crop_mirror_normalize's work on the mixed batch: ``(x - mean) / std`` per channel, a flip
    (``mirror``: a bool, or a per-sample DataNode such as ``fn.random.coin_flip()``) and the output
    layout. The native backend on the CPU does it in the same pass as the mix."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    mirror: Any = False
    fp16: bool = False
    output_layout: str = "CHW"
    uint8: bool = False  # flip and lay out only, uint8: mean/std are the trainer's device's work

    def __post_init__(self) -> None:
        if self.uint8 and self.fp16:
            raise ValueError("fp16 and uint8 output exclude each other (uint8 is normalised on the trainer's device)")

    def apply(self, images, *, crop: tuple[int, int] | None = None):
        """The stock operator, for the backends that mix in a pass of their own and for
        validation, which takes a centre ``crop`` (H, W) in the same pass."""
        scale = {"dtype": types.UINT8} if self.uint8 else {
            "dtype": types.FLOAT16 if self.fp16 else types.FLOAT, "mean": list(self.mean), "std": list(self.std)
        }  # fmt: skip
        return fn.crop_mirror_normalize(
            images, output_layout=self.output_layout, mirror=self.mirror, **scale, **({"crop": crop} if crop else {})
        )
