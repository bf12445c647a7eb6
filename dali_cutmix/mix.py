"""CutMix (and MixUp) math: sample the parameters, then apply them (NumPy or torch).

CutMix (Yun et al., ICCV 2019, arXiv:1905.04899) pastes a rectangle of a partner image into each
image and mixes the labels in proportion to the area. Partners are a random permutation of the
batch, as in the reference code (clovaai/CutMix-PyTorch). The recipe options follow timm's
``Mixup``: MixUp (Zhang et al., ICLR 2018) with its own alpha, ``switch_prob`` choosing CutMix or
MixUp per batch or per sample, ``minmax`` box sides, and partners that are never the sample itself.

The split follows torchvision's v2 transforms: :func:`sample_mix` draws every random number
and returns a frozen :class:`CutMixParams`; :func:`apply_cutmix` is pure. The box formula,
:func:`cutmix_box`, is written once against a tiny array namespace so that the same lines run on
NumPy arrays here and on DALI DataNodes inside a pipeline (see ``dali_cutmix.ops``): the DALI
graph and this module compute bit-identical boxes from the same draws.

Conventions: ``H`` is the image height and ``W`` its width, everywhere. Boxes are half-open
``(y1, x1, y2, x2)``: rows ``y1:y2`` and columns ``x1:x2``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from types import SimpleNamespace
from typing import Any

import numpy as np

from .errors import UserError

MODES = ("batch", "elem")
LAYOUTS = ("HWC", "CHW")

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


@dataclass(frozen=True)
class CutMixParams:
    """Everything random about one mixed batch.

    perm:  (B,) int64, sample ``i`` mixes with sample ``perm[i]``.
    boxes: (B, 4) int32, half-open ``(y1, x1, y2, x2)``; empty where no box is pasted.
    lam:   (B,) float32, the weight of the sample's own label: ``1 - box_area / (H * W)`` for CutMix,
           the MixUp weight for blended samples, 1.0 where nothing was mixed.
    blend: (B,) bool or None, True where the sample is a MixUp blend
           ``lam * own + (1 - lam) * partner`` (rounded for integer images) instead of a paste.
    """

    perm: np.ndarray
    boxes: np.ndarray
    lam: np.ndarray
    blend: np.ndarray | None = None

    def __post_init__(self) -> None:
        B = len(self.perm)
        blend_ok = self.blend is None or np.shape(self.blend) == (B,)
        if self.boxes.shape != (B, 4) or self.lam.shape != (B,) or not blend_ok:
            raise ValueError(
                f"CutMixParams: expected perm (B,), boxes (B, 4), lam (B,), blend (B,) or None, got "
                f"{self.perm.shape}, {self.boxes.shape}, {self.lam.shape}, {np.shape(self.blend)}"
            )


class RecipeError(UserError):
    """A recipe that cannot be: ``field`` (None when the fields only clash together), the ``rule``
    it breaks and the ``value`` given, so a caller can name its own flag for the field."""

    def __init__(self, field: str | None, rule: str, value=None):
        self.field, self.rule, self.value = field, rule, value
        super().__init__(rule if field is None else f"{field} {rule}, got {value!r}")


@dataclass(frozen=True)
class MixConfig:
    """A mixing recipe, checked once; named like timm's ``Mixup`` where it has the option.

    alpha: CutMix's Beta(alpha, alpha), 0 turns CutMix off (unless ``minmax`` is set).
    mixup_alpha: MixUp's Beta, 0 (the default) turns MixUp off.
    prob: the chance that a batch (``mode="batch"``) or a sample (``"elem"``) is mixed at all.
    switch_prob: with both on, the chance of CutMix rather than MixUp.
    minmax: ``(min, max)`` box sides as fractions of H and W, drawn independently (a random
        aspect), placed uniformly inside the image; lambda follows from the box.
    no_self: partners are never the sample itself (a permutation without fixed points).
    prob_schedule: ``(epoch, prob)`` pairs (or a dict): ``prob`` from that epoch on, replacing
        ``prob`` (piecewise constant); ``off_epoch``: no mixing from that epoch on (timm's
        ``mixup_off_epoch``). :meth:`prob_at` gives an epoch's chance; the pipelines feed it per
        batch, the loop mixer per epoch.
    """

    alpha: float = 1.0
    prob: float = 1.0
    mode: str = "batch"
    mixup_alpha: float = 0.0
    switch_prob: float = 0.5
    minmax: tuple[float, float] | None = None
    no_self: bool = False
    prob_schedule: tuple[tuple[int, float], ...] = ()
    off_epoch: int | None = None

    def __post_init__(self) -> None:
        for name in ("alpha", "mixup_alpha"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
                raise RecipeError(name, "must be a finite number >= 0", value)
        check_prob(self.prob, "prob")
        check_prob(self.switch_prob, "switch_prob")
        pairs = self.prob_schedule.items() if isinstance(self.prob_schedule, dict) else self.prob_schedule
        try:
            schedule = tuple(sorted((int(epoch), float(p)) for epoch, p in pairs))
        except (TypeError, ValueError):
            raise RecipeError("prob_schedule", "must be (epoch, prob) pairs", self.prob_schedule) from None
        for epoch, p in schedule:
            if epoch < 0:
                raise RecipeError("prob_schedule", "must have epochs >= 0", self.prob_schedule)
            check_prob(p, "prob_schedule")
        object.__setattr__(self, "prob_schedule", schedule)  # normalised once: sorted pairs
        if self.off_epoch is not None and (isinstance(self.off_epoch, bool) or not isinstance(self.off_epoch, int)
                                           or self.off_epoch < 0):  # fmt: skip
            raise RecipeError("off_epoch", "must be an epoch >= 0 or None", self.off_epoch)
        if self.mode not in MODES:
            raise RecipeError("mode", f"must be one of {MODES}", self.mode)
        if self.minmax is not None:
            lo, hi = self.minmax
            if not 0.0 < lo < hi <= 1.0:
                raise RecipeError("minmax", "must be (min, max) with 0 < min < max <= 1", self.minmax)
        if not (self.cutmix or self.mixup):
            raise RecipeError(None, "nothing to mix: alpha and mixup_alpha are both 0 and minmax is not set")

    @property
    def scheduled(self) -> bool:
        """Whether the chance of mixing changes with the epoch."""
        return bool(self.prob_schedule) or self.off_epoch is not None

    def prob_at(self, epoch: int) -> float:
        """The chance of mixing in ``epoch`` (from 0)."""
        if self.off_epoch is not None and epoch >= self.off_epoch:
            return 0.0
        prob = self.prob
        for start, p in self.prob_schedule:
            if epoch >= start:
                prob = p
        return prob

    @property
    def cutmix(self) -> bool:
        return self.alpha > 0 or self.minmax is not None

    @property
    def mixup(self) -> bool:
        return self.mixup_alpha > 0


def check_prob(value, field: str) -> None:
    """The rule for every chance of mixing: a number in [0, 1]; ``RecipeError`` naming ``field``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not 0.0 <= value <= 1.0:
        raise RecipeError(field, "must be a number in [0, 1]", value)


