"""CutMix as a DALI graph fragment: ``images, labels -> images, labels_a, labels_b, lam``.

Use it inside any ``@pipeline_def``::

    images, labels_a, labels_b, lam = dali_cutmix.cutmix(images, labels, alpha=1.0)

Backends (``backend=``), all drawing from the pipeline's seed and captured by DALI's checkpoints:

* ``"native"``: on the CPU, one compiled DALI operator, ``fn.dali_cutmix.mix``
  (:mod:`dali_cutmix.plugin`, built from ``csrc/mix_op.cc``): it draws the parameters itself,
  seeded per batch by one DALI draw, and writes each output pixel once, from the own image or the
  partner's; given ``normalize=``, it also does crop_mirror_normalize's work (mean/std, flip, HWC
  -> CHW) in the same pass, so CutMix adds no pass over the data at all. On the GPU, DALI's own
  operators (the ``"ops"`` graph below, where data movement is cheap).
* ``"python"``: the parameters are drawn in Python with NumPy by :func:`dali_cutmix.mix.sample_mix`,
  the reference's own sampler, in one batch-level ``fn.python_function``. On the CPU the pixels are
  then written by the compiled operator (HWC input), or with NumPy when the plugin cannot be built
  or the layout is CHW: the two give the same bytes. On the GPU ``fn.dl_tensor_python_function``
  hands DLPack tensors to torch, which mixes on DALI's own CUDA stream (``synchronize_stream=False``).
* ``"ops"``: DALI's stock operators only, nothing compiled: ``fn.random.*`` draws, the box formula
  :func:`dali_cutmix.mix.cutmix_box` evaluated on DataNodes, ``fn.slice`` of each giving sample's
  box, ``fn.permute_batch`` to the receivers, ``fn.multi_paste``. About 40 operators: on a CPU
  each costs a fixed ~0.05-0.1 ms per batch, so this is the slow one there.

Given the same parameters, the backends' outputs are identical byte for byte, MixUp blends included
(computed in float32 and rounded half away from zero everywhere, as DALI's cast does).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from types import SimpleNamespace
from typing import Any, NamedTuple

import numpy as np
import nvidia.dali.fn as fn
import nvidia.dali.math as dmath
from nvidia.dali import types
from nvidia.dali.data_node import DataNode

from .mix import (
    MixConfig,
    blend_images,
    blend_weight,
    check_image_size,
    check_layout,
    draw_mix,
    mix_from_draws,
    mix_images,
    sample_mix,
    spatial_size,
)

BACKENDS = ("python", "native", "ops")

DALI_OPS = SimpleNamespace(
    sqrt=dmath.sqrt,
    floor=dmath.floor,
    minimum=dmath.min,
    clip=dmath.clamp,
    item=lambda x, k: x[k],
    part=lambda x, a, b: x[a:b],
    vec=lambda x: x,  # DALI broadcasts a per-sample scalar against a vector
)


@dataclass(frozen=True)
class Normalize:
    """crop_mirror_normalize's work on the mixed batch: ``(x - mean) / std`` per channel, a flip
    (``mirror``: a bool, or a per-sample DataNode such as ``fn.random.coin_flip()``) and the output
    layout. The native backend on the CPU does it in the same pass as the mix."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    mirror: Any = False
    fp16: bool = False
    output_layout: str = "CHW"

    def apply(self, images, *, crop: tuple[int, int] | None = None):
        """The stock operator, for the backends that mix in a pass of their own and for
        validation, which takes a centre ``crop`` (H, W) in the same pass."""
        return fn.crop_mirror_normalize(
            images,
            dtype=types.FLOAT16 if self.fp16 else types.FLOAT,
            output_layout=self.output_layout,
            mean=list(self.mean),
            std=list(self.std),
            mirror=self.mirror,
            **({"crop": crop} if crop else {}),
        )


