"""CutMix math: sample the parameters, then apply them (NumPy or torch).

CutMix (Yun et al., ICCV 2019, arXiv:1905.04899) pastes a rectangle of a partner image into each
image and mixes the labels in proportion to the area. Partners are a random permutation of the
batch, as in the reference code (clovaai/CutMix-PyTorch).

The split follows torchvision's v2 transforms: :func:`sample_cutmix` draws every random number
and returns a frozen :class:`CutMixParams`; :func:`apply_cutmix` is pure. The box formula,
:func:`cutmix_box`, is written once against a tiny array namespace so that the same lines run on
NumPy arrays here and on DALI DataNodes inside a pipeline (see ``dali_cutmix.ops``): the DALI
graph and this module compute bit-identical boxes from the same draws.

Conventions: ``H`` is the image height and ``W`` its width, everywhere. Boxes are half-open
``(y1, x1, y2, x2)``: rows ``y1:y2`` and columns ``x1:x2``.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np

MODES = ("batch", "elem")
LAYOUTS = ("HWC", "CHW")

NUMPY_OPS = SimpleNamespace(
    sqrt=np.sqrt, floor=np.floor, minimum=np.minimum, clip=np.clip, item=lambda x, k: x[..., k]
)


@dataclass(frozen=True)
class CutMixParams:
    """Everything random about one CutMix batch.

    perm:  (B,) int64, sample ``i`` takes its box from sample ``perm[i]``.
    boxes: (B, 4) int32, half-open ``(y1, x1, y2, x2)``; an empty box means "not mixed".
    lam:   (B,) float32, fraction of the sample's own pixels left, ``1 - box_area / (H * W)``.
    """

    perm: np.ndarray
    boxes: np.ndarray
    lam: np.ndarray

    def __post_init__(self) -> None:
        B = len(self.perm)
        if self.boxes.shape != (B, 4) or self.lam.shape != (B,):
            raise ValueError(
                f"CutMixParams: expected perm (B,), boxes (B, 4), lam (B,), got "
                f"{self.perm.shape}, {self.boxes.shape}, {self.lam.shape}"
            )


def check_cutmix_args(alpha: float, prob: float, mode: str, layout: str = "HWC") -> None:
    """Raise ``ValueError`` naming the first bad argument."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
        raise ValueError(f"alpha must be a number > 0, got {alpha!r}")
    if isinstance(prob, bool) or not isinstance(prob, (int, float)) or not 0.0 <= prob <= 1.0:
        raise ValueError(f"prob must be a number in [0, 1], got {prob!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")


def check_image_size(height: int, width: int) -> None:
    if height < 2 or width < 2:
        raise ValueError(f"images must be at least 2x2 (HxW) for CutMix, got {height}x{width}")


def spatial_size(shape: tuple[int, ...], layout: str) -> tuple[int, int]:
    """(H, W) of one image of ``shape`` in ``layout`` (HWC or CHW)."""
    if len(shape) != 3:
        raise ValueError(f"expected a 3-D {layout} image, got shape {tuple(shape)}")
    return (shape[0], shape[1]) if layout == "HWC" else (shape[1], shape[2])


def cutmix_box(lam0, u, mixed, hw, ops: Any = NUMPY_OPS):
    """The clipped CutMix box and its corrected lambda, from uniform draws.

    All inputs are float32 (arrays or DALI DataNodes): ``lam0 ~ Beta(alpha, alpha)`` and
    ``mixed`` (1.0 or 0.0) are scalars per sample, ``u ~ U[0, 1)^2`` places the centre, ``hw`` is
    ``(H, W)``; the last axis of ``u`` and ``hw`` is (rows, columns). The box is
    ``sqrt(1 - lam0) * H`` by ``sqrt(1 - lam0) * W`` around the centre, which is uniform over the
    integer pixels, then clipped to the image; as in the reference code the half-sides are
    ``cut // 2``. Every intermediate is an integer below 2**24 or a correctly rounded float32
    operation, so NumPy and DALI agree bit for bit.

    Returns ``lo`` (``y1, x1``), ``hi`` (``y2, x2``), both whole numbers in float32, and ``lam``.
    """
    cut = ops.sqrt(1.0 - lam0) * mixed
    half = ops.floor(ops.floor(hw * cut) * 0.5)
    centre = ops.minimum(ops.floor(u * hw), hw - 1.0)
    lo = ops.clip(centre - half, 0.0, hw)
    hi = ops.clip(centre + half, 0.0, hw)
    size = hi - lo
    area = ops.item(size, 0) * ops.item(size, 1)
    lam = 1.0 - area / (ops.item(hw, 0) * ops.item(hw, 1))
    return lo, hi, lam


