"""CutMix as a DALI graph fragment: ``images, labels -> Mixed(images, labels_a, labels_b, lam)``.

Use it inside any ``@pipeline_def``::

    images, labels_a, labels_b, lam = dali_cutmix.cutmix(images, labels, alpha=1.0)

Backends (``backend=``): ``native`` (CPU default; :mod:`dali_cutmix.backends.native`), ``python``
(GPU default; :mod:`dali_cutmix.backends.python`) and ``ops`` (CPU; :mod:`dali_cutmix.backends.stock_ops`).
Given the same parameters their outputs are identical byte for byte; ``REFUSED`` says in one line
why a backend does not take a device or layout. docs/DESIGN.md tells why each exists.
"""

from __future__ import annotations

import sys

import numpy as np
from nvidia.dali import fn, types

from .backends import NAMES, RUNS, native, python, recipe_refused, stock_ops
from .backends.graph import Params, is_node
from .normalize import Normalize
from .recipe import MixConfig, check_image_size, check_layout, check_prob
from .schedule import EpochFeed

BACKENDS = dict(zip(NAMES, (native, python, stock_ops)))
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
} | {(name, choice): why for name in NAMES for choice in RUNS if (why := recipe_refused(name, choice))}


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
    resize=None,
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
    size: None, or the images' ``(H, W)``, a hint (two ints, or a CPU int32 DataNode of ``(H, W)``
        a sample): given, the python backend never reads GPU images' shapes on the CPU.
    resize: None, or the ``(H, W)`` to resize each image to first (two ints, or a CPU int32
        DataNode of ``(H, W)`` a sample), bilinearly as ``fn.resize(interp_type=INTERP_LINEAR,
        antialias=False)``: the images may then come in any shape (the decoder's random crops);
        the resized size is the size hint too.
    recipe: the recipe's fields as keywords, instead of ``config``.
    Returns :class:`Mixed`: ``images`` (the input's device; normalised when asked), ``labels_a``
    (``labels``), ``labels_b`` (the partners' labels, on the labels' device), ``lam`` (float32 a
    sample, the weight of ``labels_a``, 1.0 where nothing was mixed; a CPU DataNode, except for
    SaliencyMix (``centre="saliency"``) on GPU images, whose ``lam`` and boxes follow from the
    pixels and stay on the GPU: ``pipelines.graphs.on_device`` moves only what is on the CPU).
    """
    if is_node(recipe.get("prob")):
        raise ValueError("prob is the recipe's number; a per-sample DataNode of chances goes in sample_prob=")
    if sample_prob is not None and not is_node(sample_prob):
        raise ValueError(f"sample_prob must be a DataNode (a number is the recipe's prob=), got {sample_prob!r}")
    if config is None:
        config = MixConfig(**recipe)
    elif recipe:
        raise ValueError(f"give the recipe as config or as keywords, not both (got config and {sorted(recipe)})")
    if config.scheduled and sample_prob is None:
        raise ValueError(
            "the recipe's chance of mixing changes by epoch (prob_schedule / off_epoch), which cutmix() alone "
            "cannot know: give sample_prob=dali_cutmix.epoch_prob(recipe, batch_size, steps_per_epoch), as "
            "pipelines.graphs.train_pipeline does"
        )
    check_layout(layout)
    if resize is True or resize is False:
        raise ValueError("resize takes the (H, W) to resize the images to (or None), not a bool")
    if resize is not None:
        if size is not None:
            raise ValueError("give resize=(H, W) alone: the resized size is the size hint too")
        size = resize
    if size is not None and not is_node(size):
        size = _checked_size(size)
    device = images.device
    name = default_backend(device, layout, config) if backend is None else backend
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {tuple(BACKENDS)}, got {name!r}")
    for key in ((name, device), (name, config.paste), (name, config.centre), (name, layout)):
        if key in REFUSED:
            raise ValueError(_refusal(key, config))
    module = BACKENDS[name]
    fused = {}
    if resize is not None and module.FUSES_RESIZE:
        fused["resize"] = True
    elif resize is not None:
        images = resize_images(images, size)
    mixed, labels_b, params = module.build(
        images, labels, config, prob=sample_prob, layout=layout, normalize=normalize, size=size, **fused
    )
    if normalize is not None and not module.FUSES_NORMALIZE:
        mixed = normalize.apply(mixed)
    return Mixed(mixed, labels, labels_b, params.lam, params if return_params else None)


def _refusal(key: tuple[str, str], config: MixConfig) -> str:
    """``REFUSED[key]``, pointing only at backends that run the recipe (a CHW ResizeMix or SaliencyMix
    on native goes to python: ops runs neither)."""
    takers = [n for n in NAMES if n != key[0] and (n, key[1]) not in REFUSED]
    takers = [n for n in takers if not {(n, config.paste), (n, config.centre)} & REFUSED.keys()]
    if key[1] in ("HWC", "CHW") and takers:
        return (
            f"backend '{key[0]}' takes {'HWC' if key[1] == 'CHW' else 'CHW'} images; use backend "
            + " or ".join(repr(n) for n in takers)
            + f" for {key[1]}"
        )
    return REFUSED[key]


def default_backend(device: str, layout: str = "HWC", config: MixConfig | None = None) -> str:
    """The backend ``cutmix(backend=None)`` takes on ``device`` for ``config``: ``DEFAULT_BACKEND``'s,
    except on the CPU when the native operator is out of reach (CHW images, a recipe it does not
    run; or it cannot be built or loaded: then one line on stderr, once per process, says why and
    how to get it) -> the python backend."""
    name = DEFAULT_BACKEND[device]
    if name != "native":
        return name
    if (name, layout) in REFUSED or (
        config is not None and {(name, config.paste), (name, config.centre)} & REFUSED.keys()
    ):
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


def epoch_prob(config: MixConfig, batch_size: int, steps_per_epoch: int, start_epoch: int = 0):
    """Each batch's chance of mixing from ``config``'s per-epoch schedule, as a CPU float32
    DataNode of one value a sample: what ``cutmix(..., sample_prob=)`` takes for a scheduled
    recipe, inside any ``@pipeline_def``. ``steps_per_epoch``: the pipeline's runs an epoch;
    ``start_epoch``: the epoch of its first batch (a resumed pipeline keeps its place: the feed
    counts DALI's own iterations, which its checkpoints restore)."""
    feed = EpochFeed(checked_prob(config.prob_at), np.float32, batch_size, steps_per_epoch, start_epoch)
    return fn.external_source(source=feed, batch=True, batch_info=True, dtype=types.FLOAT)


def checked_prob(schedule):
    """``schedule`` (epoch -> chance), each value checked as every chance of mixing is."""

    def prob(epoch: int) -> float:
        value = float(schedule(epoch))
        check_prob(value, f"the chance of mixing in epoch {epoch}")
        return value

    return prob


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
