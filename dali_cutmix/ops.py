"""CutMix as a DALI graph fragment: ``images, labels -> images, labels_a, labels_b, lam``.

Use it inside any ``@pipeline_def``::

    images, labels_a, labels_b, lam = dali_cutmix.cutmix(images, labels, alpha=1.0)

Backends (``backend=``): ``native`` (CPU default; :mod:`dali_cutmix.backends.native`), ``python``
(GPU default; :mod:`dali_cutmix.backends.python`) and ``ops`` (CPU; :mod:`dali_cutmix.backends.ops`).
Given the same parameters their outputs are identical byte for byte; ``REFUSED`` says in one line
why a backend does not take a device or layout. docs/DESIGN.md tells why each exists.
"""

from __future__ import annotations

import itertools

import numpy as np
from nvidia.dali import fn, pipeline_def, types

from .backends import native, ops, python
from .backends.graph import Normalize, is_node
from .mix import MixConfig, check_image_size, check_layout

BACKENDS = {"native": native, "python": python, "ops": ops}
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


def cutmix(
    images,
    labels,
    config: MixConfig | None = None,
    *,
    prob=None,
    backend: str | None = None,
    layout: str = "HWC",
    return_params: bool = False,
    normalize: Normalize | None = None,
    size: tuple[int, int] | None = None,
    **recipe,
):
    """CutMix (optionally switching with MixUp) a uniformly shaped batch inside a DALI pipeline.

    Args:
        images: DataNode of ``HWC`` or ``CHW`` images (uint8 or float), CPU or GPU, all of one
            shape (crop or resize before), at least 2x2. The output keeps dtype, layout, device
            and shape unless ``normalize`` is given.
        labels: DataNode of per-sample labels (CPU or GPU).
        config: the recipe, a :class:`dali_cutmix.mix.MixConfig`; or give its fields as keywords
            (``alpha``, ``prob``, ``mode``, ``mixup_alpha``, ``switch_prob``, ``minmax``,
            ``no_self``), not both.
        prob: a float32 DataNode with one value per sample (a schedule fed at run time) that
            replaces ``config.prob``: in ``"elem"`` mode sample ``i`` is mixed with probability
            ``prob[i]``, in ``"batch"`` mode the batch with probability ``prob[0]``, on every
            backend. A number is the recipe's ``prob``.
        backend: ``"native"``, ``"python"`` or ``"ops"`` (see the module docstring); None picks
            ``DEFAULT_BACKEND`` for the images' device. A combination in ``REFUSED`` is a
            ``ValueError`` that says why.
        layout: ``"HWC"`` or ``"CHW"``.
        return_params: also return ``perm`` (int32 per sample) and ``boxes`` (int32 ``[4]``,
            ``y1, x1, y2, x2``), and ``blend`` (float32, 1.0 for MixUp samples) when MixUp is on,
            so the mix can be inspected or replayed.
        normalize: a :class:`Normalize` to apply to the mixed images (fused with the mix by the
            native backend, ``crop_mirror_normalize`` after it otherwise).
        size: ``(H, W)`` of the images when the pipeline knows it (a resize to a fixed size), or
            a CPU DataNode of one int32 ``(H, W)`` a sample (a size schedule fed at run time).
            The python backend then draws the boxes for it without reading the images' shapes, so
            GPU images have no GPU -> CPU edge (a fixed size that does not match is an error when
            the batch runs). Without it, GPU images' shapes reach the CPU sampler through
            ``images.shape()``.

    Returns:
        ``images, labels_a, labels_b, lam`` (``lam`` float32, the weight of ``labels_a``; 1.0 where
        nothing was mixed), then the parameters when ``return_params`` is true.
    """
    if prob is not None and not is_node(prob):
        recipe["prob"] = prob
        prob = None
    if config is None:
        config = MixConfig(**recipe)
    elif recipe:
        raise ValueError(f"give the recipe as config or as keywords, not both (got config and {sorted(recipe)})")
    check_layout(layout)
    if size is not None and not is_node(size):
        size = _checked_size(size)
    device = images.device
    name = DEFAULT_BACKEND[device] if backend is None else backend
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {tuple(BACKENDS)}, got {name!r}")
    for key in ((name, device), (name, layout)):
        if key in REFUSED:
            raise ValueError(REFUSED[key])
    module = BACKENDS[name]
    mixed, labels_b, params = module.build(
        images, labels, config, prob=prob, layout=layout, normalize=normalize, size=size
    )
    if normalize is not None and not module.FUSES_NORMALIZE:
        mixed = normalize.apply(mixed)
    outputs = (mixed, labels, labels_b, params.lam)
    if return_params:
        outputs += (params.perm, params.boxes) + ((params.blend,) if config.mixup else ())
    return outputs


def _checked_size(size) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ValueError(f"size must be (H, W), got {size!r}") from None
    check_image_size(h, w)
    return h, w


def mix_arrays(batches, *, device: str = "cpu", seed: int = 0, layout: str = "HWC", num_threads: int = 1, **kwargs):
    """Run :func:`cutmix` with ``return_params=True`` over in-memory batches (lists of NumPy
    arrays, one list a batch), the labels being each sample's index; yield NumPy
    ``(images, mixed, labels_a, labels_b, lam, perm, boxes[, blend])`` per batch. A NumPy ``prob``
    is fed as the per-sample DataNode. For checking the operator outside a training pipeline
    (the tests and ``scripts/gpu_check.py``)."""
    batch_size = len(batches[0])
    feed = itertools.cycle(batches)
    labels = [np.array([i], dtype=np.int32) for i in range(batch_size)]
    prob = kwargs.pop("prob", None)
    per_sample = [np.asarray(p, np.float32) for p in prob] if isinstance(prob, np.ndarray) else None

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=0 if device == "gpu" else None, seed=seed)
    def pipe():
        images = fn.external_source(source=lambda: next(feed), layout=layout, device=device)
        node = prob if per_sample is None else fn.external_source(source=lambda: per_sample, dtype=types.FLOAT)
        outputs = cutmix(images, fn.external_source(source=lambda: labels), prob=node, layout=layout,
                         return_params=True, **kwargs)  # fmt: skip
        return (images,) + tuple(outputs)

    p = pipe(prefetch_queue_depth=1)
    p.build()
    for _ in batches:
        yield tuple((o.as_cpu() if hasattr(o, "as_cpu") else o).as_array() for o in p.run())
