"""Backend ``ops`` (CPU): DALI's stock operators only, nothing compiled and no Python touching
pixels: ``batch_permutation`` and ``random.*`` draws, the box formula
:func:`dali_cutmix.sampling.mix_from_draws` evaluated on DataNodes, ``permute_batch``, ``slice`` and one
``multi_paste``: about 40 operators, each with a fixed cost per batch on a CPU.

It refuses the GPU (``dali_cutmix.ops.REFUSED``; docs/DESIGN.md).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import NamedTuple

import numpy as np
import nvidia.dali.fn as fn
from nvidia.dali import types
from nvidia.dali.data_node import DataNode

from ..normalize import Normalize
from ..recipe import MixConfig
from ..sampling import blend_weight, mix_from_draws
from .graph import DALI_OPS, Params, check_shapes, is_node

FUSES_NORMALIZE = False
FUSES_RESIZE = False


def build(images, labels, config: MixConfig, *, prob, layout: str, normalize: Normalize | None, size=None):
    """``images, labels -> images, labels_b, Params`` (``normalize`` is applied by the caller);
    ``size`` (two ints) is checked against the batch's shape (the batch is on the CPU, where
    reading its shapes costs no wait)."""
    sampled = ops_params(images, config, layout=layout, prob=prob, expect=None if is_node(size) else size)
    mixed = paste_ops(images, sampled, layout=layout)
    return mixed, fn.permute_batch(labels, indices=sampled.params.perm), sampled.params


class Sampled(NamedTuple):
    """:class:`Params` plus what the stock paste needs: ``start``, ``size`` (int32 ``(y1, x1)``
    and ``(h, w)`` of each sample's box) and ``hw`` (int32, the images' ``(H, W)``)."""

    params: Params
    start: DataNode
    size: DataNode
    hw: DataNode


def ops_params(images, config: MixConfig, *, layout: str, prob: DataNode | None = None, expect=None) -> Sampled:
    """Draw the partners, boxes and blends of a batch with DALI's random operators, per
    receiving sample (so a per-sample ``prob`` is the receiver's), and evaluate the box formula
    :func:`dali_cutmix.sampling.mix_from_draws` on DataNodes."""
    perm = fn.batch_permutation(no_fixed_points=config.no_self)
    # The shape check (one shape, >= 2x2) is the one thing stock operators cannot say in words.
    hw = fn.python_function(
        images.shape(device="cpu"), function=_UniformHW(layout, expect), batch_processing=True, output_layouts=""
    )

    def coin(p):
        # Integer 0/1: DALI's arithmetic promotes it to float32 exactly where it meets a float.
        return fn.random.coin_flip(probability=p)

    def beta(a: float, fallback: float):
        return fn.random.beta(alpha=float(a), beta=float(a)) if a > 0 else fallback

    draws = {
        "mix": coin(prob if prob is not None else float(config.prob)),
        "cut": fn.cast(coin(float(config.switch_prob)), dtype=types.FLOAT)  # keeps blend float
        if config.cutmix and config.mixup
        else float(config.cutmix),
        "lam_cut": beta(config.alpha if config.minmax is None else 0.0, 1.0),
        "lam_mix": beta(config.mixup_alpha, 1.0),
        "u": fn.random.uniform(range=[0.0, 1.0], shape=[4 if config.minmax else 2]),
    }
    if config.mode == "batch":
        # Every sample takes sample 0's draws: one box and one coin for the batch.
        first = perm * 0
        draws = {k: fn.permute_batch(d, indices=first) if is_node(d) else d for k, d in draws.items()}
    lo, hi, size, lam, blend = mix_from_draws(SimpleNamespace(**draws), hw, config, ops=DALI_OPS)

    def int32(x):
        return fn.cast(x, dtype=types.INT32)

    params = Params(perm, int32(fn.cat(lo, hi)), lam, blend)
    return Sampled(params, int32(lo), int32(size), int32(hw))


class _UniformHW:
    """The batch's one (H, W), checked: uniform, >= 2x2, and ``expect`` when given (the size hint)."""

    def __init__(self, layout: str, expect=None):
        self.layout, self.expect = layout, None if expect is None else tuple(int(v) for v in expect)

    def __call__(self, shapes):
        found = tuple(int(v) for v in check_shapes(shapes, self.layout))
        if self.expect is not None and found != self.expect:
            raise ValueError(f"cutmix(size={self.expect}) got images of {found[0]}x{found[1]} ({self.layout}); "
                             f"resize or crop to that size first, or leave size out")  # fmt: skip
        hw = np.array(found, np.float32)
        return [hw.copy() for _ in shapes]


def paste_ops(images, sampled: Sampled, *, layout: str):
    """Each sample's own pixels with its partner's box pasted in; DALI's CPU operators only.

    The partners are gathered whole (``permute_batch``), each receiver's box is sliced out of its
    partner, and one ``multi_paste`` writes the own (or MixUp-blended) image and the slice; the
    paste sizes are relative (``shapes_rel`` of 1: each source in full), so the only per-sample
    argument is where the slice lands.
    """
    params = sampled.params
    if layout == "CHW":
        # multi_paste is HWC-only (its FHWC path fails on the CPU in DALI 2.4), so go round.
        images = fn.transpose(images, perm=[1, 2, 0], output_layout="HWC")
    partners = fn.permute_batch(images, indices=params.perm)
    received = fn.slice(partners, sampled.start, sampled.size, axes=[0, 1])
    base = images
    if params.blend is not None:
        # A CutMix or unmixed sample has weight exactly 1.0, so its blend is its own image bit
        # for bit; MixUp samples have empty boxes, so the paste below leaves them as blended.
        # DALI's CPU cast rounds half away from zero, like blend_images.
        w = blend_weight(params.lam, params.blend)
        base = fn.cast_like(images * w + partners * (1.0 - w), images)
    mixed = fn.multi_paste(
        base,
        received,
        in_anchors=_ZERO_ANCHORS,
        out_anchors=params.boxes[0:2] * types.Constant(_SECOND_ROW),  # [[0, 0], [y1, x1]]
        shapes_rel=_FULL_SHAPES,
        output_size=sampled.hw,
    )
    if layout == "CHW":
        mixed = fn.transpose(mixed, perm=[2, 0, 1], output_layout="CHW")
    return mixed


_ZERO_ANCHORS = np.zeros((2, 2), dtype=np.int32)
_SECOND_ROW = np.array([[0, 0], [1, 1]], dtype=np.int32)  # made a Constant in the graph: checkpointable
_FULL_SHAPES = np.ones((2, 2), dtype=np.float32)
