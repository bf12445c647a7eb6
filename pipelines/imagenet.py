"""ImageNet training and validation pipelines, after DALI's ResNet-50 example.

Graph fragments are plain DataNode -> DataNode functions; the ``@pipeline_def`` graphs only wire
them; :func:`train_pipeline` and :func:`val_pipeline` resolve the data and build a ready
``Pipeline`` whose reader is named ``"Reader"`` (for DALI's PyTorch iterators).

Train outputs: ``images`` (B, 3, S, S) normalised float (or (B, S, S, 3) uint8 with ``uint8=True``),
``labels_a``, ``labels_b`` (B, 1) int32, ``lam`` (B,) float32. Val outputs: ``images``, ``labels``.
A GPU pipeline's outputs are all on the GPU.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import nvidia.dali.fn as fn
from nvidia.dali import pipeline_def, types

from dali_cutmix.errors import UserError
from dali_cutmix.mix import MixConfig, check_prob
from dali_cutmix.ops import Normalize, cutmix, replay_params, resize_images

from .files import Split
from .sources import Source, load_source

READER_NAME = "Reader"
MEAN = [0.485 * 255, 0.456 * 255, 0.406 * 255]
STD = [0.229 * 255, 0.224 * 255, 0.225 * 255]
DEVICES = ("cpu", "gpu")
MIN_IMAGE_SIZE = 16  # the smallest crop side the pipelines take (train.py's --image-size too)
MAX_IMAGE_SIZE = 4096  # the largest: beyond it is a typo, which DALI would allocate for every sample
DEFAULT_RECIPE = MixConfig()  # CutMix as in the paper: Beta(1, 1), every batch


# nvJPEG's per-thread buffers (DALI preallocates one device buffer and two pinned host buffers of
# these sizes per thread): DALI's defaults, and DALI's ResNet-50 example's for ImageNet's largest.
DALI_PADDINGS = {"device_memory_padding": 16 << 20, "host_memory_padding": 8 << 20}
IMAGENET_PADDINGS = {"device_memory_padding": 211025920, "host_memory_padding": 140544512}


def nvjpeg_paddings(source: Source, sample: int = 256) -> dict[str, int]:
    """nvJPEG's paddings sized from the data: the largest decoded image (H x W x 3 bytes, from
    the headers of up to ``sample`` files spread over the split) with a quarter to spare, between
    DALI's defaults and the ImageNet example's sizes. Shards are not opened here: DALI's defaults
    (nvJPEG grows a buffer when an image needs more)."""
    if not isinstance(source, Split) or not len(source):
        return dict(DALI_PADDINGS)
    from PIL import Image

    step = max(1, len(source) // sample)
    largest = 0
    for path in source.files[::step][:sample]:
        try:
            with Image.open(path) as im:
                largest = max(largest, im.width * im.height * 3)
        except OSError:  # the scan has its say on broken files; the size is a hint
            continue
    want = -(-largest * 5 // 4 // (1 << 20)) << 20  # +25%, whole MiB
    return {key: min(max(want, DALI_PADDINGS[key]), IMAGENET_PADDINGS[key]) for key in DALI_PADDINGS}


def _decoder_kwargs(device: str, paddings: dict[str, int]) -> dict:
    return {"device": "mixed", **paddings} if device == "gpu" else {"device": "cpu"}


def decode_random_crop(jpegs, *, device: str, random_area=(0.08, 1.0), paddings=None):
    """Decode only the random crop (``random_area`` of the image, 8%-100% by default; aspect
    3/4-4/3): HWC uint8 of each crop's own size. ``paddings``: nvJPEG's (GPU; DALI's defaults if
    None)."""
    return fn.decoders.image_random_crop(
        jpegs,
        output_type=types.RGB,
        random_area=[float(v) for v in random_area],
        random_aspect_ratio=[3 / 4, 4 / 3],
        num_attempts=100,
        **_decoder_kwargs(device, paddings or DALI_PADDINGS),
    )


def decode_center(jpegs, *, device: str, image_size: int, paddings=None):
    """Resize the shorter side to ``image_size / 0.875``: (S', >=S', 3) uint8, cropped later."""
    images = fn.decoders.image(jpegs, output_type=types.RGB, **_decoder_kwargs(device, paddings or DALI_PADDINGS))
    return fn.resize(images, resize_shorter=int(image_size / 0.875), interp_type=types.INTERP_TRIANGULAR)


@pipeline_def(enable_conditionals=False)
def _train_graph(split, *, image_size, random_area, device, shard_id, num_shards, shuffle_seed, fp16, uint8, paddings,
                 mix, prob_source, size_source, return_params):  # fmt: skip
    share = dict(shard_id=shard_id, num_shards=num_shards, name=READER_NAME)
    jpegs, labels = split.read(shuffle=True, seed=shuffle_seed, **share)
    size = (image_size, image_size)
    if size_source is not None:  # progressive resizing: each batch's side from its epoch, no rebuild
        side = fn.external_source(source=size_source, batch=True, batch_info=True, dtype=types.INT32)
        size = fn.cat(fn.reshape(side, shape=[1]), fn.reshape(side, shape=[1]))  # int32 (H, W) a sample
    images = decode_random_crop(jpegs, device=device, random_area=random_area, paddings=paddings)
    # The flip comes after the mix so it fuses into the normalisation; flipping a mixed image
    # equals mixing flipped images with a flipped box, so the distribution is the same.
    mirror = fn.random.coin_flip()
    norm = _normalize(fp16, uint8, mirror=mirror)
    if mix is None and device == "cpu":  # the native operator at prob 0: its fused resize, no mixing
        mixed = cutmix(images, labels, MixConfig(prob=0.0), backend="native", normalize=norm, size=size, resize=True)
        outputs = mixed.images, labels, labels, mixed.lam  # lam: 1.0
    elif mix is None:
        outputs = norm.apply(resize_images(images, size)), labels, labels, fn.ones(shape=[], dtype=types.FLOAT)  # lam
    else:
        recipe, backend = mix
        prob = None
        if prob_source is not None:
            prob = fn.external_source(source=prob_source, batch=True, batch_info=True, dtype=types.FLOAT)
        # The native backend (the CPU default) resizes, mixes and normalises in one pass; the
        # others resize first (dali_cutmix.ops). The size is known, so GPU images never reach the
        # CPU sampler.
        mixed = cutmix(images, labels, recipe, sample_prob=prob, backend=backend, normalize=norm, size=size,
                       resize=True, return_params=return_params)  # fmt: skip
        outputs = tuple(mixed) + (replay_params(mixed.params) if return_params else ())
    if return_params:
        outputs += (mirror,)
    return on_device(outputs, device)


@pipeline_def(enable_conditionals=False)
def _val_graph(split, *, image_size, device, shard_id, num_shards, fp16, uint8, paddings):
    jpegs, labels = split.read(shard_id=shard_id, num_shards=num_shards, shuffle=False, seed=0, name=READER_NAME)
    images = decode_center(jpegs, device=device, image_size=image_size, paddings=paddings)
    return on_device((_normalize(fp16, uint8).apply(images, crop=(image_size, image_size)), labels), device)


def _normalize(fp16: bool, uint8: bool, mirror=False) -> Normalize:
    """ImageNet's mean/std to CHW float; ``uint8``: HWC uint8, flipped only (the trainer's device
    normalises: :class:`dali_cutmix.device.DeviceNormalize` with the same MEAN and STD)."""
    return Normalize(mean=MEAN, std=STD, mirror=mirror, fp16=fp16, uint8=uint8, output_layout="HWC" if uint8 else "CHW")


def on_device(outputs: tuple, device: str) -> tuple:
    """A GPU pipeline's outputs all on the GPU, moved inside the graph (as DALI's ResNet-50 example
    does with its labels): the loader then hands torch only device memory that DALI has
    synchronised, never DALI's host buffers (pinned ones, which torch.from_dlpack refuses, or
    pageable ones that DALI recycles before a non-blocking copy has read them)."""
    return tuple(o.gpu() if device == "gpu" and o.device == "cpu" else o for o in outputs)


def _common(data, batch_size, image_size, device, num_threads, shard_id, num_shards, fp16, uint8, classes):
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    for name, value, low in (
        ("batch_size", batch_size, 1),
        ("image_size", image_size, MIN_IMAGE_SIZE),
        ("num_threads", num_threads, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    if image_size > MAX_IMAGE_SIZE:
        raise ValueError(f"image_size must be <= {MAX_IMAGE_SIZE}, got {image_size}")
    if not 0 <= shard_id < num_shards:
        raise ValueError(f"shard_id must be in [0, num_shards={num_shards}), got {shard_id!r}")
    if fp16 and device != "gpu":
        raise ValueError("fp16 output needs device='gpu'")
    _normalize(fp16, uint8)  # Normalize's own check of the output type, said before the graph is built
    split = load_source(data, classes)
    return split


def train_pipeline(
    data_dir: str | os.PathLike | Source,
    *,
    batch_size: int,
    recipe: MixConfig | None = DEFAULT_RECIPE,
    backend: str | None = None,
    image_size: int = 224,
    random_area: tuple[float, float] = (0.08, 1.0),
    device: str = "cpu",
    device_id: int | None = None,
    num_threads: int = 4,
    seed: int = 0,
    shard_id: int = 0,
    num_shards: int = 1,
    fp16: bool = False,
    uint8: bool = False,
    return_params: bool = False,
    steps_per_epoch: int | None = None,
    start_epoch: int = 0,
    prefetch_queue_depth: int = 2,
    checkpoint: str | None = None,
    size_schedule: SizeSchedule | None = None,
):
    """The training pipeline on ``data_dir``: a ``<class>/<image>`` folder, a file list, WebDataset
    shards (a ``.tar`` pattern or folder), or a loaded Split or Shards (:func:`pipelines.sources.load_source`).

    ``recipe``: the mixing, one :class:`dali_cutmix.mix.MixConfig` passed untouched to
    :func:`dali_cutmix.cutmix` (None: no mixing, ``lam`` is 1); ``backend`` as there. A recipe
    whose chance of mixing changes by epoch (``prob_schedule``, ``off_epoch``) needs
    ``steps_per_epoch`` (the loader passes it): each batch's chance is fed by a tiny external
    source.
    ``seed`` drives augmentation and mixing; the shuffle is seeded by ``seed`` alone so that all
    shards agree on the global order and together cover the dataset once per epoch.
    The pipeline is checkpointable (DALI's ``enable_checkpointing``): ``checkpoint``, a string from
    an earlier pipeline of the same arguments, resumes its reader position and random streams
    exactly, the schedule's batch counter included (``start_epoch`` is then the epoch at which
    that earlier pipeline started).
    ``uint8``: images come out ``(B, S, S, 3)`` uint8, flipped but not normalised, for a trainer
    whose device normalises them (:class:`dali_cutmix.device.DeviceNormalize` with MEAN and STD;
    the loaders do it when a CPU pipeline feeds a GPU). On the GPU every output is a GPU tensor.
    ``return_params``: the outputs go on with :func:`output_names`' extras: each sample's partner,
    box and (MixUp on) blend flag, and whether it was flipped (after the mix).
    ``size_schedule``: progressive resizing, the crop side by epoch (:class:`SizeSchedule`; needs
    ``steps_per_epoch``, as a scheduled recipe does): each batch's side is fed at run time from
    its epoch, so the pipeline is never rebuilt and resumes exactly; ``image_size`` applies
    before its first epoch.
    """
    split = _common(data_dir, batch_size, image_size, device, num_threads, shard_id, num_shards, fp16, uint8, None)
    for side in size_schedule.sizes() if size_schedule else ():
        _common(split, batch_size, side, device, num_threads, shard_id, num_shards, fp16, uint8, None)
    lo, hi = random_area
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"random_area must be (min, max) with 0 < min <= max <= 1, got {tuple(random_area)}")
    schedule = recipe.prob_at if recipe is not None and recipe.scheduled else None
    prob_source = size_source = None
    if (schedule is not None or size_schedule) and not steps_per_epoch:
        raise ValueError("a scheduled recipe or size needs steps_per_epoch (the loaders give it)")
    if schedule is not None:
        prob_source = EpochFeed(_checked_prob(schedule), np.float32, batch_size, steps_per_epoch, start_epoch)
    if size_schedule:
        at = functools.partial(size_schedule.at, default=image_size)
        size_source = EpochFeed(at, np.int32, batch_size, steps_per_epoch, start_epoch)
    pipe = _train_graph(
        split,
        image_size=image_size,
        random_area=(lo, hi),
        device=device,
        shard_id=shard_id,
        num_shards=num_shards,
        shuffle_seed=seed,
        fp16=fp16,
        uint8=uint8,
        paddings=nvjpeg_paddings(split) if device == "gpu" else None,
        mix=None if recipe is None else (recipe, backend),
        prob_source=prob_source,
        size_source=size_source,
        return_params=return_params,
        batch_size=batch_size,
        num_threads=num_threads,
        device_id=_device_id(device, device_id),
        seed=seed * 1000 + shard_id,
        prefetch_queue_depth=prefetch_queue_depth,
        enable_checkpointing=True,
        checkpoint=checkpoint,
    )
    return pipe


def val_pipeline(
    data_dir: str | os.PathLike | Source,
    *,
    batch_size: int,
    image_size: int = 224,
    device: str = "cpu",
    device_id: int | None = None,
    num_threads: int = 4,
    seed: int = 0,
    shard_id: int = 0,
    num_shards: int = 1,
    fp16: bool = False,
    uint8: bool = False,
    classes: list[str] | None = None,
):
    """The validation pipeline: shorter side to ``image_size / 0.875``, centre crop, normalise
    (``uint8`` as in :func:`train_pipeline`)."""
    split = _common(data_dir, batch_size, image_size, device, num_threads, shard_id, num_shards, fp16, uint8, classes)
    pipe = _val_graph(
        split,
        image_size=image_size,
        device=device,
        shard_id=shard_id,
        num_shards=num_shards,
        fp16=fp16,
        uint8=uint8,
        paddings=nvjpeg_paddings(split) if device == "gpu" else None,
        batch_size=batch_size,
        num_threads=num_threads,
        device_id=_device_id(device, device_id),
        seed=seed,
    )
    return pipe


def output_names(recipe: MixConfig | None, return_params: bool = False) -> tuple[str, ...]:
    """The names of :func:`train_pipeline`'s outputs, in order."""
    names = ("images", "labels_a", "labels_b", "lam")
    if not return_params:
        return names
    params = () if recipe is None else ("perm", "boxes") + (("blend",) if recipe.mixup else ())
    return names + params + ("mirror",)


