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
import re
from collections.abc import Callable, Iterable, Iterator

import torch
from nvidia.dali.plugin.base_iterator import LastBatchPolicy
from nvidia.dali.plugin.pytorch import DALIGenericIterator

from .device import to_device
from .errors import DataError


class DecodeFailed(DataError):
    """DALI failed to decode a file of the data (a file the bad-file check would leave out); the
    message names the file and keeps DALI's own words. ``path``: that file, or None; ``reason``:
    what is wrong with it, when found; ``changed``: the file changed or went away during the run
    (the storage, not its first content)."""

    def __init__(self, message: str, path: str | None, reason: str = "", changed: bool = False):
        super().__init__(message)
        self.path, self.reason, self.changed = path, reason, changed


def dali_failure(error: RuntimeError) -> RuntimeError:
    """DALI's error for a failed batch, as what it is: :class:`DecodeFailed` naming the file when a
    decoder failed on one (DALI's text says ``Failed to decode sample #N : PATH``), else ``error``
    itself (a bug, whose full text the caller keeps)."""
    text = str(error)
    match = re.search(r"^(.*?Failed to decode.*?)$", text, re.M)
    if match is None:
        return error
    line = match.group(1).strip()
    path = re.search(r"Failed to decode sample #\d+ : (.+)$", line)
    path = path.group(1).strip() if path else None
    return DecodeFailed(f"DALI failed to decode {path or 'a file'} ({line}); the pipeline cannot go on: leave such "
                        f"files out with the bad-file check (a full check decodes every image), or remove the file",
                        path)  # fmt: skip


POLICIES = {"partial": LastBatchPolicy.PARTIAL, "drop": LastBatchPolicy.DROP, "fill": LastBatchPolicy.FILL}


