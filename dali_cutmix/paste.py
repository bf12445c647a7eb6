"""Apply CutMix (and MixUp) parameters to a batch: NumPy arrays or torch tensors, on any device.
Pure: the inputs are not modified."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .recipe import check_layout
from .saliency import peaks
from .sampling import NUMPY_OPS, CutMixParams, blend_weight, box_around, is_torch, spatial_size, torch_ops


def box_rows_cols(boxes, height: int, width: int):
    """(B, H) and (B, W) bool, the rows and the columns of each sample's box, from ``boxes``:
    (B, 4) integer ``y1, x1, y2, x2``, NumPy or torch (the result on its device)."""
    if is_torch(boxes):
        import torch

        rows = torch.arange(height, device=boxes.device)
        cols = torch.arange(width, device=boxes.device)
    else:
        rows, cols = np.arange(height), np.arange(width)
    y1, x1, y2, x2 = (boxes[:, k, None] for k in range(4))
    return (rows[None] >= y1) & (rows[None] < y2), (cols[None] >= x1) & (cols[None] < x2)


def apply_cutmix(images, labels, params: CutMixParams, layout: str = "HWC"):
    """Mix a batch with given parameters; pure (the inputs are not modified).

    images: (B, H, W, C) for ``HWC`` or (B, C, H, W) for ``CHW``, any dtype; a NumPy array, or a
        torch tensor on any device.
    labels: (B, ...), the same kind as ``images`` and on its device.
    params: from :func:`dali_cutmix.sampling.sample_mix` (NumPy; copied to the images' device).
    layout: ``"HWC"`` or ``"CHW"``.
    Returns ``(mixed_images, labels_a, labels_b, lam)``: ``labels_a = labels``, ``labels_b =
    labels[perm]``, ``lam`` (B,) float32 on the images' device (SaliencyMix's boxes are centred
    first: :func:`placed`).
    """
    check_layout(layout)
    if images.ndim != 4 or len(images) != len(params.perm):
        raise ValueError(
            f"images must be a batch of {len(params.perm)} {layout} images, got shape {tuple(images.shape)}"
        )
    if params.blend is not None and not is_torch(params.blend) and not params.blend.any():
        params = replace(params, blend=None)  # no MixUp sample: the blend is skipped
    params = placed(images, params, layout)
    perm, boxes, lam, blend = params.perm, params.boxes, params.lam, params.blend
    mixed = mix_images(images, perm, boxes, lam, blend, layout, resized=params.resized)
    return mixed, labels, labels[perm], lam


def placed(images, params: CutMixParams, layout: str = "HWC") -> CutMixParams:
    """``params`` as arrays of the images' kind (NumPy, or torch on the images' device), their
    boxes placed: SaliencyMix's (``params.salient``) centred on the partners' saliency peaks in
    ``images`` (:func:`centred_on_peaks`), others as they are. What :func:`apply_cutmix` mixes with;
    the boxes to draw for a picture of the batch."""
    perm, boxes, lam, blend = params.perm, params.boxes, params.lam, params.blend
    if is_torch(images) and not is_torch(perm):
        import torch

        from .device import from_numpy

        # On CUDA through pinned memory torch owns, without blocking: no host sync in a step.
        perm, boxes = from_numpy(perm, images.device, torch.long), from_numpy(boxes, images.device)
        lam, blend = from_numpy(lam, images.device), from_numpy(blend, images.device, torch.bool)
    if params.salient:
        boxes, lam = centred_on_peaks(images, perm, boxes, lam, blend, layout)
    return CutMixParams(perm=perm, boxes=boxes, lam=lam, blend=blend, resized=params.resized)


def centred_on_peaks(images, perm, boxes, lam, blend, layout: str):
    """SaliencyMix's boxes: each sample's box centred on its partner's saliency peak
    (:func:`dali_cutmix.saliency.peaks` of ``images[perm]``) and clipped to the image, with its
    lambda, by the formula CutMix's random centre goes through (:func:`box_around`).

    images: the batch before mixing, (B, H, W, C) or (B, C, H, W) (``layout``); perm (B,) int64,
    boxes (B, 4) ``(-h, -w, h, w)`` (the half-sides, 0 where no box is pasted), lam (B,) float32 and
    blend (B,) bool or None, all NumPy or all torch on the images' device. Returns ``boxes`` (B, 4)
    ``y1, x1, y2, x2`` (the dtype given) and ``lam``: the pasted share, or the given ``lam`` where
    ``blend`` (a MixUp sample, no box). In torch it queues kernels and reads nothing back to the
    host: the python backend's GPU code, run by CI on the CPU.
    """
    H, W = spatial_size(tuple(images.shape[1:]), layout)
    peak = peaks(images, layout)
    if is_torch(images):
        import torch

        from .device import from_numpy

        ops, where, cat = torch_ops(), torch.where, torch.cat
        hw = from_numpy(np.array([H, W], np.float32), images.device)  # staged: no blocking copy on CUDA
        centre, half = peak[perm].float(), boxes[:, 2:4].float()
    else:
        ops, where, cat = NUMPY_OPS, np.where, np.concatenate
        hw = np.array([H, W], np.float32)
        centre, half = peak[perm].astype(np.float32), boxes[:, 2:4].astype(np.float32)
    lo, hi, _, lam_box = box_around(centre, half, hw, ops)
    placed_boxes = cat([lo, hi], 1)
    placed_boxes = placed_boxes.to(boxes.dtype) if is_torch(boxes) else placed_boxes.astype(boxes.dtype)
    return placed_boxes, lam_box if blend is None else where(blend, lam, lam_box)


def mix_images(images, perm, boxes, lam, blend, layout: str, *, out=None, resized: bool = False):
    """The mixed batch from parameters of the same kind as ``images`` (NumPy, or torch on its
    device): ``perm`` (B,) int64, ``boxes`` (B, 4) int, ``lam`` (B,) float32, ``blend`` (B,) bool
    or None (no MixUp); ``layout`` ``"HWC"`` or ``"CHW"``. Vectorised: nothing here reads a value
    back to the host, so on a GPU it queues kernels and returns (the python backend's GPU code, run
    by CI on the CPU).

    ``out`` (torch): a contiguous tensor of the images' size and dtype to gather the partners
    into; without MixUp the result is written there too.
    ``resized``: each box receives its partner's whole image resampled to the box's size
    (ResizeMix, :func:`resampled_into_boxes`) instead of the partner's pixels in place.
    """
    H, W = spatial_size(tuple(images.shape[1:]), layout)
    B = images.shape[0]
    torch_ = is_torch(images)
    if torch_:
        import torch
    partners = None  # ResizeMix without MixUp reads the partners only through its resampling
    if blend is not None or not resized:
        if torch_:
            # Gathered as (B, -1) rows, a memcpy per sample (gathering (B, H, W, C) uint8 runs an
            # element-wise kernel, 3-4x slower on a CPU).
            flat = torch.index_select(images.reshape(B, -1), 0, perm, out=None if out is None else out.view(B, -1))
            partners = flat.view(images.shape)
        else:
            partners = images[perm]
    pasted = resampled_into_boxes(images, perm, boxes, layout, partners=partners) if resized else partners
    rows, cols = box_rows_cols(boxes, H, W)  # (B, H), (B, W) bool
    if layout == "HWC":
        # Rows of W*C values: the masks broadcast along whole rows, never along the 3 channels
        # (a slow pattern on CPUs).
        C = images.shape[3]
        # expand + reshape, not repeat_interleave: nothing that could ask the device for a size.
        cols = cols[:, :, None].expand(B, W, C).reshape(B, W * C) if torch_ else np.repeat(cols, C, axis=1)
        own, other = images.reshape(B, H, W * C), pasted.reshape(B, H, W * C)
        rows, cols = rows[:, :, None], cols[:, None, :]
    else:
        own, other = images, pasted
        rows, cols = rows[:, None, :, None], cols[:, None, None, :]
    # Without MixUp nothing reads the partners after the paste, so it may write over them (the
    # resampled copy is the paste's alone).
    reuse = blend is None or resized
    mixed = _paste(own, other, rows, cols, reuse_other=reuse).reshape(images.shape)
    if blend is not None:
        weight = blend_weight(lam, blend.float() if torch_ else blend.astype(np.float32))
        where = torch.where if torch_ else np.where
        mixed = where(blend[:, None, None, None], blend_images(mixed, partners, weight), mixed)
    return mixed


def resampled_into_boxes(images, perm, boxes, layout: str, *, partners=None):
    """Each sample's partner (``images[perm]``), its whole image resampled to the sample's box and
    placed at the box (ResizeMix's paste); outside the box some pixel of the partner, which the
    paste's masks leave out.

    images: (B, H, W, C) or (B, C, H, W) (``layout``), NumPy or torch on any device. perm: (B,)
    int64 and boxes: (B, 4) integer ``y1, x1, y2, x2``, the same kind. partners: ``images[perm]``
    when the caller has it already (the torch HWC path reads ``images`` through ``perm`` directly).
    Nearest neighbour through pixel centres, in integer arithmetic (:func:`source_index`), so that
    every backend agrees byte for byte; OpenMixup's
    ``resizemix`` resamples with nearest too (mmpretrain's with bilinear, without antialiasing, so
    at the box's 0.1-0.8 scale both read at most 2 x 2 source pixels an output pixel). One gather
    a batch, nothing read back to the host.
    """
    H, W = spatial_size(tuple(images.shape[1:]), layout)
    B = images.shape[0]
    rows = source_index(boxes[:, 0], boxes[:, 2], H) * W  # (B, H): where each output row reads
    cols = source_index(boxes[:, 1], boxes[:, 3], W)  # (B, W)
    torch_, channels_last = is_torch(images), layout == "HWC"
    if torch_:
        import torch
    if torch_ and channels_last:
        # Whole pixels by one index_select over the batch's (B * H * W, C) rows, each partner's
        # offset folded into the rows (no gather of the partners first): on a CPU 1.7x faster
        # than gathering each channel through an expanded index.
        rows = rows + perm[:, None] * (H * W)
        index = (rows[:, :, None] + cols[:, None, :]).reshape(-1)
        picked = torch.index_select(images.reshape(B * H * W, -1), 0, index)
        return picked.reshape(images.shape)
    if partners is None:
        partners = torch.index_select(images, 0, perm) if torch_ else images[perm]
    index = rows[:, :, None] + cols[:, None, :]  # (B, H, W): each output pixel's source, row-major
    if channels_last:  # NumPy
        picked = np.take_along_axis(partners.reshape(B, H * W, -1), index.reshape(B, H * W, 1), axis=1)
    elif torch_:
        flat = partners.reshape(B, -1, H * W)
        picked = torch.gather(flat, 2, index.reshape(B, 1, H * W).expand(flat.shape))
    else:
        picked = np.take_along_axis(partners.reshape(B, -1, H * W), index.reshape(B, 1, H * W), axis=2)
    return picked.reshape(partners.shape)


def source_index(lo, hi, size: int):
    """(B, size) int64: for each output pixel ``i`` of ``[lo, hi)`` (B each) the source pixel whose
    centre is nearest when the whole ``size`` is squeezed into the span, ``floor((i - lo + 0.5) *
    size / (hi - lo))``, as ``((2 (i - lo) + 1) size) // (2 (hi - lo))``: integers only. Outside
    the span, a pixel in range (unused)."""
    if is_torch(lo):
        import torch

        start, end = lo.long()[:, None], hi.long()[:, None]
        i = torch.arange(size, device=lo.device)[None]
        span = (end - start).clamp(min=1)
        return torch.div((2 * (i - start) + 1) * size, 2 * span, rounding_mode="floor").clamp(0, size - 1)
    start, end = np.asarray(lo, np.int64)[:, None], np.asarray(hi, np.int64)[:, None]
    i = np.arange(size, dtype=np.int64)[None]
    span = np.maximum(end - start, 1)
    return np.clip(((2 * (i - start) + 1) * size) // (2 * span), 0, size - 1)


def _paste(own, other, rows, cols, reuse_other: bool = False):
    """``other`` where both ``rows`` and ``cols`` (broadcastable bool masks) hold, else ``own``;
    ``reuse_other``: torch may write the result over ``other``.

    torch on uint8: ``own + (other - own) * rows * cols`` in uint8, exact (arithmetic modulo 256),
    four in-place elementwise passes with no full-size mask: several times less CPU than
    ``torch.where``, and no new batch-sized buffer when ``other`` is reused (on a CPU a fresh one
    costs more in page faults than a pass over it).
    """
    if is_torch(own):
        import torch

        if own.dtype == torch.uint8:
            diff = other.sub_(own) if reuse_other else torch.sub(other, own)
            return diff.mul_(rows.to(torch.uint8)).mul_(cols.to(torch.uint8)).add_(own)
        return torch.where(rows & cols, other, own)
    return np.where(rows & cols, other, own)


def blend_images(own, partners, w):
    """``w * own + (1 - w) * partners`` per sample in float32: ``own`` and ``partners`` (B, ...)
    of one dtype, ``w`` (B,) float32, all NumPy or all torch on one device. Integer images are
    rounded half away from zero (docs/DESIGN.md, "Rounding") and clipped."""
    shape = (-1, 1, 1, 1)
    if str(own.dtype) in ("bool", "torch.bool"):
        raise ValueError("MixUp blends pixel values, and bool images have none between False and True: "
                         "give uint8 or float images")  # fmt: skip
    if is_torch(own):
        import torch

        out = own.float() * w.reshape(shape) + partners.float() * (1.0 - w).reshape(shape)
        if own.is_floating_point():
            return out.to(own.dtype)
        return torch.floor(out + 0.5).clamp(0, torch.iinfo(own.dtype).max).to(own.dtype)
    w = np.asarray(w, np.float32).reshape(shape)
    out = own.astype(np.float32) * w + partners.astype(np.float32) * (np.float32(1.0) - w)
    if np.issubdtype(own.dtype, np.floating):
        return out.astype(own.dtype)
    return np.floor(out + np.float32(0.5)).clip(0, np.iinfo(own.dtype).max).astype(own.dtype)