def _device_id(device: str, device_id: int | None) -> int | None:
    """A GPU pipeline's GPU: ``device_id``, by default this process's (``LOCAL_RANK``, else the current one)."""
    if device != "gpu":
        return None
    from dali_cutmix.loader import process_device

    return process_device() if device_id is None else device_id


@dataclass(frozen=True)
class SizeSchedule:
    """Progressive resizing: ``(epoch, side)`` pairs, each side in force from its epoch on, as
    ``--size-schedule 0:160,10:192`` gives them (FFCV trains at 160 -> 192, fast.ai 128 -> 224 -> 288)."""

    steps: tuple[tuple[int, int], ...]

    def __post_init__(self) -> None:
        epochs = [int(e) for e, _ in self.steps]
        if len(set(epochs)) != len(epochs):
            raise UserError(f"size schedule: epoch {next(e for e in epochs if epochs.count(e) > 1)} is given twice")
        steps = tuple(sorted((int(e), int(s)) for e, s in self.steps))
        object.__setattr__(self, "steps", steps)
        for epoch, side in steps:
            if epoch < 0 or not MIN_IMAGE_SIZE <= side <= MAX_IMAGE_SIZE:
                raise UserError(f"size schedule: {epoch}:{side} needs an epoch >= 0 and a side in "
                                f"[{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}]")  # fmt: skip

    @classmethod
    def parse(cls, text: str) -> SizeSchedule:
        """``"0:160,10:192"`` -> the schedule; ``UserError`` for text of another form."""
        try:
            pairs = [tuple(int(v) for v in item.split(":")) for item in text.split(",") if item.strip()]
            if not pairs or any(len(p) != 2 for p in pairs):
                raise ValueError(text)
        except ValueError:
            raise UserError(f"size schedule {text!r}: expected EPOCH:SIDE pairs such as 0:160,10:192") from None
        return cls(tuple(pairs))

    def text(self) -> str:
        """The schedule as ``--size-schedule`` spells it, in epoch order: one spelling a schedule."""
        return ",".join(f"{e}:{side}" for e, side in self.steps)

    def at(self, epoch: int, default: int) -> int:
        """The side in force in ``epoch`` (``default`` before the first step)."""
        side = default
        for start, value in self.steps:
            if epoch >= start:
                side = value
        return side

    def sizes(self) -> list[int]:
        return [side for _, side in self.steps]


def _checked_prob(schedule: Callable[[int], float]) -> Callable[[int], float]:
    def prob(epoch: int) -> float:
        value = float(schedule(epoch))
        check_prob(value, f"the chance of mixing in epoch {epoch}")
        return value

    return prob


class EpochFeed:
    """External-source callback: every sample of a batch gets ``value_at(epoch)`` of its epoch
    (the chance of mixing, the crop side).

    DALI prefetches, so the loader's notion of "current epoch" runs behind the pipeline; the
    batch's own iteration number (``BatchInfo.iteration``, which DALI's checkpoints restore) tells
    its epoch exactly.
    """

    def __init__(self, value_at: Callable[[int], float], dtype, batch_size: int, steps_per_epoch: int,
                 start_epoch: int):  # fmt: skip
        self.value_at, self.dtype, self.batch_size = value_at, dtype, batch_size
        self.steps_per_epoch, self.start_epoch = steps_per_epoch, start_epoch

    def __call__(self, info) -> list[np.ndarray]:
        epoch = self.start_epoch + info.iteration // self.steps_per_epoch
        return [np.asarray(self.value_at(epoch), self.dtype)] * self.batch_size
