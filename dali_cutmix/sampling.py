"""CutMix (and MixUp) parameters: :func:`sample_mix` draws every random number of a batch and
returns a frozen :class:`CutMixParams` (applied by :mod:`dali_cutmix.paste`), as torchvision's v2
transforms split sampling from applying.

Partners are a random permutation of the batch, as in the reference code
(clovaai/CutMix-PyTorch). The box formula, :func:`cutmix_box`, is written once against a tiny
array namespace, so that the same lines run on NumPy arrays here and on DALI DataNodes inside a
pipeline (``dali_cutmix.backends.graph``): the graph and this module compute bit-identical boxes
from the same draws. ``H`` is the image height and ``W`` its width; boxes are half-open
``(y1, x1, y2, x2)``: rows ``y1:y2`` and columns ``x1:x2``.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np

from .recipe import MixConfig, check_image_size, check_prob

# The array namespace of the shared formulas. Per-sample scalars are (n,) arrays here and scalar
# DataNodes in DALI; ``vec`` lifts a scalar to broadcast against a (rows, columns) pair.
NUMPY_OPS = SimpleNamespace(
    sqrt=np.sqrt,
    floor=np.floor,
    minimum=np.minimum,
    clip=np.clip,
    item=lambda x, k: x[..., k],
    part=lambda x, a, b: x[..., a:b],
    vec=lambda x: np.asarray(x)[..., None],
)


def torch_ops():
    """The array namespace on torch tensors (any device), for :func:`box_around`."""
    import torch

    return SimpleNamespace(
        floor=torch.floor,
        minimum=torch.minimum,
        clip=lambda x, lo, hi: torch.minimum(x.clamp(min=lo), hi),
        item=lambda x, k: x[..., k],
    )


def is_torch(x) -> bool:
    """Whether ``x`` is a torch tensor (told apart without importing torch)."""
    return type(x).__module__.startswith("torch")


# Uniform draws a unit places its box with: (resize paste, minmax) -> CutMix's centre (2),
# minmax's sides and corner (4), ResizeMix's scale and corner (3). (SaliencyMix draws CutMix's 2 and
# centres its box on the partner's saliency peak instead: one stream layout for both.)
U_DRAWS = {(False, False): 2, (False, True): 4, (True, False): 3}


@dataclass(frozen=True)
class CutMixParams:
    """Everything random about one mixed batch.

    perm:  (B,) int64, sample ``i`` mixes with sample ``perm[i]``.
    boxes: (B, 4) int32, half-open ``(y1, x1, y2, x2)``; empty where no box is pasted.
    lam:   (B,) float32, the weight of the sample's own label: ``1 - box_area / (H * W)`` for CutMix,
           the MixUp weight for blended samples, 1.0 where nothing was mixed.
    blend: (B,) bool or None, True where the sample is a MixUp blend
           ``lam * own + (1 - lam) * partner`` (rounded for integer images) instead of a paste.
    resized: the boxes hold the partners' whole images resampled into them (ResizeMix,
           :func:`dali_cutmix.paste.resampled_into_boxes`) rather than their pixels in place.
    salient: the boxes are still to be centred on the partners' saliency peaks (SaliencyMix):
           each holds ``(-h, -w, h, w)``, its half-sides around the centre, and ``lam`` its weight
           before clipping; :func:`dali_cutmix.paste.centred_on_peaks` places them from the pixels.
    """

    perm: np.ndarray
    boxes: np.ndarray
    lam: np.ndarray
    blend: np.ndarray | None = None
    resized: bool = False
    salient: bool = False

    def __post_init__(self) -> None:
        B = len(self.perm)
        blend_ok = self.blend is None or np.shape(self.blend) == (B,)
        if self.boxes.shape != (B, 4) or self.lam.shape != (B,) or not blend_ok:
            raise ValueError(
                f"CutMixParams: expected perm (B,), boxes (B, 4), lam (B,), blend (B,) or None, got "
                f"{self.perm.shape}, {self.boxes.shape}, {self.lam.shape}, {np.shape(self.blend)}"
            )


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

    ops: the array namespace (``NUMPY_OPS``, or ``DALI_OPS`` on DataNodes).
    Returns ``lo`` (``y1, x1``), ``hi`` (``y2, x2``) and ``size`` (``h, w``), whole numbers in
    float32, and ``lam``. (In DALI every arithmetic node is an operator of its own, with a fixed
    cost per batch, so the formula is kept to few nodes.)
    """
    centre = ops.minimum(ops.floor(u * hw), hw - 1.0)
    return box_around(centre, cutmix_half(lam0, mixed, hw, ops), hw, ops)


