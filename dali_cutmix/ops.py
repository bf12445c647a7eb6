"""CutMix as a DALI graph fragment: ``images, labels -> images, labels_a, labels_b, lam``.

Use it inside any ``@pipeline_def``::

    images, labels_a, labels_b, lam = dali_cutmix.cutmix(images, labels, alpha=1.0)

Backends (``backend=``; by default ``native`` on the CPU, ``python`` on the GPU), all drawing from
the pipeline's seed and captured by DALI's checkpoints:

==========  =====  =====  ==================================================================
backend     CPU    GPU    what it is
==========  =====  =====  ==================================================================
``native``  yes    no     one compiled DALI operator, ``fn.dali_cutmix.mix``
                          (:mod:`dali_cutmix.plugin`, ``csrc/mix_op.cc``): draws the parameters
                          itself and writes each pixel once, fused with ``normalize=``
``python``  yes    yes    the reference sampler (:func:`dali_cutmix.mix.sample_mix`, NumPy) in one
                          ``fn.python_function``; the pixels by torch in one
                          ``fn.dl_tensor_python_function`` (:func:`dali_cutmix.mix.mix_images`,
                          vectorised, no host sync): the *same* callback on CPU tensors (what CI
                          runs) and on CUDA tensors on DALI's stream (what a GPU runs)
``ops``     yes    no     DALI's stock operators only (``batch_permutation``, ``random.*``, the box
                          formula on DataNodes, ``slice``, ``multi_paste``); ~40 operators
==========  =====  =====  ==================================================================

Why ``ops`` refuses the GPU: DALI's GPU ``multi_paste`` (``paste_gpu.h``) reads every input with
the row pitch of input 0 and its region sweep never closes an empty region, so a pasted box slice
of another shape, or an unmixed sample's empty box, comes out wrong; DALI's own tests paste only
same-shaped inputs with non-empty regions. Nothing else here touches pixels on the GPU.

Given the same parameters, the backends' outputs are identical byte for byte, MixUp blends included
(computed in float32 and rounded half away from zero explicitly, never by a cast).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, NamedTuple

import numpy as np
import nvidia.dali.fn as fn
import nvidia.dali.math as dmath
from nvidia.dali import types
from nvidia.dali.data_node import DataNode

from .mix import MixConfig, blend_weight, check_image_size, check_layout, mix_from_draws, mix_images, sample_mix

BACKENDS = ("native", "python", "ops")
DEFAULT_BACKEND = {"cpu": "native", "gpu": "python"}
# (backend, device or layout) -> why not: one line each, raised when the graph is built.
REFUSED = {
    ("native", "gpu"): "backend 'native' is a CPU operator (fn.dali_cutmix.mix); on the GPU use backend 'python'",
    ("native", "CHW"): "backend 'native' takes HWC images; use backend 'python' or 'ops' for CHW",
    ("ops", "gpu"): (
        "backend 'ops' does not run on the GPU: DALI's GPU multi_paste reads every input with input 0's row "
        "pitch and never closes an empty region (paste_gpu.h), so box slices and unmixed samples come out "
        "wrong; use backend 'python'"
    ),
}

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
    backend: str | None = None,
    layout: str = "HWC",
    return_params: bool = False,
    normalize: Normalize | None = None,
    **recipe,
):
    """CutMix (optionally switching with MixUp) a uniformly shaped batch inside a DALI pipeline.

    Args:
        images: DataNode of ``HWC`` or ``CHW`` images (uint8 or float), CPU or GPU, all of one
            shape (crop or resize before), at least 2x2. The output keeps dtype, layout, device
            and shape unless ``normalize`` is given.
        labels: DataNode of per-sample labels (CPU or GPU).
        alpha: ``lam ~ Beta(alpha, alpha)``.
        prob: probability that a batch (``mode="batch"``) or a sample (``mode="elem"``) is mixed;
            a number, or a float32 DataNode with one value per sample (a schedule fed at run
            time): in ``"elem"`` mode sample ``i`` is mixed with probability ``prob[i]``, in
            ``"batch"`` mode the batch with probability ``prob[0]``, on every backend.
        mode: ``"batch"`` draws one lambda and box for the batch, ``"elem"`` one per sample.
        backend: ``"native"``, ``"python"`` or ``"ops"`` (see the module docstring); None picks
            ``DEFAULT_BACKEND`` for the images' device. A combination in ``REFUSED`` is a
            ``ValueError`` that says why.
        layout: ``"HWC"`` or ``"CHW"``.
        return_params: also return ``perm`` (int32 per sample) and ``boxes`` (int32 ``[4]``,
            ``y1, x1, y2, x2``), and ``blend`` (float32, 1.0 for MixUp samples) when MixUp is on,
            so the mix can be inspected or replayed.
        normalize: a :class:`Normalize` to apply to the mixed images (fused with the mix by the
            native backend, ``crop_mirror_normalize`` after it otherwise).
        recipe: more of :class:`dali_cutmix.mix.MixConfig`: ``mixup_alpha`` (MixUp on when > 0),
            ``switch_prob``, ``minmax`` and ``no_self``.

    Returns:
        ``images, labels_a, labels_b, lam`` (``lam`` float32, the weight of ``labels_a``; 1.0 where
        nothing was mixed), then the parameters when ``return_params`` is true.
    """
    prob_node = prob if _is_node(prob) else None
    config = MixConfig(alpha=alpha, prob=1.0 if prob_node is not None else prob, mode=mode, **recipe)
    check_layout(layout)
    device = images.device
    backend = DEFAULT_BACKEND[device] if backend is None else backend
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    for key in ((backend, device), (backend, layout)):
        if key in REFUSED:
            raise ValueError(REFUSED[key])
    if backend == "native":
        from . import plugin  # here, so that `python -m dali_cutmix.plugin` runs the module once

        plugin.load()
        entropy = fn.random.uniform(range=[0.0, 1.0], shape=[2])
        inputs = [images, labels, entropy] + ([prob_node] if prob_node is not None else [])
        return _fused(inputs, config, normalize, return_params, _recipe_args(config))
    if backend == "python":
        params = python_params(images, config, layout=layout, prob=prob_node)
        mixed = torch_mix(images, params, layout=layout)
    else:
        sampled = ops_params(images, config, layout=layout, prob=prob_node)
        params, mixed = sampled.params, paste_ops(images, sampled, layout=layout)
    outputs = (mixed, labels, fn.permute_batch(labels, indices=params.perm), params.lam)
    if return_params:
        outputs += (params.perm, params.boxes) + ((params.blend,) if config.mixup else ())
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
    """``fn.dali_cutmix.mix`` on ``inputs`` (images, labels, entropy[, prob])."""
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


class Params(NamedTuple):
    """Per-sample CPU DataNodes of one mixed batch: :class:`dali_cutmix.mix.CutMixParams` in DALI.

    perm (int32): the partner of each sample; boxes (int32 ``[4]``): ``y1, x1, y2, x2`` of the box
    each sample receives; lam (float32); blend (float32, 1.0 for MixUp samples, or None when MixUp
    is off).
    """

    perm: DataNode
    boxes: DataNode
    lam: DataNode
    blend: DataNode | None


# ---- backend python: NumPy draws the parameters, torch writes the pixels ----------------------


def python_params(images, config: MixConfig, *, layout: str, prob: DataNode | None = None) -> Params:
    """The parameters drawn by :func:`dali_cutmix.mix.sample_mix` in one CPU Python operator.

    Its generator is seeded per batch by one DALI draw, so the pipeline's seed governs it and
    DALI's checkpoints capture it (the operator itself is stateless). The image size comes from
    ``DataNode.shape()``: metadata, also for GPU images (DALI's documented way; a GPU -> CPU
    transition the default executor allows).
    """
    entropy = fn.random.uniform(range=[0.0, 1.0], shape=[2])
    inputs = [entropy, images.shape(device="cpu")] + ([prob] if prob is not None else [])
    perm, boxes, lam, blend = fn.python_function(
        *inputs, function=_Sample(config, layout), batch_processing=True, num_outputs=4
    )
    return Params(perm, boxes, lam, blend if config.mixup else None)


class _Sample:
    """Batch callback: ``entropy, shapes[, prob] -> perm, boxes, lam, blend`` (one array per sample)."""

    def __init__(self, config: MixConfig, layout: str):
        self.config, self.layout = config, layout

    def __call__(self, entropy, shapes, prob=None):
        rng = np.random.default_rng(np.asarray(entropy[0], np.float32).view(np.uint32))
        hw = check_shapes(shapes, self.layout)
        p = sample_mix(
            len(shapes),
            *hw,
            self.config,
            rng,
            prob=None if prob is None else np.concatenate([np.asarray(v, np.float32).reshape(-1) for v in prob]),
        )
        blend = np.zeros(len(shapes), np.float32) if p.blend is None else p.blend.astype(np.float32)
        return (
            [np.asarray(v, np.int32) for v in p.perm],  # 0-d arrays: DALI takes arrays, not scalars
            list(p.boxes),
            [np.asarray(v, np.float32) for v in p.lam],
            [np.asarray(v, np.float32) for v in blend],
        )


def check_shapes(shapes, layout: str) -> tuple[int, int]:
    """(H, W) of a batch that CutMix can take, from its per-sample shapes: one shape, at least
    2x2; else ``ValueError`` (DALI reports it with the operator's name)."""
    first = tuple(int(v) for v in shapes[0])
    for i, shape in enumerate(shapes):
        if tuple(int(v) for v in shape) != first:
            raise ValueError(
                f"CutMix needs a batch of one image shape (crop or resize first): "
                f"sample 0 is {first}, sample {i} is {tuple(int(v) for v in shape)}"
            )
    if len(first) != 3:
        raise ValueError(f"expected 3-D {layout} images, got shape {first}")
    hw = (first[0], first[1]) if layout == "HWC" else (first[1], first[2])
    check_image_size(*hw)
    return hw


def torch_mix(images, params: Params, *, layout: str):
    """The pixels of given parameters: one ``fn.dl_tensor_python_function`` running
    :class:`TorchMix` on the images' device (CPU tensors in CI, CUDA tensors on a GPU)."""
    gpu = images.device == "gpu"
    tensors = [params.perm, params.boxes] + ([params.lam, params.blend] if params.blend is not None else [])
    return fn.dl_tensor_python_function(
        images,
        *(t.gpu() if gpu else t for t in tensors),
        function=TorchMix(layout),
        batch_processing=True,
        synchronize_stream=False,  # the callback queues its kernels on DALI's stream itself
        device=images.device,
        output_layouts=layout,
    )


class TorchMix:
    """Batch callback of ``fn.dl_tensor_python_function``: DLPack samples in, mixed samples out.

    The same code on both devices: :func:`dali_cutmix.mix.mix_images` in torch (a gather of the
    partners, a box mask, a select; MixUp blended in float32 and rounded half away from zero
    explicitly), which never reads a value back to the host. On CUDA tensors it runs on DALI's
    own stream, so nothing blocks on the device.
    """

    def __init__(self, layout: str):
        self.layout = layout

    def __call__(self, images, perm, boxes, lam=None, blend=None):
        import torch
        from torch.utils.dlpack import to_dlpack

        samples = [torch.from_dlpack(t) for t in images]
        if samples[0].is_cuda:
            from nvidia.dali.python_function_plugin import current_dali_stream

            stream = torch.cuda.stream(torch.cuda.ExternalStream(current_dali_stream(), device=samples[0].device))
        else:
            stream = nullcontext()

        def batch(capsules):
            return torch.stack([torch.from_dlpack(t) for t in capsules])

        with stream:
            x = torch.stack(samples)  # (B, H, W, C) or (B, C, H, W): one copy, DALI's samples stay untouched
            params = [batch(perm).long().reshape(-1), batch(boxes).reshape(-1, 4).long()]
            if blend is not None:
                params += [batch(lam).reshape(-1), batch(blend).reshape(-1) > 0]
            else:
                params += [None, None]
            out = mix_images(x, *params, self.layout)
            return [to_dlpack(o) for o in out]


# ---- backend ops: DALI's stock operators ----------------------------------------------------


class Sampled(NamedTuple):
    """:class:`Params` plus what the stock paste needs: ``start``, ``size`` (int32 ``(y1, x1)``
    and ``(h, w)`` of each sample's box) and ``hw`` (int32, the images' ``(H, W)``)."""

    params: Params
    start: DataNode
    size: DataNode
    hw: DataNode


def ops_params(images, config: MixConfig, *, layout: str, prob: DataNode | None = None) -> Sampled:
    """Draw the partners, boxes and blends of a batch with DALI's random operators, per
    receiving sample (so a per-sample ``prob`` is the receiver's), and evaluate the box formula
    :func:`dali_cutmix.mix.mix_from_draws` on DataNodes."""
    perm = fn.batch_permutation(no_fixed_points=config.no_self)
    # The shape check (one shape, >= 2x2) is the one thing stock operators cannot say in words.
    hw = fn.python_function(
        images.shape(device="cpu"), function=_UniformHW(layout), batch_processing=True, output_layouts=""
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
        draws = {k: fn.permute_batch(d, indices=first) if _is_node(d) else d for k, d in draws.items()}
    lo, hi, size, lam, blend = mix_from_draws(SimpleNamespace(**draws), hw, config, ops=DALI_OPS)

    def int32(x):
        return fn.cast(x, dtype=types.INT32)

    params = Params(perm, int32(fn.cat(lo, hi)), lam, blend)
    return Sampled(params, int32(lo), int32(size), int32(hw))


class _UniformHW:
    def __init__(self, layout: str):
        self.layout = layout

    def __call__(self, shapes):
        hw = np.array(check_shapes(shapes, self.layout), np.float32)
        return [hw.copy() for _ in shapes]


def _is_node(x) -> bool:
    return isinstance(x, DataNode)


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
