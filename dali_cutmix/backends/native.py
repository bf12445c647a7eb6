"""Backend ``native`` (CPU): one compiled DALI operator, ``fn.dali_cutmix.mix``
(:mod:`dali_cutmix.plugin`, ``csrc/mix_op.cc``). It draws the parameters itself, seeded per batch
by one DALI draw (the pipeline's seed governs it, DALI's checkpoints capture it: the operator
holds no state), and writes each output pixel once, from the own image or the partner's, doing
``normalize``'s work (mean/std, flip, HWC -> CHW) in the same pass."""

from __future__ import annotations

import os
from dataclasses import fields

import nvidia.dali.fn as fn
from nvidia.dali import types

from ..normalize import Normalize
from ..recipe import MixConfig
from .graph import Params, is_node

FUSES_NORMALIZE = True
FUSES_RESIZE = True


def build(images, labels, config: MixConfig, *, prob, layout: str, normalize: Normalize | None, size=None,
          resize: bool = False):  # fmt: skip
    """``images, labels -> images (normalised when asked), labels_b, Params``. ``size`` is not
    needed (the operator reads the CPU batch's shapes itself) unless ``resize``: then the operator
    resizes each image to it in the same pass."""
    from .. import plugin  # here, so that `python -m dali_cutmix.plugin` runs the module once

    plugin.load()
    args = _recipe_args(config)
    if os.environ.get("DALI_CUTMIX_ISA"):  # one compiled copy by name, for measuring them side by side
        args["isa"] = os.environ["DALI_CUTMIX_ISA"]
    if resize:
        args["size"] = size if is_node(size) else [int(v) for v in size]
    elif size is not None and not is_node(size):
        args["expect_size"] = [int(v) for v in size]  # the size hint, checked against the batch
    if normalize is not None:
        if normalize.fp16:
            raise ValueError("float16 output is for the GPU; the CPU operator writes float32")
        args.update(mirror=normalize.mirror, output_layout=normalize.output_layout)
        if normalize.uint8:
            args.update(dtype=types.UINT8)
        else:
            args.update(
                mean=[float(v) for v in normalize.mean], std=[float(v) for v in normalize.std], dtype=types.FLOAT
            )
    entropy = fn.random.uniform(range=[0.0, 1.0], shape=[2])
    inputs = [images, labels, entropy] + ([prob] if prob is not None else [])
    mixed, labels_b, lam, perm, boxes, blend = fn.dali_cutmix.mix(*inputs, **args)
    # The operator places SaliencyMix's boxes itself: its boxes are placed ones (Params.salient False).
    return mixed, labels_b, Params(perm, boxes, lam, blend if config.mixup else None, resized=config.paste == "resize")


# Recipe fields the pipeline applies, not the operator (a schedule arrives as the ``prob`` input).
NOT_OPERATOR_ARGS = ("prob_schedule", "off_epoch")


def _recipe_args(config: MixConfig) -> dict:
    """The operator's arguments: the recipe's fields under their own names (a field the operator
    does not know is an error when the pipeline is built)."""
    args = {}
    for f in fields(config):
        value = getattr(config, f.name)
        if f.name in NOT_OPERATOR_ARGS or value is None:
            continue
        if isinstance(value, tuple):
            value = [float(v) for v in value]
        elif f.type.startswith("float"):  # DALI's float arguments take floats, not ints
            value = float(value)
        args[f.name] = value
    return args
