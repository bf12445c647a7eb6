"""A loader's settings: one frozen object, built once (by ``train.py``, the Lightning module or a
user) and passed untouched to the loader and its pipeline, as the recipe (``MixConfig``) is.

    settings = LoaderSettings("/imagenet/train", batch_size=256, device="gpu",
                              size_schedule=SizeSchedule.parse("0:160,10:192"))
    loader = train_loader(settings, recipe=MixConfig(alpha=1.0))

Every check of a setting is here (:class:`SettingError` names the argument); what a setting left
as None resolves to (this process's shard and GPU, uint8 output) is a method, computed where it
is used, never written back.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from dali_cutmix.errors import UserError
from dali_cutmix.seeds import MAX_SEED, derive_seed

DEVICES = ("cpu", "gpu")
MIN_IMAGE_SIZE = 16  # the smallest crop side the pipelines take
MAX_IMAGE_SIZE = 4096  # the largest: beyond it is a typo, which DALI would allocate for every sample
VAL_CROP = 0.875  # validation: the shorter side resized to image_size / VAL_CROP, then the centre crop


def process_threads() -> int:
    """This process's share of the node's cores: the cores it may run on divided by the processes
    a launcher started on the node (torchrun's ``LOCAL_WORLD_SIZE``), at least 1. The default of
    the pipelines' threads and the bad-file check's workers, for training and validation alike
    (DeepLearningExamples' rule); those threads also run the python backend's sampler and callback."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)))


class SettingError(UserError, ValueError):
    """A setting out of its range: ``"<name> <reason>"``; ``name`` is the argument's, which
    ``train.py`` maps to its flag."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"{name} {reason}")
        self.name, self.reason = name, reason


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


@dataclass(frozen=True)
class LoaderSettings:
    """What a loader reads and how.

    data: a ``<class>/<image>`` folder, a file list, WebDataset shards (a ``.tar`` pattern or
        folder), or a loaded Split or Shards (:func:`pipelines.sources.load_source`).
    batch_size: samples per batch, per process.
    image_size: the crop's side in pixels (training: before a size schedule's first epoch).
    size_schedule: progressive resizing (training), or None.
    random_area: (min, max), the share of the image a training crop covers.
    device: ``"cpu"`` or ``"gpu"``, where the pipeline decodes and mixes.
    device_id: a GPU pipeline's GPU; None: this process's (:meth:`gpu`).
    torch_device: where the loader puts the batch; None: the pipeline's device.
    num_threads: the pipeline's CPU threads; None: this process's share of the node's cores
        (:func:`process_threads`, DeepLearningExamples' rule).
    seed: the one seed every random stream derives from (:mod:`dali_cutmix.seeds`).
    shard_id, num_shards: this process's share of the data; None (both): this process's rank and
        world size (:meth:`shard`).
    uint8: images leave the pipeline as HWC uint8 and the loader normalises them on
        ``torch_device``; None: when a CPU pipeline feeds a GPU (:meth:`ships_uint8`).
    fp16: float16 images (a GPU pipeline only).
    prefetch_queue_depth: batches DALI prepares ahead.
    classes: a validation source's class names, those of the training data it is scored against.
    """

    data: object
    batch_size: int
    image_size: int = 224
    size_schedule: SizeSchedule | None = None
    random_area: tuple[float, float] = (0.08, 1.0)
    device: str = "cpu"
    device_id: int | None = None
    torch_device: object = None
    num_threads: int | None = None
    seed: int = 0
    shard_id: int | None = None
    num_shards: int | None = None
    uint8: bool | None = None
    fp16: bool = False
    prefetch_queue_depth: int = 2
    classes: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise SettingError("device", f"must be one of {DEVICES}, got {self.device!r}")
        for name, low, high in (
            ("batch_size", 1, None),
            ("image_size", MIN_IMAGE_SIZE, MAX_IMAGE_SIZE),
            ("prefetch_queue_depth", 1, None),
            ("seed", 0, MAX_SEED),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low or (high and value > high):
                bounds = f"in [{low}, {high}]" if high else f">= {low}"
                raise SettingError(name, f"must be an int {bounds}, got {value!r}")
        if self.num_threads is not None and (isinstance(self.num_threads, bool) or not isinstance(self.num_threads, int)
                                             or self.num_threads < 1):  # fmt: skip
            raise SettingError("num_threads", f"must be an int >= 1 or None (the cores per local rank), got "
                               f"{self.num_threads!r}")  # fmt: skip
        if self.size_schedule is not None and not isinstance(self.size_schedule, SizeSchedule):
            raise SettingError("size_schedule", f"must be a SizeSchedule, got {self.size_schedule!r}")
        lo, hi = self.random_area
        if not 0 < lo <= hi <= 1:
            raise SettingError("random_area", "must be (min, max) with 0 < min <= max <= 1, got "
                               f"{tuple(self.random_area)}")  # fmt: skip
        object.__setattr__(self, "random_area", (float(lo), float(hi)))
        if (self.shard_id is None) != (self.num_shards is None):
            raise SettingError("shard_id", f"and num_shards go together, got {self.shard_id!r} and "
                               f"{self.num_shards!r}")  # fmt: skip
        if self.num_shards is not None and not 0 <= self.shard_id < self.num_shards:
            raise SettingError("shard_id", f"must be in [0, num_shards={self.num_shards}), got "
                               f"{self.shard_id!r}")  # fmt: skip
        if self.fp16 and self.device != "gpu":
            raise SettingError("fp16", "output needs device='gpu'")
        if self.classes is not None:
            object.__setattr__(self, "classes", tuple(self.classes))

    @classmethod
    def of(cls, data, **fields) -> LoaderSettings:
        """``data`` if it is settings already (then no other field may be given), else
        ``LoaderSettings(data, **fields)``: the loaders' and pipelines' keyword form."""
        if isinstance(data, LoaderSettings):
            if fields:
                raise TypeError(f"give settings or keyword arguments, not both: {', '.join(sorted(fields))}")
            return data
        return cls(data, **fields)

    def replace(self, **fields) -> LoaderSettings:
        """A new object with ``fields`` changed (this one is frozen)."""
        return dataclasses.replace(self, **fields)

    def shard(self) -> tuple[int, int]:
        """(shard_id, num_shards): the given ones, else this process's rank and world size."""
        if self.num_shards is not None:
            return self.shard_id, self.num_shards
        from dali_cutmix.loader import process_shard

        return process_shard()

    def gpu(self) -> int | None:
        """A GPU pipeline's GPU (``device_id``, else this process's: ``LOCAL_RANK``, else the
        current one); None on the CPU."""
        if self.device != "gpu":
            return None
        if self.device_id is not None:
            return self.device_id
        from dali_cutmix.loader import process_device

        return process_device()

    def output_device(self):
        """The torch device the loader puts batches on."""
        import torch

        if self.torch_device is not None:
            return torch.device(self.torch_device)
        return torch.device("cuda", self.gpu()) if self.device == "gpu" else torch.device("cpu")

    def ships_uint8(self) -> bool:
        """Whether images leave the pipeline as uint8 (by default when a CPU pipeline feeds a GPU:
        a quarter of the bytes to copy)."""
        if self.uint8 is not None:
            return self.uint8
        return self.device == "cpu" and self.torch_device is not None and self.output_device().type == "cuda"

    def threads(self) -> int:
        """The pipeline's CPU threads: ``num_threads``, else :func:`process_threads`."""
        return self.num_threads if self.num_threads is not None else process_threads()

    def image_layout(self) -> str:
        """How float images leave the pipeline: ``"HWC"`` on the GPU (the loader hands the trainer
        an NCHW view of them, channels_last in memory, so the step copies nothing), else ``"CHW"``;
        uint8 images always leave HWC."""
        return "HWC" if self.device == "gpu" or self.ships_uint8() else "CHW"

    def seed_of(self, stream: str, origin: int = 0) -> int:
        """The seed of one of the pipeline's random streams (:func:`dali_cutmix.seeds.derive_seed`),
        for this process's shard, the loader starting at epoch ``origin``."""
        return derive_seed(self.seed, stream, origin=origin, shard=self.shard()[0])