def check_layout(layout: str) -> None:
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

    Returns ``lo`` (``y1, x1``), ``hi`` (``y2, x2``) and ``size`` (``h, w``), whole numbers in
    float32, and ``lam``. (In DALI every arithmetic node is an operator of its own, with a fixed
    cost per batch, so the formula is kept to few nodes.)
    """
    # floor(floor(x) / 2) == floor(x / 2), and halving is exact in binary: folding the 0.5 into
    # the per-sample factor gives the reference's half-sides bit for bit with one node less.
    half_cut = ops.vec(ops.sqrt(1.0 - lam0) * (mixed * 0.5))
    half = ops.floor(hw * half_cut)
    centre = ops.minimum(ops.floor(u * hw), hw - 1.0)
    lo = ops.clip(centre - half, 0.0, hw)
    hi = ops.clip(centre + half, 0.0, hw)
    size = hi - lo
    area = ops.item(size, 0) * ops.item(size, 1)
    lam = 1.0 - area / (ops.item(hw, 0) * ops.item(hw, 1))
    return lo, hi, size, lam


def minmax_box(u, mixed, hw, minmax, ops: Any = NUMPY_OPS):
    """timm's ``rand_bbox_minmax`` from uniform draws ``u ~ U[0, 1)^4`` (sides, then corner).

    Each side is uniform over ``[floor(S * min), floor(S * max))`` (independently: a random aspect),
    the corner uniform over the positions that keep the box inside; empty where ``mixed`` is 0.
    """
    low, high = ops.floor(hw * float(minmax[0])), ops.floor(hw * float(minmax[1]))
    size = (low + ops.floor(ops.part(u, 0, 2) * (high - low))) * ops.vec(mixed)
    lo = ops.minimum(ops.floor(ops.part(u, 2, 4) * (hw - size + 1.0)), hw - size)
    area = ops.item(size, 0) * ops.item(size, 1)
    return lo, lo + size, size, 1.0 - area / (ops.item(hw, 0) * ops.item(hw, 1))


def mix_from_draws(draws: SimpleNamespace, hw, config: MixConfig, ops: Any = NUMPY_OPS):
    """Box, lambda and MixUp flag of each sample from its uniform draws; NumPy or DALI.

    ``draws``: ``mix`` and ``cut`` coins (1/0: mixed at all; CutMix rather than MixUp; ``cut`` may
    be the constant 1.0 or 0.0), ``lam_cut`` and ``lam_mix`` (the Beta draws) and ``u`` (box
    placement). Returns ``lo``, ``hi``, ``size``, ``lam`` and ``blend`` (1.0 where MixUp
    applies, None when MixUp is off), float32.
    """
    always_cut = isinstance(draws.cut, float) and draws.cut == 1.0
    cut = draws.mix if always_cut else draws.mix * draws.cut
    if config.minmax is not None:
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
    """The own image's weight in the blend: ``lam`` for MixUp samples, exactly 1.0 otherwise."""
    return lam * blend + (1.0 - blend)