def cutmix_half(lam0, mixed, hw, ops: Any = NUMPY_OPS):
    """The half-sides ``floor(S * sqrt(1 - lam0) / 2)`` of CutMix's box (float32 whole numbers; 0
    where ``mixed`` is 0.0), as the reference code's ``cut // 2``."""
    # floor(floor(x) / 2) == floor(x / 2), and halving is exact in binary: folding the 0.5 into
    # the per-sample factor gives the reference's half-sides bit for bit with one node less.
    return ops.floor(hw * ops.vec(ops.sqrt(1.0 - lam0) * (mixed * 0.5)))


def box_around(centre, half, hw, ops: Any = NUMPY_OPS):
    """The box ``centre -/+ half`` clipped to the image (float32 whole numbers ``(rows, columns)``
    each; ``hw`` is ``(H, W)``) and its lambda: ``lo``, ``hi``, ``size`` and ``lam``. CutMix's
    centre is drawn (:func:`cutmix_box`); SaliencyMix's is the partner's saliency peak
    (:func:`dali_cutmix.paste.centred_on_peaks`, with ``ops`` on torch tensors)."""
    lo = ops.clip(centre - half, 0.0, hw)
    hi = ops.clip(centre + half, 0.0, hw)
    size = hi - lo
    return lo, hi, size, area_lam(size, hw, ops)


def area_lam(size, hw, ops: Any = NUMPY_OPS):
    """``1 - h * w / (H * W)``: the own label's weight when a box of ``size`` (float32 ``(h, w)``)
    is pasted into an image of ``hw``, in the float32 operations every backend repeats."""
    return 1.0 - ops.item(size, 0) * ops.item(size, 1) / (ops.item(hw, 0) * ops.item(hw, 1))


def minmax_box(u, mixed, hw, minmax, ops: Any = NUMPY_OPS):
    """timm's ``rand_bbox_minmax`` from uniform draws: each side uniform over ``[floor(S * min),
    floor(S * max))`` (independently: a random aspect), the corner uniform over the positions that
    keep the box inside.

    u: float32 ``U[0, 1)^4`` a unit (sides, then corner).
    mixed: float32 1.0 or 0.0 a unit; 0.0 gives an empty box.
    hw: float32 ``(H, W)``.
    minmax: ``(min, max)`` fractions of the sides.
    ops: the array namespace (``NUMPY_OPS``, or ``DALI_OPS`` on DataNodes).
    Returns ``lo``, ``hi``, ``size`` (float32 whole numbers, as :func:`cutmix_box`) and ``lam``.
    """
    low, high = ops.floor(hw * float(minmax[0])), ops.floor(hw * float(minmax[1]))
    size = (low + ops.floor(ops.part(u, 0, 2) * (high - low))) * ops.vec(mixed)
    return placed_box(ops.part(u, 2, 4), size, hw, ops)


