"""What the CutMix backends share inside a DALI graph: the parameters of a mixed batch as
DataNodes (:class:`Params`, :class:`dali_cutmix.mix.CutMixParams` in DALI), the normalisation to
apply after the mix (:class:`Normalize`), the array namespace that evaluates the box formula on
DataNodes (``DALI_OPS``) and the batch check every backend makes (:func:`check_shapes`)."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, NamedTuple

import nvidia.dali.fn as fn
import nvidia.dali.math as dmath
from nvidia.dali import types
from nvidia.dali.data_node import DataNode

from ..mix import check_image_size, spatial_size

DALI_OPS = SimpleNamespace(
    sqrt=dmath.sqrt,
    floor=dmath.floor,
    minimum=dmath.min,
    clip=dmath.clamp,
    item=lambda x, k: x[k],
    part=lambda x, a, b: x[a:b],
    vec=lambda x: x,  # DALI broadcasts a per-sample scalar against a vector
)


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


class Params(NamedTuple):
    """Per-sample CPU DataNodes of one mixed batch: :class:`dali_cutmix.mix.CutMixParams` in DALI.

    perm (int32): the partner of each sample; boxes (int32 ``[4]``): ``y1, x1, y2, x2`` of the box
    each sample receives; lam (float32); blend (float32, 1.0 for MixUp samples, or None when MixUp
    is off).
    """

    perm: DataNode
    boxes: DataNode
    lam: DataNode
    blend: DataNode | None
    packed: DataNode | None = None  # the python backend's: all of them, one float32 row a sample


def check_shapes(shapes, layout: str) -> tuple[int, int]:
    """(H, W) of a batch that CutMix can take, from its per-sample shapes: one shape, at least
    2x2; else ``ValueError`` (DALI reports it with the operator's name)."""
    first = tuple(int(v) for v in shapes[0])
    for i, shape in enumerate(shapes):
        if tuple(int(v) for v in shape) != first:
            raise ValueError(
                f"CutMix needs a batch of one image shape (crop or resize first): "
                f"sample 0 is {first}, sample {i} is {tuple(int(v) for v in shape)}"
            )
    hw = spatial_size(first, layout)
    check_image_size(*hw)
    return hw


def is_node(x) -> bool:
    return isinstance(x, DataNode)
