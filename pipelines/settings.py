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
from dali_cutmix.schedule import parse_schedule, schedule_steps, schedule_text, value_at
from dali_cutmix.seeds import MAX_SEED, derive_seed

DEVICES = ("cpu", "gpu")
MIN_IMAGE_SIZE = 16  # the smallest crop side the pipelines take
MAX_IMAGE_SIZE = 4096  # the largest: beyond it is a typo, which DALI would allocate for every sample
VAL_CROP = 0.875  # validation: the shorter side resized to image_size / VAL_CROP, then the centre crop


def _is_int(value, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _check_int(name: str, value, low: int, high: int | None, alternative: str = "") -> None:
    if not _is_int(value, low) or (high is not None and value > high):
        bounds = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise SettingError(name, f"must be an int {bounds}{' ' + alternative if alternative else ''}, got {value!r}")


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
    ``--size-schedule 0:160,10:192`` gives them (FFCV trains at 160 -> 192, fast.ai 128 -> 224 -> 288).
    The house's one schedule type (:mod:`dali_cutmix.schedule`) with sides for values; a bad one
    is a :class:`SettingError` naming ``size_schedule``."""

    steps: tuple[tuple[int, int], ...]

    def __post_init__(self) -> None:
        try:
            steps = schedule_steps(self.steps, int, "size_schedule")
        except UserError as e:
            raise SettingError("size_schedule", str(e).removeprefix("size_schedule ")) from None
        for epoch, side in steps:
            if not MIN_IMAGE_SIZE <= side <= MAX_IMAGE_SIZE:
                raise SettingError("size_schedule", f"{epoch}:{side} needs a side in [{MIN_IMAGE_SIZE}, "
                                   f"{MAX_IMAGE_SIZE}]")  # fmt: skip
        object.__setattr__(self, "steps", steps)

    @classmethod
    def parse(cls, text: str) -> SizeSchedule:
        """``"0:160,10:192"`` -> the schedule; a :class:`SettingError` for text of another form."""
        try:
            return cls(parse_schedule(text, int, "size_schedule", "EPOCH:SIDE pairs such as 0:160,10:192"))
        except SettingError:
            raise
        except UserError as e:
            raise SettingError("size_schedule", str(e).removeprefix("size_schedule ")) from None

    def text(self) -> str:
        """The schedule as ``--size-schedule`` spells it, in epoch order: one spelling a schedule."""
        return schedule_text(self.steps)

    def at(self, epoch: int, default: int) -> int:
        """The side in force in ``epoch`` (``default`` before the first step)."""
        return value_at(self.steps, epoch, default)

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
        """Every field's type and range, checked here once: a :class:`SettingError` names the field."""
        if self.data is None:
            raise SettingError("data", "must name the images (a folder, a file list or shards), got None")
        if self.device not in DEVICES:
            raise SettingError("device", f"must be one of {DEVICES}, got {self.device!r}")
        for name, low, high in (
            ("batch_size", 1, None),
            ("image_size", MIN_IMAGE_SIZE, MAX_IMAGE_SIZE),
            ("prefetch_queue_depth", 1, None),
            ("seed", 0, MAX_SEED),
        ):
            _check_int(name, getattr(self, name), low, high)
        if self.num_threads is not None and not _is_int(self.num_threads, 1):
            raise SettingError("num_threads", f"must be an int >= 1 or None (the cores per local rank), got "
                               f"{self.num_threads!r}")  # fmt: skip
        if self.device_id is not None:
            _check_int("device_id", self.device_id, 0, None, "or None (this process's GPU)")
        for name in ("uint8", "fp16"):
            value = getattr(self, name)
            if not isinstance(value, bool) and not (name == "uint8" and value is None):
                raise SettingError(name, f"must be True or False{' or None' if name == 'uint8' else ''}, got {value!r}")
        if self.fp16 and self.uint8:
            raise SettingError("fp16", "and uint8 exclude each other: uint8 images are normalised on the trainer's "
                               "device (in the dtype it asks)")  # fmt: skip
        if self.size_schedule is not None and not isinstance(self.size_schedule, SizeSchedule):
            raise SettingError("size_schedule", f"must be a SizeSchedule, got {self.size_schedule!r}")
        area = self.random_area
        if isinstance(area, (str, bytes)) or not hasattr(area, "__len__") or len(area) != 2 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in area
        ):  # fmt: skip
            raise SettingError("random_area", f"must be (min, max), two numbers, got {area!r}")
        lo, hi = area
        if not 0 < lo <= hi <= 1:
            raise SettingError("random_area", f"must be (min, max) with 0 < min <= max <= 1, got {tuple(area)}")
        object.__setattr__(self, "random_area", (float(lo), float(hi)))
        if (self.shard_id is None) != (self.num_shards is None):
            raise SettingError("shard_id", f"and num_shards go together, got {self.shard_id!r} and "
                               f"{self.num_shards!r}")  # fmt: skip
        if self.num_shards is not None:
            _check_int("num_shards", self.num_shards, 1, None)
            _check_int("shard_id", self.shard_id, 0, None)
            if self.shard_id >= self.num_shards:
                raise SettingError("shard_id", f"must be in [0, num_shards={self.num_shards}), got {self.shard_id!r}")
        if self.fp16 and self.device != "gpu":
            raise SettingError("fp16", "output needs device='gpu'")
        if self.classes is not None:
            if isinstance(self.classes, (str, bytes)) or not all(isinstance(c, str) for c in self.classes):
                raise SettingError("classes", f"must be a list of class names, got {self.classes!r}")
            object.__setattr__(self, "classes", tuple(self.classes))
        if self.torch_device is not None:
            self._check_torch_device()

    def _check_torch_device(self) -> None:
        import torch

        try:
            device = torch.device(self.torch_device)
        except (RuntimeError, TypeError) as e:
            raise SettingError("torch_device", f"must be a torch device such as 'cpu' or 'cuda:0', got "
                               f"{self.torch_device!r} ({str(e).splitlines()[0]})") from None  # fmt: skip
        if device.type == "cuda" and not torch.cuda.is_available():
            raise SettingError("torch_device", f"is {self.torch_device!r}, but CUDA is not available on this machine")

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
