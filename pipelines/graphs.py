"""ImageNet training and validation pipelines, after DALI's ResNet-50 example.

Graph fragments are plain DataNode -> DataNode functions; the ``@pipeline_def`` graphs only wire
them; :func:`train_pipeline` and :func:`val_pipeline` resolve the data and build a ready
``Pipeline`` whose reader is named ``"Reader"`` (for DALI's PyTorch iterators).

Train outputs: ``images`` (B, 3, S, S) normalised float on the CPU, (B, S, S, 3) on the GPU (the
loader hands it on as a channels_last NCHW view), or (B, S, S, 3) uint8 with ``uint8=True``;
``labels_a``, ``labels_b`` (B, 1) int32, ``lam`` (B,) float32. Val outputs: ``images``, ``labels``.
A GPU pipeline's outputs are all on the GPU.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import nvidia.dali.fn as fn
from nvidia.dali import pipeline_def, types

from dali_cutmix.ops import Normalize, checked_prob, cutmix, native_available, replay_params, resize_images
from dali_cutmix.recipe import MixConfig
from dali_cutmix.schedule import EpochFeed

from .settings import VAL_CROP, LoaderSettings
from .sources import Source, kind_of, load_source

READER_NAME = "Reader"
MEAN = [0.485 * 255, 0.456 * 255, 0.406 * 255]
STD = [0.229 * 255, 0.224 * 255, 0.225 * 255]
DEFAULT_RECIPE = MixConfig()  # CutMix as in the paper: Beta(1, 1), every batch


# nvJPEG's per-thread buffers (DALI preallocates one device buffer and two pinned host buffers of
# these sizes per thread): DALI's defaults, and DALI's ResNet-50 example's for ImageNet's largest.
DALI_PADDINGS = {"device_memory_padding": 16 << 20, "host_memory_padding": 8 << 20}
IMAGENET_PADDINGS = {"device_memory_padding": 211025920, "host_memory_padding": 140544512}


# The largest image in ImageNet's training set, as DALI's ResNet-50 example gives it to nvJPEG's
# hardware decoder (preallocate_width_hint / preallocate_height_hint).
IMAGENET_LARGEST = (5980, 6430)
# The share of the JPEGs the hardware decoder (A100, H100) takes; the rest go to the hybrid path,
# whose Huffman stage runs on the CPU threads (docs/DESIGN.md, "The GPU decoder").
HW_DECODER_LOAD = 0.9


def decoder_hints(source: Source, sample: int = 256) -> dict[str, int]:
    """nvJPEG's sizes from the data: its per-thread buffers (``device_memory_padding``,
    ``host_memory_padding``: the largest decoded image among the headers of up to ``sample`` files
    spread over the split, +25%, between DALI's defaults and the ImageNet example's), and the
    hardware decoder's preallocation (``preallocate_width_hint``, ``preallocate_height_hint``: the
    sampled largest width and height, never below ImageNet's largest image, which a sample of 256
    headers out of 1.28 M would rarely meet). Shards are not opened here: DALI's default paddings
    (nvJPEG grows a buffer when an image needs more) and ImageNet's hints."""
    largest = widest = tallest = 0
    if kind_of(source).files_on_disk and len(source):
        from PIL import Image

        step = max(1, len(source) // sample)
        for path in source.files[::step][:sample]:
            try:
                with Image.open(path) as im:
                    largest = max(largest, im.width * im.height * 3)
                    widest, tallest = max(widest, im.width), max(tallest, im.height)
            except OSError:  # the scan has its say on broken files; the size is a hint
                continue
    want = -(-largest * 5 // 4 // (1 << 20)) << 20  # +25%, whole MiB
    hints = {key: min(max(want, DALI_PADDINGS[key]), IMAGENET_PADDINGS[key]) for key in DALI_PADDINGS}
    hints["preallocate_width_hint"] = max(widest, IMAGENET_LARGEST[0])
    hints["preallocate_height_hint"] = max(tallest, IMAGENET_LARGEST[1])
    return hints


def _decoder_kwargs(device: str, hints: dict[str, int] | None) -> dict:
    if device != "gpu":
        return {"device": "cpu"}
    return {"device": "mixed", "hw_decoder_load": HW_DECODER_LOAD, **(hints or DALI_PADDINGS)}


def decode_random_crop(jpegs, *, device: str, random_area=(0.08, 1.0), hints=None):
    """Decode only the random crop (``random_area`` of the image, 8%-100% by default; aspect
    3/4-4/3): HWC uint8 of each crop's own size. ``hints``: nvJPEG's sizes (GPU:
    :func:`decoder_hints`; DALI's default paddings if None)."""
    return fn.decoders.image_random_crop(
        jpegs,
        output_type=types.RGB,
        random_area=[float(v) for v in random_area],
        random_aspect_ratio=[3 / 4, 4 / 3],
        num_attempts=100,
        **_decoder_kwargs(device, hints),
    )


def decode_center(jpegs, *, device: str, image_size: int, hints=None):
    """Resize the shorter side to ``image_size / VAL_CROP``: (S', >=S', 3) uint8, cropped later."""
    # No hardware-decoder preallocation for validation (DALI's ResNet-50 example gives none): only
    # the paddings.
    paddings = None if hints is None else {k: v for k, v in hints.items() if k.endswith("_padding")}
    images = fn.decoders.image(jpegs, output_type=types.RGB, **_decoder_kwargs(device, paddings))
    return fn.resize(images, resize_shorter=int(image_size / VAL_CROP), interp_type=types.INTERP_TRIANGULAR)


@pipeline_def(enable_conditionals=False)
def _train_graph(split, *, image_size, random_area, device, shard_id, num_shards, shuffle_seed, fp16, uint8, hints,
                 layout, mix, prob_source, size_source, return_params):  # fmt: skip
    share = dict(shard_id=shard_id, num_shards=num_shards, name=READER_NAME)
    jpegs, labels = split.read(shuffle=True, seed=shuffle_seed, **share)
    size = (image_size, image_size)
    if size_source is not None:  # progressive resizing: each batch's side from its epoch, no rebuild
        side = fn.external_source(source=size_source, batch=True, batch_info=True, dtype=types.INT32)
        size = fn.cat(fn.reshape(side, shape=[1]), fn.reshape(side, shape=[1]))  # int32 (H, W) a sample
    images = decode_random_crop(jpegs, device=device, random_area=random_area, hints=hints)
    # The flip comes after the mix so it fuses into the normalisation; flipping a mixed image
    # equals mixing flipped images with a flipped box, so the distribution is the same.
    mirror = fn.random.coin_flip()
    norm = _normalize(fp16, uint8, layout, mirror=mirror)
    recipe, backend = mix
    if recipe is None and _native_unmixed(device, backend):  # the native operator at prob 0: its fused resize
        mixed = cutmix(images, labels, MixConfig(prob=0.0), backend="native", normalize=norm, resize=size)
        outputs = mixed.images, labels, labels, mixed.lam  # lam: 1.0
    elif recipe is None:
        outputs = norm.apply(resize_images(images, size)), labels, labels, fn.ones(shape=[], dtype=types.FLOAT)  # lam
    else:
        prob = None
        if prob_source is not None:
            prob = fn.external_source(source=prob_source, batch=True, batch_info=True, dtype=types.FLOAT)
        # The native backend (the CPU default) resizes, mixes and normalises in one pass; the
        # others resize first (dali_cutmix.ops). The size is known, so GPU images never reach the
        # CPU sampler.
        mixed = cutmix(images, labels, recipe, sample_prob=prob, backend=backend, normalize=norm, resize=size,
                       return_params=return_params)  # fmt: skip
        outputs = tuple(mixed) + (replay_params(mixed.params) if return_params else ())
    if return_params:
        outputs += (mirror,)
    return on_device(outputs, device)


@pipeline_def(enable_conditionals=False)
def _val_graph(split, *, image_size, device, shard_id, num_shards, fp16, uint8, hints, layout):
    jpegs, labels = split.read(shard_id=shard_id, num_shards=num_shards, shuffle=False, seed=0, name=READER_NAME)
    images = decode_center(jpegs, device=device, image_size=image_size, hints=hints)
    return on_device((_normalize(fp16, uint8, layout).apply(images, crop=(image_size, image_size)), labels), device)


def _native_unmixed(device: str, backend: str | None) -> bool:
    """Whether a pipeline without mixing runs the native operator at prob 0 (its fused resize and
    normalisation, the fastest CPU path): on the CPU, asked for (``backend="native"``: an error
    when it cannot be had) or by default where it can be built; another backend asked for gets
    DALI's own resize and ``crop_mirror_normalize``."""
    if device != "cpu" or backend not in (None, "native"):
        return False
    return backend == "native" or native_available()


def _normalize(fp16: bool, uint8: bool, layout: str, mirror=False) -> Normalize:
    """ImageNet's mean/std to float in ``layout`` (``LoaderSettings.image_layout``: HWC on the GPU,
    which the loader hands on as a channels_last NCHW view); ``uint8``: HWC uint8, flipped only (the
    trainer's device normalises: :class:`dali_cutmix.device.DeviceNormalize`, same MEAN and STD)."""
    return Normalize(mean=MEAN, std=STD, mirror=mirror, fp16=fp16, uint8=uint8, output_layout=layout)


def on_device(outputs: tuple, device: str) -> tuple:
    """A GPU pipeline's outputs all on the GPU, moved inside the graph (as DALI's ResNet-50 example
    does with its labels): the loader then hands torch only device memory that DALI has
    synchronised, never DALI's host buffers (pinned ones, which torch.from_dlpack refuses, or
    pageable ones that DALI recycles before a non-blocking copy has read them)."""
    return tuple(o.gpu() if device == "gpu" and o.device == "cpu" else o for o in outputs)


def train_pipeline(
    data: LoaderSettings | str | os.PathLike | Source,
    *,
    recipe: MixConfig | None = DEFAULT_RECIPE,
    backend: str | None = None,
    return_params: bool = False,
    steps_per_epoch: int | None = None,
    start_epoch: int = 0,
    checkpoint: str | None = None,
    source: Source | None = None,
    **settings,
):
    """The training pipeline, built and checkpointable (DALI's ``enable_checkpointing``).

    data: :class:`pipelines.settings.LoaderSettings`, or its ``data`` with its other fields as
        keywords (``batch_size=`` at least).
    recipe: the mixing, passed untouched to :func:`dali_cutmix.cutmix`; None: no mixing (``lam`` 1).
    backend: as in :func:`dali_cutmix.cutmix` (None: the device's default).
    return_params: the outputs go on with :func:`output_names`' extras (partner, box, blend, flip).
    steps_per_epoch: pipeline runs an epoch; needed by a recipe whose chance of mixing changes by
        epoch and by a size schedule (each batch's value is fed from its epoch at run time).
    start_epoch: the epoch the pipeline's first batch belongs to (and its seeds' origin).
    checkpoint: a string from an earlier pipeline of the same arguments: resumes its reader
        position and random streams exactly.
    source: the settings' data already loaded (:func:`pipelines.sources.load_source`); None: loaded here.
    Outputs: see the module's docstring; on the GPU every output is a GPU tensor.
    """
    s = LoaderSettings.of(data, **settings)
    split = source if source is not None else load_source(s.data)
    shard_id, num_shards = s.shard()
    schedule = recipe.prob_at if recipe is not None and recipe.scheduled else None
    prob_source = size_source = None
    if (schedule is not None or s.size_schedule) and not steps_per_epoch:
        raise ValueError("a scheduled recipe or size needs steps_per_epoch (the loaders give it)")
    if schedule is not None:
        prob_source = EpochFeed(checked_prob(schedule), np.float32, s.batch_size, steps_per_epoch, start_epoch)
    if s.size_schedule:
        at = functools.partial(s.size_schedule.at, default=s.image_size)
        size_source = EpochFeed(at, np.int32, s.batch_size, steps_per_epoch, start_epoch)
    return _train_graph(
        split,
        image_size=s.image_size,
        random_area=s.random_area,
        device=s.device,
        shard_id=shard_id,
        num_shards=num_shards,
        shuffle_seed=s.seed_of("shuffle", start_epoch),
        fp16=s.fp16,
        uint8=s.ships_uint8(),
        hints=decoder_hints(split) if s.device == "gpu" else None,
        layout=s.image_layout(),
        mix=(recipe, backend),
        prob_source=prob_source,
        size_source=size_source,
        return_params=return_params,
        batch_size=s.batch_size,
        num_threads=s.threads(),
        device_id=s.gpu(),
        seed=s.seed_of("augment", start_epoch),
        prefetch_queue_depth=s.prefetch_queue_depth,
        enable_checkpointing=True,
        checkpoint=checkpoint,
    )


def val_pipeline(data: LoaderSettings | str | os.PathLike | Source, *, source: Source | None = None, **settings):
    """The validation pipeline: shorter side to ``image_size / VAL_CROP``, centre crop, normalise.

    data: :class:`pipelines.settings.LoaderSettings` (its ``classes``: the training classes), or
        its ``data`` with its other fields as keywords.
    source: the settings' data already loaded; None: loaded here.
    """
    s = LoaderSettings.of(data, **settings)
    split = source if source is not None else load_source(s.data, s.classes)
    shard_id, num_shards = s.shard()
    return _val_graph(
        split,
        image_size=s.image_size,
        device=s.device,
        shard_id=shard_id,
        num_shards=num_shards,
        fp16=s.fp16,
        uint8=s.ships_uint8(),
        hints=decoder_hints(split) if s.device == "gpu" else None,
        layout=s.image_layout(),
        batch_size=s.batch_size,
        num_threads=s.threads(),
        device_id=s.gpu(),
        seed=s.seed,
    )


def output_names(recipe: MixConfig | None, return_params: bool = False) -> tuple[str, ...]:
    """The names of :func:`train_pipeline`'s outputs, in order."""
    names = ("images", "labels_a", "labels_b", "lam")
    if not return_params:
        return names
    params = () if recipe is None else ("perm", "boxes") + (("blend",) if recipe.mixup else ())
    return names + params + ("mirror",)
