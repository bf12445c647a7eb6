"""PyTorch loaders over the ImageNet pipelines: what any trainer consumes, train.py or another.

    loader = train_loader("/data/imagenet/train", batch_size=256, device="gpu")
    for epoch in range(epochs):
        for images, labels_a, labels_b, lam in loader:   # torch tensors on the device
            loss = mixed_cross_entropy(model(images), labels_a, labels_b, lam)

A batch is valid until the next one is drawn (DALI reuses its buffers): copy what you keep.
"""

from __future__ import annotations

import os

import torch

from dali_cutmix.device import DeviceNormalize
from dali_cutmix.loader import DALILoader, process_device, process_shard, steps_per_epoch
from dali_cutmix.mix import MixConfig

from .files import Split
from .imagenet import DEFAULT_RECIPE, MEAN, READER_NAME, STD, output_names, train_pipeline, val_pipeline
from .shards import Shards
from .sources import load_source


def train_loader(
    data: str | os.PathLike | Split | Shards,
    *,
    batch_size: int,
    recipe: MixConfig | None = DEFAULT_RECIPE,
    backend: str | None = None,
    device: str = "cpu",
    torch_device: torch.device | str | None = None,
    shard_id: int | None = None,
    num_shards: int | None = None,
    start_epoch: int = 0,
    last_batch: str = "partial",
    state: dict | None = None,
    uint8: bool | None = None,
    return_params: bool = False,
    **pipeline_kwargs,
) -> DALILoader:
    """A loader of ``(images, labels_a, labels_b, lam)`` over the training pipeline.

    ``recipe`` (a :class:`dali_cutmix.mix.MixConfig`, or None for no mixing) and ``backend`` (as in
    :func:`dali_cutmix.cutmix`) go to the pipeline untouched. The recipe's per-epoch chance of
    mixing counts epochs from ``start_epoch``, so a resumed run sees it where it left it.
    ``state`` (from :meth:`DALILoader.state`, with the same arguments) continues exactly where
    that loader was, mid-epoch too (without one, a loader starting at a later epoch draws other
    augmentations than epoch 0's: its seed moves with ``start_epoch``). ``shard_id``/``num_shards``
    default to this process's rank and world size (:func:`dali_cutmix.loader.process_shard`), so
    under DDP each rank reads its own share; with ``device="gpu"``, ``device_id`` defaults to this
    process's GPU (:func:`dali_cutmix.loader.process_device`: ``LOCAL_RANK``, else the current one).
    ``uint8`` (default: when a CPU pipeline feeds a
    GPU): the pipeline ships uint8 images and the loader normalises them on ``torch_device``.
    ``return_params``: each batch goes on with the mix's parameters
    (:func:`pipelines.imagenet.output_names`), for pictures and checks. Other keyword arguments go
    to :func:`pipelines.imagenet.train_pipeline`.
    """
    shard_id, num_shards = _shard(shard_id, num_shards)
    torch_device, normalize = _outputs(device, torch_device, uint8, pipeline_kwargs)
    origin = state["origin"] if state else start_epoch
    split = load_source(data)
    # The pipeline runs ceil(shard / batch) times an epoch whatever the policy: "drop" runs the
    # last, short batch too and throws it away. The schedule counts pipeline runs.
    runs_per_epoch = steps_per_epoch(len(split), batch_size, num_shards, "partial")
    # A loader that starts at a later epoch without a state must not replay epoch 0's
    # augmentations: the seed moves with the epoch the pipeline starts at.
    pipeline_kwargs["seed"] = pipeline_kwargs.get("seed", 0) + 7919 * origin
    pipe = train_pipeline(
        split,
        batch_size=batch_size,
        recipe=recipe,
        backend=backend,
        device=device,
        shard_id=shard_id,
        num_shards=num_shards,
        steps_per_epoch=runs_per_epoch,
        start_epoch=origin,
        checkpoint=state["dali"] if state else None,
        return_params=return_params,
        **pipeline_kwargs,
    )
    return DALILoader(
        pipe,
        output_names(recipe, return_params),
        device=torch_device,
        last_batch=last_batch,
        start_epoch=start_epoch,
        origin=origin,
        reader_name=READER_NAME,
        normalize=normalize,
        classes=split.classes,
    )


def val_loader(
    data: str | os.PathLike | Split | Shards,
    *,
    batch_size: int,
    device: str = "cpu",
    torch_device: torch.device | str | None = None,
    shard_id: int | None = None,
    num_shards: int | None = None,
    uint8: bool | None = None,
    **pipeline_kwargs,
) -> DALILoader:
    """A loader of ``(images, labels)`` over the validation pipeline: this rank's share of every
    sample once (shards and ``uint8`` as in :func:`train_loader`)."""
    shard_id, num_shards = _shard(shard_id, num_shards)
    torch_device, normalize = _outputs(device, torch_device, uint8, pipeline_kwargs)
    source = load_source(data, pipeline_kwargs.pop("classes", None))
    pipe = val_pipeline(
        source, batch_size=batch_size, device=device, shard_id=shard_id, num_shards=num_shards, **pipeline_kwargs
    )
    return DALILoader(
        pipe, ("images", "labels"), device=torch_device, last_batch="partial", reader_name=READER_NAME,
        normalize=normalize, classes=source.classes,
    )  # fmt: skip


def _shard(shard_id: int | None, num_shards: int | None) -> tuple[int, int]:
    if shard_id is None and num_shards is None:
        return process_shard()
    if shard_id is None or num_shards is None:
        raise ValueError(f"give shard_id and num_shards together, got {shard_id!r} and {num_shards!r}")
    return shard_id, num_shards


def _outputs(device: str, torch_device, uint8: bool | None, pipeline_kwargs: dict):
    """The torch device and, for uint8 output, the device-side normalisation; sets the pipeline's
    ``device_id`` (by default this process's GPU, :func:`dali_cutmix.loader.process_device`) and
    ``uint8`` (by default on when a CPU pipeline feeds a GPU: a quarter of the bytes to copy)."""
    if device == "gpu" and pipeline_kwargs.get("device_id") is None:
        pipeline_kwargs["device_id"] = process_device()  # this rank's GPU, not GPU 0 for every rank
    if torch_device is None:
        torch_device = torch.device("cuda", pipeline_kwargs["device_id"]) if device == "gpu" else "cpu"
    torch_device = torch.device(torch_device)
    if uint8 is None:
        uint8 = device == "cpu" and torch_device.type == "cuda"
    pipeline_kwargs["uint8"] = uint8
    return torch_device, DeviceNormalize(MEAN, STD) if uint8 else None
