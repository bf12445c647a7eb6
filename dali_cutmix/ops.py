"""CutMix as a DALI graph fragment: ``images, labels -> images, labels_a, labels_b, lam``.

Use it inside any ``@pipeline_def``::

    images, labels_a, labels_b, lam = dali_cutmix.cutmix(images, labels, alpha=1.0)

Sampling always runs as native DALI random operators (``fn.batch_permutation``,
``fn.random.beta``, ``fn.random.uniform``, ``fn.random.coin_flip``), so the draws follow the
pipeline's seed, and the box formula is :func:`dali_cutmix.mix.cutmix_box` evaluated on
DataNodes. Applying the box has two backends:

* ``"native"``: ``fn.slice`` cuts each giving sample's box, ``fn.permute_batch`` hands the
  slices to their receivers and ``fn.multi_paste`` writes each own image with the received
  slice; no Python runs per batch. ``multi_paste`` is HWC-only,
  so CHW batches are transposed there and back (paste before the HWC->CHW switch to avoid it).
* ``"python"``: one batch-level Python operator. On the CPU ``fn.python_function`` on NumPy; on
  the GPU ``fn.dl_tensor_python_function`` hands DLPack tensors to torch, which works on DALI's
  own CUDA stream (``synchronize_stream=False``), so the host never waits for the device.

Both backends consume the same sampled ``perm`` and ``boxes``, so their outputs are identical.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import NamedTuple

import nvidia.dali.fn as fn
import nvidia.dali.math as dmath
import numpy as np
from nvidia.dali import types
from nvidia.dali.data_node import DataNode

from .mix import box_mask, check_cutmix_args, check_image_size, cutmix_box, spatial_size

BACKENDS = ("python", "native")

DALI_OPS = SimpleNamespace(
    sqrt=dmath.sqrt, floor=dmath.floor, minimum=dmath.min, clip=dmath.clamp, item=lambda x, k: x[k]
)


def cutmix(
    images,
    labels,
    *,
    alpha: float = 1.0,
    prob: float = 1.0,
    mode: str = "batch",
    backend: str = "python",
    layout: str = "HWC",
    return_params: bool = False,
):
    """CutMix a uniformly shaped batch inside a DALI pipeline.

    Args:
        images: DataNode of ``HWC`` or ``CHW`` images (uint8 or float), CPU or GPU, all of one
            shape (crop or resize before). The output keeps dtype, layout, device and shape.
        labels: DataNode of per-sample labels (CPU or GPU).
        alpha: ``lam ~ Beta(alpha, alpha)``.
        prob: probability that a batch (``mode="batch"``) or a sample (``mode="elem"``) is mixed;
            a number, or a float32 DataNode (one value per sample) for a schedule fed at run time.
        mode: ``"batch"`` draws one lambda and box for the batch, ``"elem"`` one per sample.
        backend: ``"python"`` or ``"native"`` (see the module docstring).
        layout: ``"HWC"`` or ``"CHW"``.
        return_params: also return ``perm`` (int32 per sample) and ``boxes`` (int32 ``[4]``,
            ``y1, x1, y2, x2``) so the mix can be inspected or replayed.

    Returns:
        ``images, labels_a, labels_b, lam`` (``lam`` float32, 1.0 where nothing was mixed),
        then ``perm, boxes`` when ``return_params`` is true.
    """
    check_cutmix_args(alpha, 1.0 if _is_node(prob) else prob, mode, layout)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    sampled = sample_params(images, alpha=alpha, prob=prob, mode=mode, layout=layout)
    apply = paste_native if backend == "native" else paste_python
    mixed = apply(images, sampled, layout=layout)
    labels_b = fn.permute_batch(labels, indices=sampled.perm)
    outputs = (mixed, labels, labels_b, sampled.lam)
    return outputs + (sampled.perm, sampled.boxes) if return_params else outputs


class Sampled(NamedTuple):
    """Per-sample DataNodes of one CutMix batch (int32 unless said otherwise).

    perm: the partner of each sample; boxes: ``y1, x1, y2, x2`` of the box each sample receives;
    lam: float32; give_start, give_shape: ``(y1, x1)`` and ``(h, w)`` of the box each sample
    *gives*, so that ``boxes[i]`` is the box given by ``perm[i]``.
    """

    perm: DataNode
    boxes: DataNode
    lam: DataNode
    give_start: DataNode
    give_shape: DataNode


def sample_params(images, *, alpha: float, prob, mode: str, layout: str) -> Sampled:
    """Draw the partners and boxes of a batch with DALI's random operators.

    Boxes are drawn per *giving* sample and gathered to the receivers through ``perm``; the draws
    are independent, so the receivers' boxes have exactly the distribution of drawing them per
    receiver, and every later step (slicing the partners, labels, lambda) is a plain gather.
    """
    perm = fn.batch_permutation()
    shape = images.shape(dtype=types.FLOAT, device="cpu")
    hw = shape[0:2] if layout == "HWC" else shape[1:3]
    coin = fn.random.coin_flip(probability=prob if _is_node(prob) else float(prob))
    draws = [
        fn.random.beta(alpha=float(alpha), beta=float(alpha)),
        fn.random.uniform(range=[0.0, 1.0], shape=[2]),
        fn.cast(coin, dtype=types.FLOAT),
    ]
    if mode == "batch":
        # Every sample takes sample 0's draws: one box and one coin for the batch.
        first = perm * 0
        draws = [fn.permute_batch(d, indices=first) for d in draws]
    lo, hi, lam = cutmix_box(*draws, hw, ops=DALI_OPS)
    boxes = fn.permute_batch(fn.cast(fn.cat(lo, hi), dtype=types.INT32), indices=perm)
    lam = fn.permute_batch(lam, indices=perm)
    return Sampled(perm, boxes, lam, fn.cast(lo, dtype=types.INT32), fn.cast(hi - lo, dtype=types.INT32))


def _is_node(x) -> bool:
    return isinstance(x, DataNode)


def paste_native(images, sampled: Sampled, *, layout: str):
    """Each sample's own pixels with its partner's box pasted in; DALI operators only.

    Only the boxes travel between samples: each sample's given box is sliced out, the slices are
    gathered through ``perm``, and one ``multi_paste`` writes the own image and the received
    slice. Gathering whole images instead would copy the batch once more; and the paste sizes
    are relative (``shapes_rel`` of 1: each source in full), so the only per-sample argument is
    where the slice lands. Every extra small operator costs ~0.1 ms per batch of 64 on the CPU.
    """
    if layout == "CHW":
        # multi_paste is HWC-only (its FHWC path fails on the CPU in DALI 2.4), so go round.
        images = fn.transpose(images, perm=[1, 2, 0], output_layout="HWC")
    given = fn.slice(images, sampled.give_start, sampled.give_shape, axes=[0, 1])
    received = fn.permute_batch(given, indices=sampled.perm)
    mixed = fn.multi_paste(
        images,
        received,
        in_anchors=_ZERO_ANCHORS,
        out_anchors=sampled.boxes[0:2] * _SECOND_ROW,  # [[0, 0], [y1, x1]]
        shapes_rel=_FULL_SHAPES,
        output_size=images.shape(dtype=types.INT32, device="cpu")[0:2],
    )
    if layout == "CHW":
        mixed = fn.transpose(mixed, perm=[2, 0, 1], output_layout="CHW")
    return mixed


_ZERO_ANCHORS = np.zeros((2, 2), dtype=np.int32)
_SECOND_ROW = types.Constant(np.array([[0, 0], [1, 1]], dtype=np.int32))
_FULL_SHAPES = np.ones((2, 2), dtype=np.float32)


def paste_python(images, sampled: Sampled, *, layout: str):
    """The same paste as one batch-level Python operator (NumPy on CPU, torch on GPU)."""
    perm, boxes = sampled.perm, sampled.boxes
    if images.device == "gpu":
        return fn.dl_tensor_python_function(
            images,
            perm.gpu(),
            boxes.gpu(),
            function=_TorchPaste(layout),
            batch_processing=True,
            synchronize_stream=False,
            device="gpu",
            output_layouts=layout,
        )
    return fn.python_function(
        images,
        perm,
        boxes,
        function=_NumpyPaste(layout),
        batch_processing=True,
        output_layouts=layout,
    )


class _NumpyPaste:
    """Batch callback for ``fn.python_function``: copies, then pastes each box in place."""

    def __init__(self, layout: str):
        self.layout = layout

    def __call__(self, images, perm, boxes):
        shape = images[0].shape
        for i, image in enumerate(images):
            if image.shape != shape:
                raise ValueError(
                    f"CutMix needs a batch of one image shape (crop or resize first): "
                    f"sample 0 is {shape}, sample {i} is {image.shape}"
                )
        check_image_size(*spatial_size(shape, self.layout))
        out = np.stack(images)  # (B, ...) a copy: inputs must not be modified
        for i, (j, (y1, x1, y2, x2)) in enumerate(zip(perm, boxes)):
            if y2 > y1 and x2 > x1:
                if self.layout == "HWC":
                    out[i, y1:y2, x1:x2] = images[int(j)][y1:y2, x1:x2]
                else:
                    out[i, :, y1:y2, x1:x2] = images[int(j)][:, y1:y2, x1:x2]
        return list(out)


class _TorchPaste:
    """Batch callback for ``fn.dl_tensor_python_function`` on the GPU.

    Runs torch on DALI's CUDA stream; the mask-and-gather formulation never reads the box values
    on the host, so nothing blocks on the device.
    """

    def __init__(self, layout: str):
        self.layout = layout

    def __call__(self, images, perm, boxes):
        import torch
        from nvidia.dali.python_function_plugin import current_dali_stream
        from torch.utils.dlpack import to_dlpack

        with torch.cuda.stream(torch.cuda.ExternalStream(current_dali_stream())):
            x = torch.stack([torch.from_dlpack(t) for t in images])
            perm_t = torch.stack([torch.from_dlpack(t) for t in perm]).long().reshape(-1)
            boxes_t = torch.stack([torch.from_dlpack(t) for t in boxes]).reshape(-1, 4)
            H, W = spatial_size(tuple(x.shape[1:]), self.layout)
            mask = box_mask(boxes_t, H, W)
            mask = mask[:, :, :, None] if self.layout == "HWC" else mask[:, None]
            out = torch.where(mask, x[perm_t], x)
            return [to_dlpack(o) for o in out]