def sample_cutmix(
    batch_size: int,
    height: int,
    width: int,
    *,
    alpha: float = 1.0,
    prob: float = 1.0,
    mode: str = "batch",
    rng: np.random.Generator | int | None = None,
) -> CutMixParams:
    """Draw the parameters of one CutMix batch.

    ``mode="batch"``: one lambda, one box and one mix/no-mix coin for the whole batch (the paper);
    ``mode="elem"``: each sample draws its own. Partners are ``rng.permutation(batch_size)``.
    """
    check_cutmix_args(alpha, prob, mode)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    check_image_size(height, width)
    rng = np.random.default_rng(rng)
    n = 1 if mode == "batch" else batch_size
    lam0 = rng.beta(alpha, alpha, (n, 1)).astype(np.float32)
    u = rng.random((n, 2), dtype=np.float32)
    mixed = (rng.random((n, 1)) < prob).astype(np.float32)
    perm = rng.permutation(batch_size)
    hw = np.array([height, width], dtype=np.float32)
    lo, hi, lam = cutmix_box(lam0, u, mixed, hw)
    boxes = np.broadcast_to(np.concatenate([lo, hi], axis=1), (batch_size, 4)).astype(np.int32)
    lam = np.broadcast_to(lam, (batch_size,)).astype(np.float32)
    return CutMixParams(perm=perm, boxes=boxes, lam=lam)


def box_mask(boxes, height: int, width: int):
    """(B, H, W) bool mask, True inside each sample's box. NumPy or torch, like ``boxes``."""
    if _is_torch(boxes):
        import torch

        rows = torch.arange(height, device=boxes.device)
        cols = torch.arange(width, device=boxes.device)
    else:
        rows, cols = np.arange(height), np.arange(width)
    y1, x1, y2, x2 = (boxes[:, k, None] for k in range(4))
    in_rows = (rows[None] >= y1) & (rows[None] < y2)  # (B, H)
    in_cols = (cols[None] >= x1) & (cols[None] < x2)  # (B, W)
    return in_rows[:, :, None] & in_cols[:, None, :]


def apply_cutmix(images, labels, params: CutMixParams, layout: str = "HWC"):
    """Mix a batch with given parameters; pure, works on NumPy arrays and torch tensors.

    images: (B, H, W, C) for ``HWC`` or (B, C, H, W) for ``CHW``, any dtype; labels: (B, ...).
    Returns ``(mixed_images, labels_a, labels_b, lam)`` with ``labels_a = labels`` and
    ``labels_b = labels[perm]``; the inputs are not modified.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if images.ndim != 4 or len(images) != len(params.perm):
        raise ValueError(
            f"images must be a batch of {len(params.perm)} {layout} images, got shape "
            f"{tuple(images.shape)}"
        )
    H, W = spatial_size(tuple(images.shape[1:]), layout)
    perm, boxes, lam = params.perm, params.boxes, params.lam
    if _is_torch(images):
        import torch

        perm = torch.as_tensor(perm, device=images.device, dtype=torch.long)
        boxes = torch.as_tensor(boxes, device=images.device)
        lam = torch.as_tensor(lam, device=images.device)
        where = torch.where
    else:
        where = np.where
    mask = box_mask(boxes, H, W)
    mask = mask[:, :, :, None] if layout == "HWC" else mask[:, None]
    mixed = where(mask, images[perm], images)
    return mixed, labels, labels[perm], lam


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")