def cutmix(
    images,
    labels,
    *,
    alpha: float = 1.0,
    prob: float = 1.0,
    mode: str = "batch",
    backend: str = "native",
    layout: str = "HWC",
    return_params: bool = False,
    normalize: Normalize | None = None,
    **recipe,
):
    """CutMix (optionally switching with MixUp) a uniformly shaped batch inside a DALI pipeline.

    Args:
        images: DataNode of ``HWC`` or ``CHW`` images (uint8 or float), CPU or GPU, all of one
            shape (crop or resize before). The output keeps dtype, layout, device and shape
            unless ``normalize`` is given.
        labels: DataNode of per-sample labels (CPU or GPU).
        alpha: ``lam ~ Beta(alpha, alpha)``.
        prob: probability that a batch (``mode="batch"``) or a sample (``mode="elem"``) is mixed;
            a number, or a float32 DataNode (one value per sample) for a schedule fed at run time.
        mode: ``"batch"`` draws one lambda and box for the batch, ``"elem"`` one per sample.
        backend: ``"native"``, ``"python"`` or ``"ops"`` (see the module docstring). ``"native"``
            on the CPU takes HWC uint8 or float32 images and needs the compiled plugin
            (:mod:`dali_cutmix.plugin`, built on first use).
        layout: ``"HWC"`` or ``"CHW"``.
        return_params: also return ``perm`` (int32 per sample) and ``boxes`` (int32 ``[4]``,
            ``y1, x1, y2, x2``), and ``blend`` (float32, 1.0 for MixUp samples) when MixUp is on,
            so the mix can be inspected or replayed.
        normalize: a :class:`Normalize` to apply to the mixed images (fused with the mix where
            the backend can).
        recipe: more of :class:`dali_cutmix.mix.MixConfig`: ``mixup_alpha`` (MixUp on when > 0),
            ``switch_prob``, ``minmax`` and ``no_self``.

    Returns:
        ``images, labels_a, labels_b, lam`` (``lam`` float32, the weight of ``labels_a``; 1.0 where
        nothing was mixed), then the parameters when ``return_params`` is true.
    """
    prob_node = prob if _is_node(prob) else None
    config = MixConfig(alpha=alpha, prob=1.0 if prob_node is not None else prob, mode=mode, **recipe)
    check_layout(layout)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    from . import plugin  # here, so that `python -m dali_cutmix.plugin` runs the module once

    cpu = images.device == "cpu"
    if cpu and backend == "native":
        if layout != "HWC":
            raise ValueError("backend 'native' on the CPU takes HWC images; use backend 'ops' or 'python' for CHW")
        plugin.load()
        entropy = fn.random.uniform(range=[0.0, 1.0], shape=[2])
        inputs = [images, labels, entropy] + ([prob_node] if prob_node is not None else [])
        return _fused(inputs, config, normalize, return_params, _recipe_args(config))
    if cpu and backend == "python":
        entropy = fn.random.uniform(range=[0.0, 1.0], shape=[4])
        draw_inputs = [entropy] + ([prob_node] if prob_node is not None else [])
        if layout == "HWC" and plugin.available():
            draws = fn.python_function(*draw_inputs, function=_PackedDraws(config), batch_processing=True)
            args = {**_recipe_args(config), "draws": draws}  # the recipe says which formula applies
            return _fused([images, labels], config, normalize, return_params, args)
        outputs = _python_cpu(images, labels, draw_inputs, config, layout, return_params)
    else:
        sampled = sample_params(images, config, layout=layout, prob=prob_node)
        apply = paste_native if backend != "python" else paste_python
        mixed = apply(images, sampled, layout=layout)
        labels_b = fn.permute_batch(labels, indices=sampled.perm)
        outputs = (mixed, labels, labels_b, sampled.lam)
        if return_params:
            outputs += (sampled.perm, sampled.boxes) + ((sampled.blend,) if config.mixup else ())
    if normalize is not None:
        outputs = (normalize.apply(outputs[0]),) + tuple(outputs[1:])
    return outputs


def _recipe_args(config: MixConfig) -> dict:
    args = {
        "alpha": float(config.alpha),
        "mixup_alpha": float(config.mixup_alpha),
        "prob": float(config.prob),
        "switch_prob": float(config.switch_prob),
        "mode": config.mode,
        "no_self": config.no_self,
    }
    if config.minmax is not None:
        args["minmax"] = [float(v) for v in config.minmax]
    return args


def _fused(inputs: list, config: MixConfig, normalize: Normalize | None, return_params: bool, args: dict):
    """``fn.dali_cutmix.mix`` on ``inputs`` (images, labels[, entropy[, prob]])."""
    if normalize is not None:
        if normalize.fp16:
            raise ValueError("float16 output is for the GPU; the CPU operator writes float32")
        args.update(
            mean=[float(v) for v in normalize.mean],
            std=[float(v) for v in normalize.std],
            mirror=normalize.mirror,
            output_layout=normalize.output_layout,
            dtype=types.FLOAT,
        )
    mixed, labels_b, lam, perm, boxes, blend = fn.dali_cutmix.mix(*inputs, **args)
    outputs = (mixed, inputs[1], labels_b, lam)
    if return_params:
        outputs += (perm, boxes) + ((blend,) if config.mixup else ())
    return outputs


def _rng(config: MixConfig, entropy, prob) -> tuple[MixConfig, np.random.Generator]:
    """The python backend's generator, seeded by the batch's DALI draw (``entropy``), and the
    config with this batch's ``prob`` when a schedule feeds it."""
    rng = np.random.default_rng(np.asarray(entropy[0], np.float32).view(np.uint32))
    return (config if prob is None else replace(config, prob=float(prob[0]))), rng