def process_shard() -> tuple[int, int]:
    """``(rank, world size)`` of this process: torch.distributed's once it is initialised (as
    Lightning, Accelerate and train.py do), else torchrun's ``RANK``/``WORLD_SIZE``, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def process_device() -> int:
    """This process's GPU index: torchrun's (and Accelerate's) ``LOCAL_RANK`` when it names a
    visible GPU, else torch's current CUDA device (what ``torch.cuda.set_device`` chose), else 0.
    The loaders' default ``device_id``, so that under a launcher each rank decodes on its own GPU."""
    if "LOCAL_RANK" in os.environ:
        local = int(os.environ["LOCAL_RANK"])
        # One visible GPU a process (CUDA_VISIBLE_DEVICES set per rank): LOCAL_RANK is no ordinal there.
        if not torch.cuda.is_available() or local < torch.cuda.device_count():
            return local
    return torch.cuda.current_device() if torch.cuda.is_available() else 0


def rank_share(num_samples: int, num_shards: int) -> int:
    """Samples an epoch on every shard: DALI pads each shard (``pad_last_batch``) to the largest."""
    return math.ceil(num_samples / num_shards)


def steps_per_epoch(num_samples: int, batch_size: int, num_shards: int = 1, last_batch: str = "partial") -> int:
    """Batches per epoch on every shard (:func:`rank_share` of the samples)."""
    shard = rank_share(num_samples, num_shards)
    return shard // batch_size if last_batch == "drop" else math.ceil(shard / batch_size)


class DALILoader:
    """Iterate a built DALI pipeline as tuples of torch tensors on ``device``.

    pipeline: a built DALI pipeline whose reader is named ``reader_name``.
    output_map: a name for each output, in order; outputs named ``labels*`` come out (B,) int64,
        ``lam`` (B,) float32, ``images`` through ``normalize``; others as DALI gives them.
    device: where the tensors go (the pipeline's GPU, or the CPU, or a GPU fed by a CPU pipeline).
    last_batch: ``"partial"`` (a short last batch), ``"drop"`` or ``"fill"``.
    start_epoch: the epoch of the first batch (``loader.epoch`` counts on from it).
    origin: the epoch of the pipeline's first batch, as :meth:`state` records it; None: ``start_epoch``.
    reader_name: the pipeline's reader, for the epoch's size.
    normalize: None, or a callable applied to ``images`` on ``device``
        (:class:`dali_cutmix.device.DeviceNormalize` for a pipeline that ships uint8).
    images_hwc: the pipeline's float ``images`` are (B, H, W, C): they come out as the (B, C, H, W)
        view of the same memory, channels_last, with nothing copied (the GPU pipelines' way).
    classes: the class names, kept as ``loader.classes``; None: unknown.
    identity: what the loader reads (plain data), saved with :meth:`state` so that a state given
        to a loader of other data is refused.
    locate: when DALI fails without naming a file, finds the file the failure is about (returns
        :class:`DecodeFailed`, or None when no file is to blame).
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
        images_hwc: bool = False,
        classes: list[str] | None = None,
        identity: dict | None = None,
        locate: Callable[[], DecodeFailed | None] | None = None,
    ):
        if last_batch not in POLICIES:
            raise ValueError(f"last_batch must be one of {tuple(POLICIES)}, got {last_batch!r}")
        self.output_map = list(output_map)
        self.device = torch.device(device)
        self.classes = classes
        self.pipeline = pipeline
        self.normalize = normalize
        self.images_hwc = images_hwc
        self.identity = identity
        self.locate = locate
        self.epoch = start_epoch
        self.origin = start_epoch if origin is None else origin  # the epoch of the pipeline's first batch
        self._closed = False
        self._open = False  # an epoch was started and not finished
        try:  # DALI's iterator runs the first batch as it is made
            self._it = DALIGenericIterator(
                [pipeline], self.output_map, reader_name=reader_name, last_batch_policy=POLICIES[last_batch]
            )
        except RuntimeError as e:
            raise self._failure(e) from e

    def __len__(self) -> int:
        return len(self._it)

    def close(self) -> None:
        """Done for good: the epoch in progress stays where it is (its state can still be saved),
        and iterating again is an error."""
        self._closed = True

    def state(self) -> dict:
        """Where the loader is, as plain data for a checkpoint: pass it back as ``train_loader(state=)``
        to continue with exactly the batches (files, crops, mixes) this loader would give next."""
        state = {"dali": self._it.checkpoints()[0], "origin": self.origin}
        return state | ({"identity": self.identity} if self.identity is not None else {})

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        """One epoch. Leaving it early (a ``break``, an exception, a signal) returns at once: nothing
        more is decoded. The next ``for`` first finishes the epoch left open (:meth:`finish_epoch`),
        so it starts a fresh epoch and per-epoch schedules stay aligned with the reader."""
        if self._closed:
            raise RuntimeError("this DALILoader was closed: build a new one to read more")
        self.finish_epoch()
        self._open = True
        batches = iter(self._it)
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                break
            except RuntimeError as e:
                raise self._failure(e) from e
            yield tuple(self._convert(name, batch[0][name]) for name in self.output_map)
        self._end_epoch()

    def finish_epoch(self) -> None:
        """Run the rest of an epoch left early, now (nothing if none is open): what a trainer
        that stops epochs short by choice (``max_steps``) calls before it saves :meth:`state`, so
        that the state is at the epoch's end."""
        if not self._open:
            return
        while True:  # next(), not a for: DALI's __iter__ would reset mid-epoch
            try:
                next(self._it)
            except StopIteration:
                break
            except RuntimeError as e:  # as in __iter__: a file DALI fails to decode is named
                raise self._failure(e) from e
        self._end_epoch()

    def _failure(self, error: RuntimeError) -> Exception:
        """DALI's error as what it is: :func:`dali_failure`; when DALI names no file, the file the
        loader's ``locate`` finds; else the error itself (a bug)."""
        found = dali_failure(error)
        if found is error and self.locate is not None:
            located = self.locate()
            if located is not None:
                return located
        return found

    def _end_epoch(self) -> None:
        self._open = False
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
        if name == "images" and self.images_hwc:
            return t.permute(0, 3, 1, 2)  # NCHW, channels_last in memory: a view, nothing copied
        return t
