"""A model-free saliency map and its peak, where SaliencyMix centres its boxes (Uddin et al., ICLR
2021, arXiv:2006.01791): for NumPy arrays and for torch tensors on any device, in integer
arithmetic only, so that every backend finds the same peak to the pixel.

The map is centre-surround contrast on a coarse grid, the idea of the fine-grained saliency of
Montabone and Soto (2010) that the authors' code uses (OpenCV's ``StaticSaliencyFineGrained``):
the image in grey levels (its channels summed), summed over cells of ``f x f`` pixels (``f``: the
shorter side over :data:`GRID`), blurred by a 3 x 3 binomial, and each cell's distance from the
mean of the :data:`SCALES` windows of cells around it, summed over the scales. The peak is the
first cell of greatest contrast (row-major, as NumPy's and torch's argmax give it on every
device), and its centre pixel is where the box goes. It costs two passes over the pixels and a
few over the small grid; docs/RESULTS.md ("Which saliency map") compares it on photos with the
authors' map, the spectral residual (Hou and Zhang, CVPR 2007) and a global frequency-tuned map
(Achanta et al., CVPR 2009).
"""

from __future__ import annotations

import numpy as np

from .sampling import is_torch, spatial_size

GRID = 32  # cells along the image's shorter side
SCALES = (7, 15)  # the surround windows' sides, in cells (about a fifth and a half of the image)
FLOAT_STEPS = 256  # float images are read in steps of 1/256 (a uint8 image's steps on a 0-1 scale)
FLOAT_LIMIT = 1 << 16  # and clipped to +-FLOAT_LIMIT steps: every sum below stays exact in int64