def resize_box(u, mixed, hw, scale, ops: Any = NUMPY_OPS):
    """ResizeMix's box (Qin et al. 2020; OpenMixup's ``resizemix``): both sides scaled by one
    ``tau ~ U[scale[0], scale[1])`` (the image's aspect kept, so the whole partner fits it
    undistorted), ``floor(tau * H)`` by ``floor(tau * W)``, the corner uniform over the positions
    that keep the box inside.

    u: float32 ``U[0, 1)^3`` a unit (tau, then corner). mixed, hw, ops: as :func:`minmax_box`.
    scale: ``(min, max)``. Returns ``lo``, ``hi``, ``size`` and ``lam``, as :func:`cutmix_box`.
    """
    # the range's ends are float32 (the native operator's arguments), so its width is a float32 difference
    lo32, hi32 = np.float32(scale[0]), np.float32(scale[1])
    tau = ops.part(u, 0, 1) * float(hi32 - lo32) + float(lo32)
    # float32 rounding may reach the range's end; the range is half-open (and a box never fills the image)
    below = float(np.nextafter(hi32, np.float32(0)))
    size = ops.floor(hw * ops.minimum(tau, below)) * ops.vec(mixed)
    return placed_box(ops.part(u, 1, 3), size, hw, ops)


def placed_box(u, size, hw, ops: Any = NUMPY_OPS):
    """A box of ``size`` (float32 ``(h, w)``, whole numbers) with its corner uniform over the
    positions that keep it inside ``hw`` (``u``: float32 ``U[0, 1)^2`` a unit); ``lo``, ``hi``,
    ``size`` and ``lam``."""
    lo = ops.minimum(ops.floor(u * (hw - size + 1.0)), hw - size)
    return lo, lo + size, size, area_lam(size, hw, ops)


def mix_from_draws(draws: SimpleNamespace, hw, config: MixConfig, ops: Any = NUMPY_OPS):
    """Box, lambda and MixUp flag of each unit from its uniform draws; NumPy or DALI.

    draws: ``mix`` and ``cut`` coins (float32 1/0: mixed at all; CutMix rather than MixUp; ``cut``
        may be the constant 1.0 or 0.0), ``lam_cut`` and ``lam_mix`` (the Beta draws), ``u`` (box
        placement), one row a unit (:func:`draw_mix`).
    hw: float32 ``(H, W)``.
    config: the recipe.
    ops: the array namespace (``NUMPY_OPS``, or ``DALI_OPS`` on DataNodes).
    Returns ``lo``, ``hi``, ``size``, ``lam`` and ``blend`` (1.0 where MixUp applies; None when
    MixUp is off), float32.
    """
    always_cut = isinstance(draws.cut, float) and draws.cut == 1.0
    cut = draws.mix if always_cut else draws.mix * draws.cut
    if config.centre == "saliency":  # relative to the centre the pixels give (CutMixParams.salient)
        hi = cutmix_half(draws.lam_cut, cut, hw, ops)
        lo, size = hi * -1.0, hi * 2.0
        lam = area_lam(size, hw, ops)
    elif config.paste == "resize":
        lo, hi, size, lam = resize_box(draws.u, cut, hw, config.resize_scale, ops)
    elif config.minmax is not None:
        lo, hi, size, lam = minmax_box(draws.u, cut, hw, config.minmax, ops)
    elif config.cutmix:
        lo, hi, size, lam = cutmix_box(draws.lam_cut, draws.u, cut, hw, ops)
    else:  # MixUp only: empty boxes
        lo = hi = size = ops.vec(draws.mix) * hw * 0.0
        lam = draws.mix * 0.0 + 1.0
    if not config.mixup:
        return lo, hi, size, lam, None
    blend = draws.mix - cut  # mixed, and not by a box
    # Exact either way: a CutMix sample keeps its box lambda, a MixUp sample takes lam_mix.
    return lo, hi, size, lam * (1.0 - blend) + draws.lam_mix * blend, blend


def blend_weight(lam, blend):
    """The own image's weight in the blend: ``lam`` (float32 a sample) where ``blend`` (1.0 or 0.0
    a sample, same kind: NumPy, torch or DataNode) is 1, exactly 1.0 otherwise."""
    return lam * blend + (1.0 - blend)