def sample_mix(batch_size: int, height: int, width: int, config: MixConfig, rng=None, *, prob=None) -> CutMixParams:
    """Draw the parameters of one mixed batch of ``H x W`` images by the recipe ``config``.

    ``mode="batch"``: one lambda, one box and one mix/no-mix coin for the whole batch (the paper);
    ``mode="elem"``: each sample draws its own. ``rng``: a NumPy Generator, a seed, or None (fresh
    entropy). ``prob``: None, or a per-sample float32 array that replaces ``config.prob`` (as in
    :func:`draw_mix`). Partners: a permutation of the batch (a derangement with ``no_self``).
    """
    check_image_size(height, width)
    draws, perm = draw_mix(batch_size, config, rng, prob=prob)
    lo, hi, _, lam, blend = mix_from_draws(draws, np.array([height, width], np.float32), config)

    def per_sample(x: np.ndarray) -> np.ndarray:
        return np.broadcast_to(x, (batch_size,) + x.shape[1:])

    boxes = per_sample(np.concatenate([lo, hi], axis=1)).astype(np.int32)
    blend = None if blend is None else per_sample(blend) > 0
    return CutMixParams(perm=perm, boxes=boxes, lam=per_sample(lam).astype(np.float32), blend=blend)


def draw_mix(batch_size: int, config: MixConfig, rng=None, *, prob=None) -> tuple[SimpleNamespace, np.ndarray]:
    """The random numbers of one batch, before the image size enters: the draws of
    :func:`mix_from_draws` (one row per unit: 1 in ``"batch"`` mode, ``batch_size`` in ``"elem"``)
    and the partners.

    ``prob`` (optional, ``(batch_size,)``) replaces ``config.prob`` per sample: in ``"elem"`` mode
    sample ``i`` is mixed with probability ``prob[i]``; in ``"batch"`` mode the batch is mixed with
    probability ``prob[0]`` (a per-epoch schedule gives every sample the same value).
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
        u=rng.random((n, 4 if config.minmax else 2), dtype=np.float32),
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


def box_rows_cols(boxes, height: int, width: int):
    """(B, H) and (B, W) bool: the rows and the columns of each sample's box. NumPy or torch."""
    if _is_torch(boxes):
        import torch

        rows = torch.arange(height, device=boxes.device)
        cols = torch.arange(width, device=boxes.device)
    else:
        rows, cols = np.arange(height), np.arange(width)
    y1, x1, y2, x2 = (boxes[:, k, None] for k in range(4))
    return (rows[None] >= y1) & (rows[None] < y2), (cols[None] >= x1) & (cols[None] < x2)


def apply_cutmix(images, labels, params: CutMixParams, layout: str = "HWC"):
    """Mix a batch with given parameters; pure, works on NumPy arrays and torch tensors.

    images: (B, H, W, C) for ``HWC`` or (B, C, H, W) for ``CHW``, any dtype; labels: (B, ...).
    Returns ``(mixed_images, labels_a, labels_b, lam)`` with ``labels_a = labels`` and
    ``labels_b = labels[perm]``; the inputs are not modified.
    """
    check_layout(layout)
    if images.ndim != 4 or len(images) != len(params.perm):
        raise ValueError(
            f"images must be a batch of {len(params.perm)} {layout} images, got shape {tuple(images.shape)}"
        )
    perm, boxes, lam, blend = params.perm, params.boxes, params.lam, params.blend
    if blend is not None and not blend.any():
        blend = None
    if _is_torch(images):
        import torch

        from .device import from_numpy

        # On CUDA through pinned memory torch owns, without blocking: no host sync in a step.
        perm, boxes = from_numpy(perm, images.device, torch.long), from_numpy(boxes, images.device)
        lam, blend = from_numpy(lam, images.device), from_numpy(blend, images.device, torch.bool)
    mixed = mix_images(images, perm, boxes, lam, blend, layout)
    return mixed, labels, labels[perm], lam


