"""CutMix as a DALI graph fragment: ``images, labels -> Mixed(images, labels_a, labels_b, lam)``.

Use it inside any ``@pipeline_def``::

    images, labels_a, labels_b, lam = dali_cutmix.cutmix(images, labels, alpha=1.0)

Backends (``backend=``): ``native`` (CPU default; :mod:`dali_cutmix.backends.native`), ``python``
(GPU default; :mod:`dali_cutmix.backends.python`) and ``ops`` (CPU; :mod:`dali_cutmix.backends.stock_ops`).
Given the same parameters their outputs are identical byte for byte; ``REFUSED`` says in one line
why a backend does not take a device or layout. docs/DESIGN.md tells why each exists.
"""

from __future__ import annotations

import itertools
import sys

import numpy as np
from nvidia.dali import fn, pipeline_def, types

from .backends import native, python, stock_ops
from .backends.graph import Params, is_node
from .normalize import Normalize
from .recipe import MixConfig, check_image_size, check_layout

BACKENDS = {"native": native, "python": python, "ops": stock_ops}
DEFAULT_BACKEND = {"cpu": "native", "gpu": "python"}
# The CPU default when the native operator cannot be built or loaded (no compiler, an old one, no
# CUDA headers): the same mixing, no compiler needed, slower (docs/BENCHMARKS.md).
NO_COMPILER_BACKEND = "python"
_said: list[str] = []  # the fallback's one line, said once per process
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


class Mixed(tuple):
    """What :func:`cutmix` returns, every time: a 4-tuple ``images, labels_a, labels_b, lam``
    (DataNodes; unpack it, or return it from a ``@pipeline_def``), with ``params`` (a
    :class:`~dali_cutmix.backends.graph.Params`: ``perm``, ``boxes``, ``lam``, ``blend``) when
    ``return_params`` asked for them, else None."""

    images = property(lambda self: self[0])
    labels_a = property(lambda self: self[1])
    labels_b = property(lambda self: self[2])
    lam = property(lambda self: self[3])

    def __new__(cls, images, labels_a, labels_b, lam, params: Params | None = None):
        mixed = super().__new__(cls, (images, labels_a, labels_b, lam))
        mixed.params = params
        return mixed

    def __repr__(self) -> str:
        return f"Mixed(images, labels_a, labels_b, lam, params={'set' if self.params else None})"


def cutmix(
    images,
    labels,
    config: MixConfig | None = None,
    *,
    sample_prob=None,
    backend: str | None = None,
    layout: str = "HWC",
    return_params: bool = False,
    normalize: Normalize | None = None,
    size: tuple[int, int] | None = None,
    resize: bool = False,
    **recipe,
):
    """CutMix (optionally switching with MixUp) a batch inside a DALI pipeline.

    images: DataNode, ``HWC`` or ``CHW`` (``layout``), uint8 or float, CPU or GPU, all of one shape
        of at least 2x2 (with ``resize``: HWC uint8 of any shapes).
    labels: DataNode of per-sample labels, any dtype and shape, CPU or GPU.
    config: the recipe (:class:`dali_cutmix.recipe.MixConfig`); None: ``MixConfig(**recipe)``.
    sample_prob: None, or a CPU float32 DataNode of one value a sample that replaces the
        recipe's ``prob`` (``"elem"``: sample ``i`` mixed with ``sample_prob[i]``; ``"batch"``:
        the batch with ``sample_prob[0]``).
    backend: ``"native"``, ``"python"`` or ``"ops"``; None: :func:`default_backend` of the images'
        device (native on the CPU, python where the operator cannot be built). A pair in
        ``REFUSED`` is a ``ValueError`` that says why; ``"native"`` that cannot be built or loaded
        is a :class:`dali_cutmix.plugin.PluginError` that says why.
    layout: ``"HWC"`` or ``"CHW"``.
    return_params: set ``Mixed.params`` (:class:`~dali_cutmix.backends.graph.Params`, CPU DataNodes).
    normalize: None (the images keep dtype, layout and device), or a
        :class:`~dali_cutmix.normalize.Normalize` applied to the mixed images.
    size: None, the images' ``(H, W)`` as two ints, or a CPU int32 DataNode of ``(H, W)`` a
        sample; given, the python backend never reads GPU images' shapes on the CPU.
    resize: resize each image to ``size`` (required) first, bilinearly as
        ``fn.resize(interp_type=INTERP_LINEAR, antialias=False)``.
    recipe: the recipe's fields as keywords, instead of ``config``.
    Returns :class:`Mixed`: ``images`` (the input's device; normalised when asked), ``labels_a``
    (``labels``), ``labels_b`` (the partners' labels, on the labels' device), ``lam`` (float32 a
    sample, the weight of ``labels_a``, 1.0 where nothing was mixed; a CPU DataNode on the CPU
    backends, the images' device on the python backend).
    """
    if is_node(recipe.get("prob")):
        raise ValueError("prob is the recipe's number; a per-sample DataNode of chances goes in sample_prob=")
    if sample_prob is not None and not is_node(sample_prob):
        raise ValueError(f"sample_prob must be a DataNode (a number is the recipe's prob=), got {sample_prob!r}")
    if config is None:
        config = MixConfig(**recipe)
    elif recipe:
        raise ValueError(f"give the recipe as config or as keywords, not both (got config and {sorted(recipe)})")
    check_layout(layout)
    if size is not None and not is_node(size):
        size = _checked_size(size)
    if resize and size is None:
        raise ValueError("resize=True needs size: the (H, W) to resize the images to")
    device = images.device
    name = default_backend(device, layout) if backend is None else backend
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {tuple(BACKENDS)}, got {name!r}")
    for key in ((name, device), (name, layout)):
        if key in REFUSED:
            raise ValueError(REFUSED[key])
    module = BACKENDS[name]
    fused = {}
    if resize and module.FUSES_RESIZE:
        fused["resize"] = True
    elif resize:
        images = resize_images(images, size)
    mixed, labels_b, params = module.build(
        images, labels, config, prob=sample_prob, layout=layout, normalize=normalize, size=size, **fused
    )
    if normalize is not None and not module.FUSES_NORMALIZE:
        mixed = normalize.apply(mixed)
    return Mixed(mixed, labels, labels_b, params.lam, params if return_params else None)