class _PackedDraws:
    """Batch callback: the batch's random numbers (:func:`dali_cutmix.mix.draw_mix`), one float32
    vector per sample (``perm, mix, cut, lam_cut, lam_mix, u[0..3]``) for
    ``fn.dali_cutmix.mix(draws=...)``, which applies the box formula. The images never enter
    Python: handing a batch over costs ~0.5 ms even without a copy."""

    def __init__(self, config: MixConfig):
        self.config = config

    def __call__(self, entropy, prob=None):
        config, rng = _rng(self.config, entropy, prob)
        n = len(entropy)
        d, perm = draw_mix(n, config, rng)
        packed = np.zeros((n, 9), np.float32)
        packed[:, 0] = perm
        for k, field in enumerate((d.mix, d.cut, d.lam_cut, d.lam_mix), start=1):
            packed[:, k] = field  # (1,) in batch mode broadcasts to every sample
        packed[:, 5 : 5 + d.u.shape[1]] = d.u
        return list(packed)


def _python_cpu(images, labels, draw_inputs: list, config: MixConfig, layout: str, return_params: bool):
    """The python backend with NumPy mixing: one Python operator draws and mixes (CHW layout, or
    no compiled plugin). The same draws as :class:`_PackedDraws` and the same formula, so the
    same bytes out."""
    num_outputs = 3 + (2 + config.mixup if return_params else 0)
    outputs = fn.python_function(
        images,
        labels,
        *draw_inputs,
        function=_SampleAndMix(config, layout, return_params),
        batch_processing=True,
        num_outputs=num_outputs,
        output_layouts=[layout],
    )
    mixed, labels_b, lam, *params = outputs
    return (mixed, labels, labels_b, lam, *params)


class Sampled(NamedTuple):
    """Per-sample DataNodes of one mixed batch (int32 unless said otherwise).

    perm: the partner of each sample; boxes: ``y1, x1, y2, x2`` of the box each sample receives;
    lam: float32; give_start, give_shape: ``(y1, x1)`` and ``(h, w)`` of the box each sample
    *gives*, so that ``boxes[i]`` is the box given by ``perm[i]``; blend: float32, 1.0 where
    the sample is a MixUp blend, or None when MixUp is off; hw: the images' ``(H, W)``.
    """

    perm: DataNode
    boxes: DataNode
    lam: DataNode
    give_start: DataNode
    give_shape: DataNode
    blend: DataNode | None
    hw: DataNode


def sample_params(images, config: MixConfig, *, layout: str, prob: DataNode | None = None) -> Sampled:
    """Draw the partners, boxes and blends of a batch with DALI's random operators.

    Everything is drawn per *giving* sample and gathered to the receivers through ``perm``; the
    draws are independent, so the receivers' parameters have exactly the distribution of drawing
    them per receiver, and every later step (slicing the partners, labels, lambda) is a gather.
    ``prob``, when given, is a per-sample DataNode that replaces ``config.prob``.
    """
    perm = fn.batch_permutation(no_fixed_points=config.no_self)
    shape = images.shape(dtype=types.FLOAT, device="cpu")
    hw = shape[0:2] if layout == "HWC" else shape[1:3]

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
        draws = {k: fn.permute_batch(d, indices=first) if _is_node(d) else d for k, d in draws.items()}
    lo, hi, size, lam, blend = mix_from_draws(SimpleNamespace(**draws), hw, config, ops=DALI_OPS)

    def gather(x):
        return fn.permute_batch(x, indices=perm)

    def int32(x):
        return fn.cast(x, dtype=types.INT32)

    boxes = gather(int32(fn.cat(lo, hi)))
    blend = gather(blend) if blend is not None else None
    return Sampled(perm, boxes, gather(lam), int32(lo), int32(size), blend, int32(hw))


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
    base = images
    if sampled.blend is not None:
        # MixUp needs whole partners. A CutMix or unmixed sample has weight exactly 1.0, so its
        # blend is its own image bit for bit; MixUp samples have empty boxes, so the paste
        # below leaves them as blended.
        w = blend_weight(sampled.lam, sampled.blend)
        if images.device == "gpu":
            w = w.gpu()  # arithmetic takes its operands on one device
        partners = fn.permute_batch(images, indices=sampled.perm)
        base = fn.cast_like(images * w + partners * (1.0 - w), images)
    mixed = fn.multi_paste(
        base,
        received,
        in_anchors=_ZERO_ANCHORS,
        out_anchors=sampled.boxes[0:2] * types.Constant(_SECOND_ROW),  # [[0, 0], [y1, x1]]
        shapes_rel=_FULL_SHAPES,
        output_size=sampled.hw,
    )
    if layout == "CHW":
        mixed = fn.transpose(mixed, perm=[2, 0, 1], output_layout="CHW")
    return mixed


