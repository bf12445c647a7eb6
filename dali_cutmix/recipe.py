"""The mixing recipe, :class:`MixConfig`, and the rules every recipe and chance of mixing
obeys. The options follow timm's ``Mixup``: CutMix (Yun et al., ICCV 2019, arXiv:1905.04899) and
MixUp (Zhang et al., ICLR 2018) each with its alpha, ``switch_prob`` choosing one per batch or per
sample, ``minmax`` box sides, and partners that are never the sample itself."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import UserError
from .schedule import schedule_steps, value_at

MODES = ("batch", "elem")
LAYOUTS = ("HWC", "CHW")
PASTES = ("cut", "resize")
CENTRES = ("random", "saliency")


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
    paste: ``"cut"`` (CutMix: the box holds the partner's pixels at the same place) or
        ``"resize"`` (ResizeMix, Qin et al. 2020, arXiv:2012.11101: the box holds the partner's
        whole image, resampled into it); lambda is the pasted area's share either way.
    resize_scale: ``(min, max)``: with ``paste="resize"`` the box's sides are ``tau * H`` by
        ``tau * W``, ``tau ~ U[min, max)`` (the paper's 0.1 and 0.8; ``alpha`` is not used).
    centre: where CutMix's box is centred: ``"random"`` (uniform over the pixels, the paper) or
        ``"saliency"`` (SaliencyMix, Uddin et al., ICLR 2021, arXiv:2006.01791: on the peak of the
        partner's saliency map, :mod:`dali_cutmix.saliency`; the box is then clipped to the image
        as CutMix's is, so lambda, the pasted share, follows from the pixels). Needs CutMix's
        ``alpha`` box: not with ``minmax`` or ``paste="resize"``.
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
    paste: str = "cut"
    resize_scale: tuple[float, float] = (0.1, 0.8)
    centre: str = "random"

    def __post_init__(self) -> None:
        for name in ("alpha", "mixup_alpha"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
                raise RecipeError(name, "must be a finite number >= 0", value)
        check_prob(self.prob, "prob")
        check_prob(self.switch_prob, "switch_prob")
        try:
            schedule = schedule_steps(self.prob_schedule, float, "prob_schedule")
        except UserError as e:
            raise RecipeError("prob_schedule", str(e).removeprefix("prob_schedule "), self.prob_schedule) from None
        for _, p in schedule:
            check_prob(p, "prob_schedule")
        object.__setattr__(self, "prob_schedule", schedule)  # normalised once: sorted pairs
        if self.off_epoch is not None and (isinstance(self.off_epoch, bool) or not isinstance(self.off_epoch, int)
                                           or self.off_epoch < 0):  # fmt: skip
            raise RecipeError("off_epoch", "must be an epoch >= 0 or None", self.off_epoch)
        if self.mode not in MODES:
            raise RecipeError("mode", f"must be one of {MODES}", self.mode)
        if self.minmax is not None:
            check_fractions(self.minmax, "minmax")
        if self.paste not in PASTES:
            raise RecipeError("paste", f"must be one of {PASTES}", self.paste)
        object.__setattr__(
            self, "resize_scale", check_fractions(self.resize_scale, "resize_scale")
        )  # a tuple again after JSON
        if self.paste == "resize" and self.minmax is not None:
            raise RecipeError("paste", "'resize' takes its box's scale from resize_scale, not minmax", self.paste)
        if self.centre not in CENTRES:
            raise RecipeError("centre", f"must be one of {CENTRES}", self.centre)
        if self.centre == "saliency" and (self.alpha == 0 or self.minmax is not None or self.paste != "cut"):
            raise RecipeError("centre", "'saliency' centres CutMix's alpha box: it needs alpha > 0, no minmax and "
                                        "paste 'cut'", self.centre)  # fmt: skip
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
        return value_at(self.prob_schedule, epoch, self.prob)

    @property
    def cutmix(self) -> bool:
        """Whether boxes are pasted (CutMix, or ResizeMix with ``paste="resize"``)."""
        return self.alpha > 0 or self.minmax is not None or self.paste == "resize"

    @property
    def mixup(self) -> bool:
        return self.mixup_alpha > 0


def check_fractions(value, field: str) -> tuple[float, float]:
    """The rule for a ``(min, max)`` pair of fractions of the image's sides: two numbers with
    ``0 < min < max <= 1``, in float32 too (the box is computed in float32, and the native operator
    takes them as float32); ``RecipeError`` naming ``field``. Returns them as floats."""
    try:
        if any(isinstance(v, (bool, str)) for v in value):
            raise TypeError
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        lo = hi = float("nan")
    if not 0.0 < lo < hi <= 1.0:
        raise RecipeError(field, "must be (min, max) with 0 < min < max <= 1", value)
    lo32, hi32 = np.float32(lo), np.float32(hi)  # in (0, 1]: no overflow
    if not 0.0 < lo32 < hi32 <= 1.0:
        rounded = f"(they are {float(lo32)!r} and {float(hi32)!r} in float32)"
        raise RecipeError(field, f"must be (min, max) with 0 < min < max <= 1 in float32 too {rounded}", value)
    return lo, hi


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
