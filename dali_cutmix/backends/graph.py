"""What the CutMix backends share inside a DALI graph: the parameters of a mixed batch as
DataNodes (:class:`Params`, :class:`dali_cutmix.sampling.CutMixParams` in DALI), the array
namespace that evaluates the box formula on DataNodes (``DALI_OPS``) and the batch check every
backend makes (:func:`check_shapes`)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import NamedTuple

import nvidia.dali.math as dmath
from nvidia.dali.data_node import DataNode

from ..recipe import check_image_size
from ..sampling import spatial_size

DALI_OPS = SimpleNamespace(
    sqrt=dmath.sqrt,
    floor=dmath.floor,
    minimum=dmath.min,
    clip=dmath.clamp,
    item=lambda x, k: x[k],
    part=lambda x, a, b: x[a:b],
    vec=lambda x: x,  # DALI broadcasts a per-sample scalar against a vector
)


class Params(NamedTuple):
    """Per-sample CPU DataNodes of one mixed batch: :class:`dali_cutmix.sampling.CutMixParams` in DALI.

    perm (int32): the partner of each sample; boxes (int32 ``[4]``): ``y1, x1, y2, x2`` of the box
    each sample receives; lam (float32); blend (float32, 1.0 for MixUp samples, or None when MixUp
    is off); resized and salient (bools, not nodes): as :class:`~dali_cutmix.sampling.CutMixParams`'s.
    SaliencyMix's placed boxes and ``lam`` follow from the pixels, so they are on the images'
    device (the GPU for GPU images); every other node is on the CPU.
    """

    perm: DataNode
    boxes: DataNode
    lam: DataNode
    blend: DataNode | None
    packed: DataNode | None = None  # the python backend's: all of them, one float32 row a sample
    resized: bool = False  # the boxes receive the partners' whole images (ResizeMix), not their pixels
    salient: bool = False  # the boxes are half-sides still to be centred on saliency peaks (SaliencyMix)


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