_ZERO_ANCHORS = np.zeros((2, 2), dtype=np.int32)
_SECOND_ROW = np.array([[0, 0], [1, 1]], dtype=np.int32)  # made a Constant in the graph: checkpointable
_FULL_SHAPES = np.ones((2, 2), dtype=np.float32)


def paste_python(images, sampled: Sampled, *, layout: str):
    """The mix of given parameters as one batch-level Python operator (NumPy on CPU, torch on GPU)."""
    params = [sampled.perm, sampled.boxes]
    if sampled.blend is not None:
        params += [sampled.lam, sampled.blend]
    if images.device == "gpu":
        return fn.dl_tensor_python_function(
            images,
            *(p.gpu() for p in params),
            function=_TorchMix(layout),
            batch_processing=True,
            synchronize_stream=False,
            device="gpu",
            output_layouts=layout,
        )
    return fn.python_function(images, *params, function=_NumpyMix(layout), batch_processing=True, output_layouts=layout)


class _NumpyMix:
    """Batch callback for ``fn.python_function``: copies, pastes each box, blends MixUp samples."""

    def __init__(self, layout: str):
        self.layout = layout

    def __call__(self, images, perm, boxes, lam=None, blend=None):
        check_batch(images, self.layout)
        return mix_samples(images, perm, boxes, lam, blend, self.layout)


class _SampleAndMix:
    """Batch callback of the CPU python backend: draw with NumPy, then mix (see ``_python_cpu``)."""

    def __init__(self, config: MixConfig, layout: str, return_params: bool):
        self.config, self.layout, self.return_params = config, layout, return_params

    def __call__(self, images, labels, entropy, prob=None):
        config, rng = _rng(self.config, entropy, prob)
        p = sample_mix(len(images), *check_batch(images, self.layout), config, rng)
        mixed = mix_samples(images, p.perm, p.boxes, p.lam, p.blend, self.layout)
        outputs = (mixed, [labels[j] for j in p.perm], _scalars(p.lam, np.float32))
        if self.return_params:
            outputs += (_scalars(p.perm, np.int32), list(p.boxes))
            if p.blend is not None:
                outputs += (_scalars(p.blend, np.float32),)
        return outputs


def _scalars(values: np.ndarray, dtype) -> list[np.ndarray]:
    """One 0-d array per sample: DALI takes arrays, not NumPy scalars."""
    return [np.asarray(v, dtype) for v in values]


def check_batch(images, layout: str) -> tuple[int, int]:
    """(H, W) of a batch that CutMix can take: one shape, at least 2x2; else ``ValueError``."""
    shape = images[0].shape
    for i, image in enumerate(images):
        if image.shape != shape:
            raise ValueError(
                f"CutMix needs a batch of one image shape (crop or resize first): "
                f"sample 0 is {shape}, sample {i} is {image.shape}"
            )
    hw = spatial_size(shape, layout)
    check_image_size(*hw)
    return hw


def mix_samples(images, perm, boxes, lam, blend, layout: str) -> list[np.ndarray]:
    """A copy of the batch with each box pasted from its partner and MixUp samples blended;
    a NumPy loop over the samples, the fastest way on a CPU (only the boxes are touched twice)."""
    out = np.stack(images)  # (B, ...) a copy: inputs must not be modified
    region = (slice(None),) if layout == "CHW" else ()
    for i, (j, (y1, x1, y2, x2)) in enumerate(zip(perm, boxes)):
        if y2 > y1 and x2 > x1:
            box = region + (slice(y1, y2), slice(x1, x2))
            out[i][box] = images[int(j)][box]
        elif blend is not None and blend[i]:
            out[i] = blend_images(out[i : i + 1], images[int(j)][None], lam[i])[0]
    return list(out)


class _TorchMix:
    """Batch callback for ``fn.dl_tensor_python_function`` on the GPU.

    Runs torch on DALI's CUDA stream; the mask-and-gather formulation (:func:`mix_images`) never
    reads a parameter back to the host, so nothing blocks on the device.
    """

    def __init__(self, layout: str):
        self.layout = layout

    def __call__(self, images, perm, boxes, lam=None, blend=None):
        import torch
        from nvidia.dali.python_function_plugin import current_dali_stream
        from torch.utils.dlpack import to_dlpack

        def batch(samples):
            return torch.stack([torch.from_dlpack(t) for t in samples])

        with torch.cuda.stream(torch.cuda.ExternalStream(current_dali_stream())):
            x = batch(images)
            params = [batch(perm).long().reshape(-1), batch(boxes).reshape(-1, 4)]
            if blend is not None:
                params += [batch(lam).reshape(-1), batch(blend).reshape(-1) > 0]
            else:
                params += [None, None]
            out = mix_images(x, *params, self.layout)
            return [to_dlpack(o) for o in out]