def default_backend(device: str, layout: str = "HWC") -> str:
    """The backend ``cutmix(backend=None)`` takes on ``device``: ``DEFAULT_BACKEND``'s, except on
    the CPU when the native operator is out of reach (CHW images; or it cannot be built or loaded:
    then one line on stderr, once per process, says why and how to get it) -> the python backend."""
    name = DEFAULT_BACKEND[device]
    if name != "native":
        return name
    if (name, layout) in REFUSED:
        return NO_COMPILER_BACKEND
    from . import plugin

    why = plugin.unavailable()
    if why is None:
        return name
    if not _said:
        _said.append(why)
        print(f"dali-cutmix: the native CPU operator is not available ({why}); CutMix runs on backend "
              f"'{NO_COMPILER_BACKEND}', the same mixing, slower", file=sys.stderr)  # fmt: skip
    return NO_COMPILER_BACKEND


def native_available() -> bool:
    """Whether the native operator can be had on this machine (built first if need be)."""
    return default_backend("cpu") == "native"


def replay_params(params: Params) -> tuple:
    """``perm, boxes[, blend]``: the parameters a pipeline returns to replay its mix (``blend``
    only when MixUp is on)."""
    return (params.perm, params.boxes) + (() if params.blend is None else (params.blend,))


def resize_images(images, size):
    """``images`` (HWC, any shapes) resized to ``size`` (H, W): a pair of ints or a CPU int32
    DataNode of one ``(H, W)`` a sample; bilinear without antialiasing, the filter the native
    backend's fused resize reproduces."""
    hw = fn.cast(size, dtype=types.FLOAT) if is_node(size) else [float(v) for v in size]
    return fn.resize(images, size=hw, interp_type=types.INTERP_LINEAR, antialias=False)


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
    goes in as ``sample_prob``. For checking the operator outside a training pipeline
    (the tests and ``scripts/gpu_check.py``)."""
    batch_size = len(batches[0])
    feed = itertools.cycle(batches)
    labels = [np.array([i], dtype=np.int32) for i in range(batch_size)]
    prob = kwargs.get("prob")
    per_sample = None
    if isinstance(prob, np.ndarray):
        per_sample = [np.asarray(p, np.float32) for p in kwargs.pop("prob")]

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=0 if device == "gpu" else None, seed=seed)
    def pipe():
        images = fn.external_source(source=lambda: next(feed), layout=layout, device=device)
        node = None if per_sample is None else fn.external_source(source=lambda: per_sample, dtype=types.FLOAT)
        mixed = cutmix(images, fn.external_source(source=lambda: labels), sample_prob=node, layout=layout,
                       return_params=True, **kwargs)  # fmt: skip
        return (images, *mixed, *replay_params(mixed.params))

    p = pipe(prefetch_queue_depth=1)
    p.build()
    for _ in batches:
        yield tuple((o.as_cpu() if hasattr(o, "as_cpu") else o).as_array() for o in p.run())
