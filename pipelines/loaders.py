"""PyTorch loaders over the ImageNet pipelines: what any trainer consumes, train.py or another.

    loader = train_loader("/data/imagenet/train", batch_size=256, device="gpu")
    for epoch in range(epochs):
        for images, labels_a, labels_b, lam in loader:   # torch tensors on the device
            loss = mixed_cross_entropy(model(images), labels_a, labels_b, lam)

A batch is valid until the next one is drawn (DALI reuses its buffers): copy what you keep.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from dali_cutmix.data import Split, load_split
from dali_cutmix.loader import DALILoader, steps_per_epoch

from .imagenet import READER_NAME, train_pipeline, val_pipeline


def train_loader(
    data: str | os.PathLike | Split,
    *,
    batch_size: int,
    device: str = "cpu",
    torch_device: torch.device | str | None = None,
    shard_id: int = 0,
    num_shards: int = 1,
    start_epoch: int = 0,
    prob_schedule: Callable[[int], float] | None = None,
    last_batch: str = "partial",
    state: dict | None = None,
    **pipeline_kwargs,
) -> DALILoader:
    """A loader of ``(images, labels_a, labels_b, lam)`` over the training pipeline.

    ``recipe`` (a :class:`dali_cutmix.mix.MixConfig`, or None for no mixing) and ``backend`` go to
    the pipeline untouched. ``prob_schedule`` (``epoch -> prob``, see
    :func:`dali_cutmix.loader.mix_schedule`) counts epochs from ``start_epoch``, so a resumed run
    sees the schedule where it left it.
    ``state`` (from :meth:`DALILoader.state`, with the same arguments) continues exactly where
    that loader was, mid-epoch too. Other keyword arguments go to
    :func:`pipelines.imagenet.train_pipeline`.
    """
    origin = state["origin"] if state else start_epoch
    split = data if isinstance(data, Split) else load_split(data)
    # The pipeline runs ceil(shard / batch) times an epoch whatever the policy: "drop" runs the
    # last, short batch too and throws it away. The schedule counts pipeline runs.
    runs_per_epoch = steps_per_epoch(len(split), batch_size, num_shards, "partial")
    pipe = train_pipeline(
        split,
        batch_size=batch_size,
        device=device,
        shard_id=shard_id,
        num_shards=num_shards,
        prob_schedule=prob_schedule,
        steps_per_epoch=runs_per_epoch,
        start_epoch=origin,
        checkpoint=state["dali"] if state else None,
        **pipeline_kwargs,
    )
    return DALILoader(
        pipe,
        ("images", "labels_a", "labels_b", "lam"),
        device=torch_device or _default_torch_device(device, pipeline_kwargs.get("device_id")),
        last_batch=last_batch,
        start_epoch=start_epoch,
        origin=origin,
        reader_name=READER_NAME,
    )


def val_loader(
    data: str | os.PathLike | Split,
    *,
    batch_size: int,
    device: str = "cpu",
    torch_device: torch.device | str | None = None,
    **pipeline_kwargs,
) -> DALILoader:
    """A loader of ``(images, labels)`` over the validation pipeline (every sample once)."""
    pipe = val_pipeline(data, batch_size=batch_size, device=device, **pipeline_kwargs)
    return DALILoader(
        pipe,
        ("images", "labels"),
        device=torch_device or _default_torch_device(device, pipeline_kwargs.get("device_id")),
        last_batch="partial",
        reader_name=READER_NAME,
    )


def _default_torch_device(device: str, device_id: int | None) -> torch.device:
    return torch.device("cuda", device_id or 0) if device == "gpu" else torch.device("cpu")
