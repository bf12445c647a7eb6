"""A PyTorch loader over any built DALI pipeline (:class:`DALILoader`); ``pipelines.loaders``
builds the ImageNet ones.

Each ``for`` over a loader is one epoch; the DALI iterator is reset after it. DALI reuses its
output buffers, so a batch is valid until the next one is drawn (copy what you keep).

A GPU pipeline's outputs are GPU tensors (every output moved inside the graph), used in place; a
CPU pipeline's outputs bound for a GPU go through pinned memory that torch owns
(:func:`dali_cutmix.device.to_device`), never straight out of DALI's buffers.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Iterable, Iterator

import torch
from nvidia.dali.plugin.base_iterator import LastBatchPolicy
from nvidia.dali.plugin.pytorch import DALIGenericIterator

from .device import to_device
from .mix import MixConfig

POLICIES = {"partial": LastBatchPolicy.PARTIAL, "drop": LastBatchPolicy.DROP, "fill": LastBatchPolicy.FILL}


def process_shard() -> tuple[int, int]:
    """``(rank, world size)`` of this process: torch.distributed's once it is initialised (as
    Lightning, Accelerate and train.py do), else torchrun's ``RANK``/``WORLD_SIZE``, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def steps_per_epoch(num_samples: int, batch_size: int, num_shards: int = 1, last_batch: str = "partial") -> int:
    """Batches per epoch on every shard: DALI pads each shard (``pad_last_batch``) to the largest."""
    shard = math.ceil(num_samples / num_shards)
    return shard // batch_size if last_batch == "drop" else math.ceil(shard / batch_size)


class DALILoader:
    """Iterate a built DALI pipeline as tuples of torch tensors on ``device``.

    Integer label outputs come out as (B,) int64, ``lam`` as (B,) float32. ``normalize``: a
    callable applied to ``images`` on ``device`` (:class:`dali_cutmix.device.DeviceNormalize` for a
    pipeline that ships uint8). ``classes``: the class names, kept as ``loader.classes``.
    """

    def __init__(
        self,
        pipeline,
        output_map: Iterable[str],
        *,
        device: torch.device | str = "cpu",
        last_batch: str = "partial",
        start_epoch: int = 0,
        origin: int | None = None,
        reader_name: str = "Reader",
        normalize: Callable[[torch.Tensor], torch.Tensor] | None = None,
        classes: list[str] | None = None,
    ):
        if last_batch not in POLICIES:
            raise ValueError(f"last_batch must be one of {tuple(POLICIES)}, got {last_batch!r}")
        self.output_map = list(output_map)
        self.device = torch.device(device)
        self.classes = classes
        self.pipeline = pipeline
        self.normalize = normalize
        self.epoch = start_epoch
        self.origin = start_epoch if origin is None else origin  # the epoch of the pipeline's first batch
        self._closed = False
        self._it = DALIGenericIterator(
            [pipeline], self.output_map, reader_name=reader_name, last_batch_policy=POLICIES[last_batch]
        )

    def __len__(self) -> int:
        return len(self._it)

    def close(self) -> None:
        """Stop for good, as an interrupted run does: an epoch left open is not drained."""
        self._closed = True

    def state(self) -> dict:
        """Where the loader is, as plain data for a checkpoint: pass it back as ``train_loader(state=)``
        to continue with exactly the batches (files, crops, mixes) this loader would give next."""
        return {"dali": self._it.checkpoints()[0], "origin": self.origin}

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        """One epoch. Leaving the loop early drains the rest of the epoch, so the next ``for``
        starts a fresh epoch and per-epoch schedules stay aligned with the reader."""
        finished = False
        try:
            for batch in self._it:
                yield tuple(self._convert(name, batch[0][name]) for name in self.output_map)
            finished = True
        finally:
            while not finished and not self._closed:  # next(), not a for: DALI's __iter__ would reset
                try:
                    next(self._it)
                except StopIteration:
                    finished = True
            if finished:  # a loader closed mid-epoch stays where it is (DALI refuses a reset there)
                self._it.reset()
            self.epoch += 1

    def _convert(self, name: str, t: torch.Tensor) -> torch.Tensor:
        t = to_device(t, self.device)
        if name.startswith("label"):
            return t.reshape(-1).long()
        if name == "lam":
            return t.reshape(-1)
        if name == "images" and self.normalize is not None:
            return self.normalize(t)
        return t


def mix_schedule(prob: float, *, mix_off_epoch: int | None = None, changes: dict[int, float] | None = None):
    """Deprecated (goes in the next release): the schedule is part of the recipe,
    ``MixConfig(prob=prob, prob_schedule=changes, off_epoch=mix_off_epoch)``. Returns that
    recipe's ``epoch -> prob``, as the loaders' deprecated ``prob_schedule=`` took it."""
    warnings.warn("mix_schedule is deprecated and goes in the next release: give the schedule in the recipe, "
                  "MixConfig(prob_schedule=changes, off_epoch=mix_off_epoch)", DeprecationWarning,
                  stacklevel=2)  # fmt: skip
    return MixConfig(prob=prob, prob_schedule=changes or {}, off_epoch=mix_off_epoch).prob_at