def sample_mix(batch_size: int, height: int, width: int, config: MixConfig, rng=None, *, prob=None) -> CutMixParams:
    """Draw the parameters of one mixed batch by the recipe: ``mode="batch"``, one lambda, one box
    and one mix/no-mix coin for the whole batch (the paper); ``"elem"``, each sample its own.
    Partners: a permutation of the batch (a derangement with ``no_self``).

    batch_size, height, width: the batch's B, H and W (H and W at least 2).
    config: the recipe.
    rng: a NumPy Generator, a seed, or None (fresh entropy).
    prob: None, or (B,) float32 chances that replace ``config.prob`` (as in :func:`draw_mix`).
    Returns :class:`CutMixParams` (NumPy arrays).
    """
    check_image_size(height, width)
    draws, perm = draw_mix(batch_size, config, rng, prob=prob)
    lo, hi, _, lam, blend = mix_from_draws(draws, np.array([height, width], np.float32), config)

    def per_sample(x: np.ndarray) -> np.ndarray:
        return np.broadcast_to(x, (batch_size,) + x.shape[1:])

    boxes = per_sample(np.concatenate([lo, hi], axis=1)).astype(np.int32)
    blend = None if blend is None else per_sample(blend) > 0
    return CutMixParams(perm=perm, boxes=boxes, lam=per_sample(lam).astype(np.float32), blend=blend,
                        resized=config.paste == "resize", salient=config.centre == "saliency")  # fmt: skip


def draw_mix(batch_size: int, config: MixConfig, rng=None, *, prob=None) -> tuple[SimpleNamespace, np.ndarray]:
    """The random numbers of one batch, before the image size enters.

    batch_size: B, an int >= 1.
    config: the recipe.
    rng: a NumPy Generator, a seed, or None (fresh entropy).
    prob: None, or (B,) float32 that replaces ``config.prob``: in ``"elem"`` mode sample ``i`` is
        mixed with probability ``prob[i]``; in ``"batch"`` mode the batch with ``prob[0]``.
    Returns the draws of :func:`mix_from_draws` (one row a unit: 1 in ``"batch"`` mode, B in
    ``"elem"``) and the partners, (B,) int64.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    rng = np.random.default_rng(rng)
    n = 1 if config.mode == "batch" else batch_size
    both = config.cutmix and config.mixup
    if prob is None:
        prob = np.float32(config.prob)
    else:
        prob = np.asarray(prob, np.float32).reshape(-1)
        if prob.shape != (batch_size,):
            raise ValueError(f"prob must be {batch_size} values, got {prob.tolist()}")
        for p in prob[:n]:
            check_prob(p, "prob")
        prob = prob[:n]

    def coin(p) -> np.ndarray:
        return (rng.random(n) < p).astype(np.float32)

    def beta(a: float, fallback: float) -> np.ndarray:
        return rng.beta(a, a, n).astype(np.float32) if a > 0 else np.full(n, fallback, np.float32)

    draws = SimpleNamespace(
        mix=coin(prob),
        cut=coin(config.switch_prob) if both else np.full(n, float(config.cutmix), np.float32),
        lam_cut=beta(config.alpha, 1.0),
        lam_mix=beta(config.mixup_alpha, 1.0),
        u=rng.random((n, U_DRAWS[config.paste == "resize", config.minmax is not None]), dtype=np.float32),
    )
    perm = derangement(rng, batch_size) if config.no_self else rng.permutation(batch_size)
    return draws, perm


def derangement(rng: np.random.Generator, n: int) -> np.ndarray:
    """A uniform random permutation without fixed points (rejection; ~e tries); n == 1 is [0]."""
    if n == 1:
        return np.zeros(1, dtype=np.int64)
    while True:
        perm = rng.permutation(n)
        if (perm != np.arange(n)).all():
            return perm
