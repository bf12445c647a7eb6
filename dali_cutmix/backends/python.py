"""Backend ``python`` (CPU and GPU): the reference sampler in one Python operator, the pixels by
one torch callback that is the same code on both devices.

The parameters come from :func:`dali_cutmix.sampling.sample_mix` (NumPy) in one CPU
``fn.python_function``; the pixels from :class:`TorchMix` in ``fn.dl_tensor_python_function``:
:func:`dali_cutmix.paste.mix_images` on CPU tensors (what CI runs) or on CUDA tensors on DALI's
stream (what a GPU runs). GPU code that is the CPU code with another device: right by construction.
"""

from __future__ import annotations

import numpy as np
import nvidia.dali.fn as fn
from nvidia.dali import types
from nvidia.dali.data_node import DataNode

from ..normalize import Normalize
from ..recipe import MixConfig
from ..sampling import sample_mix
from .graph import Params, check_shapes, is_node
from .torch_mix import PACKED, TorchMix, pack

FUSES_NORMALIZE = False
FUSES_RESIZE = False


def build(images, labels, config: MixConfig, *, prob, layout: str, normalize: Normalize | None, size=None):
    """``images, labels -> images, labels_b, Params`` (``normalize`` is applied by the caller)."""
    params = python_params(images, config, layout=layout, prob=prob, size=size)
    mixed, params = torch_mix(images, params, layout=layout, size=size)
    return mixed, fn.permute_batch(labels, indices=params.perm), params


def python_params(images, config: MixConfig, *, layout: str, prob: DataNode | None = None, size=None) -> Params:
    """The parameters drawn by :func:`dali_cutmix.sampling.sample_mix` in one CPU Python operator.

    Its generator is seeded per batch by one DALI draw, so the pipeline's seed governs it and
    DALI's checkpoints capture it (the operator itself is stateless). It returns one row of
    :data:`~dali_cutmix.backends.torch_mix.PACKED` a sample (B objects a batch); DALI's own
    operators slice the parameters out of it. The image size is ``size`` ``(H, W)`` when given, else
    ``DataNode.shape()`` (for GPU images a GPU -> CPU edge: docs/DESIGN.md, the traps).
    """
    entropy = fn.random.uniform(range=[0.0, 1.0], shape=[2])
    fed = is_node(size)  # a size fed per batch (a schedule): (H, W) a sample, in place of the shapes
    shapes = [size] if fed else [images.shape(device="cpu")] if size is None else []
    inputs = [entropy, *shapes] + ([prob] if prob is not None else [])
    sample = _Sample(config, layout, None if fed else size, fed=fed)
    packed = fn.python_function(*inputs, function=sample, batch_processing=True)
    column = PACKED.index
    return Params(
        perm=fn.cast(packed[column("perm")], dtype=types.INT32),
        boxes=fn.cast(packed[column("y1") : column("x2") + 1], dtype=types.INT32),
        lam=packed[column("lam")],
        blend=packed[column("blend")] if config.mixup else None,
        packed=packed,
        resized=config.paste == "resize",
        salient=config.centre == "saliency",
    )


class _Sample:
    """Batch callback: ``entropy[, shapes][, prob] -> packed`` (a (7,) float32 row a sample);
    ``shapes`` is an input only when ``size`` is not fixed: the images' shapes, or with ``fed``
    the (H, W) of a size schedule."""

    def __init__(self, config: MixConfig, layout: str, size: tuple[int, int] | None, fed: bool = False):
        self.config, self.layout, self.size, self.fed = config, layout, size, fed

    def __call__(self, entropy, *rest):
        rng = np.random.default_rng(np.asarray(entropy[0], np.float32).view(np.uint32))
        if self.size is not None:
            hw = self.size
        else:
            shapes, *rest = rest
            hw = tuple(int(v) for v in shapes[0]) if self.fed else check_shapes(shapes, self.layout)
        prob = rest[0] if rest else None
        p = sample_mix(
            len(entropy),
            *hw,
            self.config,
            rng,
            prob=None if prob is None else np.concatenate([np.asarray(v, np.float32).reshape(-1) for v in prob]),
        )
        return list(pack(p.perm, p.boxes, p.lam, p.blend))  # B row views of one array


def torch_mix(images, params: Params, *, layout: str, size=None):
    """The pixels of given parameters: one ``fn.dl_tensor_python_function`` running
    :class:`TorchMix` on the images' device (CPU tensors in CI, CUDA tensors on a GPU) on the
    images and the parameters' packed rows (``params.packed``, the sampler's); with ``size``, the
    callback checks that the images have it. Returns the mixed images and the parameters: as
    given, or for SaliencyMix (``params.salient``) with the boxes and ``lam`` the callback placed
    from the pixels, on the images' device (no GPU -> CPU edge)."""
    gpu = images.device == "gpu"
    packed = params.packed
    if packed is None:
        raise ValueError("torch_mix takes parameters with their packed rows (Params.packed, the python sampler's)")
    mixed = fn.dl_tensor_python_function(
        images,
        packed.gpu() if gpu else packed,
        function=TorchMix(
            layout,
            size=None if is_node(size) else size,
            mixup=params.blend is not None,
            resized=params.resized,
            salient=params.salient,
        ),  # fmt: skip
        batch_processing=True,
        synchronize_stream=False,  # the callback queues its kernels on DALI's stream itself
        device=images.device,
        num_outputs=2 if params.salient else 1,
        output_layouts=[layout, ""] if params.salient else layout,
    )
    if not params.salient:
        return mixed, params
    mixed, placed = mixed  # placed: a row of PLACED a sample
    boxes = fn.cast(placed[0:4], dtype=types.INT32)
    return mixed, params._replace(boxes=boxes, lam=placed[4], salient=False)