def cell_size(height: int, width: int) -> int:
    """The side ``f`` of the map's square cells, in pixels, for an image of ``height x width``."""
    return max(1, min(height, width) // GRID)


def cell_sums(images, layout: str):
    """(B, H // f, W // f) int64: each cell's grey level summed, its channels summed too. uint8
    images are read as they are; float images as ``floor(FLOAT_STEPS * x)`` clipped to
    ``+-FLOAT_LIMIT`` (exact in float32 on every device: a multiplication by a power of two, then a
    floor; a NaN reads as 0, so that no device's own cast of it decides the peak). The rows and
    columns past the last whole cell are left out.

    The sums are taken in floating point, whose adds are vectorised where integer reductions are
    not (on a CPU 7 ms a batch of 64 at 224 px against 52 ms): float32 while every partial sum
    stays below 2**24, float64 otherwise, so each sum is exact in any order (the same integers on
    every device). The rows of a cell are added one by one over whole image rows (contiguous).
    """
    H, W = spatial_size(tuple(images.shape[1:]), layout)
    B, f = images.shape[0], cell_size(H, W)
    rows, cols = H // f, W // f
    channels = images.shape[3] if layout == "HWC" else images.shape[1]
    torch_ = is_torch(images)
    if torch_:
        import torch

        floating, uint8 = images.is_floating_point(), images.dtype == torch.uint8
    else:
        floating, uint8 = np.issubdtype(images.dtype, np.floating), images.dtype == np.uint8
    level = FLOAT_LIMIT if floating else 255 if uint8 else 1 << 31  # the largest |level| a pixel has
    wide = level * channels * f * f >= 1 << 24
    if floating:
        if torch_:
            images = torch.floor(torch.nan_to_num(images.float() * FLOAT_STEPS)).clamp_(-FLOAT_LIMIT, FLOAT_LIMIT)
        else:
            scaled = np.nan_to_num(images.astype(np.float32) * np.float32(FLOAT_STEPS))
            images = np.clip(np.floor(scaled), -FLOAT_LIMIT, FLOAT_LIMIT)
    if layout == "HWC":  # (B, rows, f, W * C): a cell's rows are whole image rows
        stacked = images[:, : rows * f].reshape(B, rows, f, W * channels)
    else:  # (B, C, rows, f, W)
        stacked = images[:, :, : rows * f].reshape(B, channels, rows, f, W)
    picked = [stacked[:, :, i] if layout == "HWC" else stacked[:, :, :, i] for i in range(f)]
    if torch_:
        acc = picked[0].to(torch.float64 if wide else torch.float32)
    else:
        acc = picked[0].astype(np.float64 if wide else np.float32)
    for row in picked[1:]:
        acc += row
    if layout == "HWC":  # (B, rows, W * C) -> (B, rows, cols, f * C)
        cells = acc[..., : cols * f * channels].reshape(B, rows, cols, f * channels).sum(3)
    else:  # (B, C, rows, W) -> (B, C, rows, cols, f)
        cells = acc[..., : cols * f].reshape(B, channels, rows, cols, f).sum(4).sum(1)
    return cells.long() if torch_ else cells.astype(np.int64)


def saliency_map(images, layout: str):
    """(B, H // f, W // f) int64: each cell's centre-surround contrast, ``sum over k of (K / k**2)
    * |k**2 * b - S_k(b)|`` for ``b`` the blurred cell sums, ``S_k`` their sum over the ``k x k``
    window around the cell (edges repeated), ``k`` in :data:`SCALES` and ``K`` the product of the
    ``k**2`` (``K`` times the sum of the distances from the windows' means). The rows and columns
    past the last whole cell are left out.

    images: (B, H, W, C) or (B, C, H, W) (``layout``), uint8 or float, NumPy or torch on any device.
    """
    cells = cell_sums(images, layout)
    blurred = _binomial(_binomial(cells, 1), 2)
    K = int(np.prod([k * k for k in SCALES]))
    contrast = 0
    for k in SCALES:
        window = _window_sum(_window_sum(blurred, k, 1), k, 2)
        contrast = contrast + (K // (k * k)) * abs(blurred * (k * k) - window)
    return contrast


def peaks(images, layout: str):
    """(B, 2) int64 ``(y, x)``: the centre pixel of each image's most salient cell (the first
    one, row-major, where several tie), the same kind and device as ``images``; nothing is read
    back to the host."""
    H, W = spatial_size(tuple(images.shape[1:]), layout)
    salience = saliency_map(images, layout)
    B, _, cols = salience.shape
    first = salience.reshape(B, -1).argmax(1)  # the first maximum, in NumPy and in torch on every device
    f = cell_size(H, W)
    y, x = (first // cols) * f + f // 2, (first % cols) * f + f // 2
    if is_torch(first):
        import torch

        return torch.stack([y, x], 1)
    return np.stack([y, x], 1).astype(np.int64)


def _window_sum(x, k: int, axis: int):
    """The sum over the ``k`` (odd) entries centred on each entry along ``axis`` of an integer
    array, the edges repeated: one cumulative sum (exact in int64)."""
    n, r = x.shape[axis], k // 2
    part = _slicer(x.ndim, axis)
    if is_torch(x):
        import torch

        source = torch.arange(-r, n + r, device=x.device).clamp_(0, n - 1)
        total = torch.cumsum(torch.index_select(x, axis, source), axis)
        total = torch.cat([torch.zeros_like(total[part(0, 1)]), total], axis)
    else:
        total = np.cumsum(np.take(x, np.clip(np.arange(-r, n + r), 0, n - 1), axis), axis)
        total = np.concatenate([np.zeros_like(total[part(0, 1)]), total], axis)
    return total[part(k, n + k)] - total[part(0, n)]


def _binomial(x, axis: int):
    """``[1, 2, 1]`` along ``axis`` of an integer array, the edges repeated (exact)."""
    n = x.shape[axis]
    part = _slicer(x.ndim, axis)
    if is_torch(x):
        import torch

        padded = torch.cat([x[part(0, 1)], x, x[part(n - 1, n)]], axis)
    else:
        padded = np.concatenate([x[part(0, 1)], x, x[part(n - 1, n)]], axis)
    return padded[part(0, n)] + 2 * padded[part(1, n + 1)] + padded[part(2, n + 2)]


def _slicer(ndim: int, axis: int):
    """``part(a, b)``: the index of entries ``a:b`` along ``axis`` of an ``ndim``-D array."""

    def part(a: int, b: int) -> tuple:
        index = [slice(None)] * ndim
        index[axis] = slice(a, b)
        return tuple(index)

    return part