def mix_images(images, perm, boxes, lam, blend, layout: str, *, out=None):
    """The mixed batch from parameters of the same kind as ``images`` (NumPy, or torch on its
    device); ``blend`` may be None. Vectorised: nothing here reads a value back to the host, so on
    a GPU it queues kernels and returns (this is the python backend's GPU code, run by CI on the CPU).

    ``out`` (torch): a contiguous tensor of the images' size and dtype to gather the partners
    into; without MixUp the result is written there too.
    """
    H, W = spatial_size(tuple(images.shape[1:]), layout)
    B = images.shape[0]
    torch_ = _is_torch(images)
    if torch_:
        import torch

        # Gathered as (B, -1) rows, a memcpy per sample (gathering (B, H, W, C) uint8 runs an
        # element-wise kernel, 3-4x slower on a CPU).
        flat = torch.index_select(images.reshape(B, -1), 0, perm, out=None if out is None else out.view(B, -1))
        partners = flat.view(images.shape)
    else:
        partners = images[perm]
    rows, cols = box_rows_cols(boxes, H, W)  # (B, H), (B, W) bool
    if layout == "HWC":
        # Rows of W*C values: the masks broadcast along whole rows, never along the 3 channels
        # (a slow pattern on CPUs).
        C = images.shape[3]
        # expand + reshape, not repeat_interleave: nothing that could ask the device for a size.
        cols = cols[:, :, None].expand(B, W, C).reshape(B, W * C) if torch_ else np.repeat(cols, C, axis=1)
        own, other = images.reshape(B, H, W * C), partners.reshape(B, H, W * C)
        rows, cols = rows[:, :, None], cols[:, None, :]
    else:
        own, other = images, partners
        rows, cols = rows[:, None, :, None], cols[:, None, None, :]
    # Without MixUp nothing reads the partners after the paste, so it may write over them.
    mixed = _paste(own, other, rows, cols, reuse_other=blend is None).reshape(images.shape)
    if blend is not None:
        weight = blend_weight(lam, blend.float() if torch_ else blend.astype(np.float32))
        where = torch.where if torch_ else np.where
        mixed = where(blend[:, None, None, None], blend_images(mixed, partners, weight), mixed)
    return mixed


def _paste(own, other, rows, cols, reuse_other: bool = False):
    """``other`` where both ``rows`` and ``cols`` (broadcastable bool masks) hold, else ``own``;
    ``reuse_other``: torch may write the result over ``other``.

    torch on uint8: ``own + (other - own) * rows * cols`` in uint8, exact (arithmetic modulo 256),
    four in-place elementwise passes with no full-size mask: several times less CPU than
    ``torch.where``, and no new batch-sized buffer when ``other`` is reused (on a CPU a fresh one
    costs more in page faults than a pass over it).
    """
    if _is_torch(own):
        import torch

        if own.dtype == torch.uint8:
            diff = other.sub_(own) if reuse_other else torch.sub(other, own)
            return diff.mul_(rows.to(torch.uint8)).mul_(cols.to(torch.uint8)).add_(own)
        return torch.where(rows & cols, other, own)
    return np.where(rows & cols, other, own)


def blend_images(own, partners, w):
    """``w * own + (1 - w) * partners`` per sample in float32; integer images are rounded half
    away from zero (as DALI's cast does, so every backend agrees bit for bit) and clipped."""
    shape = (-1, 1, 1, 1)
    if _is_torch(own):
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


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


class LoopMixer:
    """CutMix (and MixUp) in the training loop, as the reference code does it: the loader gives
    plain batches and this mixes each one on its device after loading.

    The same recipe and sampler as in the pipeline (:func:`sample_mix`, then :func:`apply_cutmix`
    on the batch, CHW), drawn from a NumPy generator of its own; :meth:`state` and
    :meth:`load_state` carry that generator through checkpoints, so a resumed run mixes as an
    uninterrupted one. ``epoch`` per call gives the recipe's chance of mixing in that epoch.
    """

    def __init__(self, config: MixConfig, seed: int):
        self.config = config
        self.rng = np.random.default_rng(seed)

    def __call__(self, images, labels, epoch: int = 0):
        """``(B, C, H, W)`` images and ``(B,)`` labels -> ``images, labels_a, labels_b, lam``."""
        B, _, H, W = images.shape
        return apply_cutmix(images, labels, self.sample(B, H, W, epoch), "CHW")

    def sample(self, batch_size: int, height: int, width: int, epoch: int = 0) -> CutMixParams:
        """The parameters the next call mixes a batch of that size with (drawn: the generator moves on)."""
        config = replace(self.config, prob=self.config.prob_at(epoch), prob_schedule=(), off_epoch=None)
        return sample_mix(batch_size, height, width, config, self.rng)

    def state(self) -> str:
        return json.dumps(self.rng.bit_generator.state)

    def load_state(self, state: str) -> None:
        self.rng.bit_generator.state = json.loads(state)
