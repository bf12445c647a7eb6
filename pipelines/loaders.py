"""PyTorch loaders over the ImageNet pipelines: what any trainer consumes, train.py or another.

    loader = train_loader("/data/imagenet/train", batch_size=256, device="gpu")   # or LoaderSettings(...)
    for epoch in range(epochs):
        for images, labels_a, labels_b, lam in loader:   # torch tensors on the device
            loss = mixed_cross_entropy(model(images), labels_a, labels_b, lam)

A batch is valid until the next one is drawn (DALI reuses its buffers): copy what you keep.
"""

from __future__ import annotations

import os
import time

from dali_cutmix.device import DeviceNormalize
from dali_cutmix.loader import DALILoader, DecodeFailed, steps_per_epoch
from dali_cutmix.recipe import MixConfig, RecipeError

from .graphs import DEFAULT_RECIPE, MEAN, READER_NAME, STD, output_names, train_pipeline, val_pipeline
from .scan import find_failed_file
from .settings import LoaderSettings, SettingError
from .sources import Source, kind_of, load_source


def train_loader(
    data: LoaderSettings | str | os.PathLike | Source,
    *,
    recipe: MixConfig | None = DEFAULT_RECIPE,
    backend: str | None = None,
    start_epoch: int = 0,
    last_batch: str = "partial",
    state: dict | None = None,
    return_params: bool = False,
    **settings,
) -> DALILoader:
    """A loader of ``(images, labels_a, labels_b, lam)`` over the training pipeline.

    data: :class:`pipelines.settings.LoaderSettings`, passed untouched to the pipeline, or its
        ``data`` with its other fields as keywords (``batch_size=`` at least).
    recipe: a :class:`dali_cutmix.recipe.MixConfig` or None (no mixing), passed untouched; its
        per-epoch chance of mixing counts epochs from ``start_epoch``.
    backend: as in :func:`dali_cutmix.cutmix`.
    start_epoch: the epoch of the first batch.
    last_batch: ``"partial"`` (a short last batch) or ``"drop"``.
    state: from :meth:`DALILoader.state` of a loader of the same arguments: continue exactly where
        it was, mid-epoch too; None: start at ``start_epoch``, with that epoch's own augmentations.
    return_params: each batch goes on with the mix's parameters (:func:`pipelines.graphs.output_names`).
    """
    s = LoaderSettings.of(data, **settings)
    if recipe is not None and not isinstance(recipe, MixConfig):
        raise RecipeError("recipe", "must be a dali_cutmix.MixConfig, or None for no mixing", recipe)
    split = load_source(s.data)
    identity = _identity(s, split)
    _check_state(state, identity)
    origin = state["origin"] if state else start_epoch
    # The pipeline runs ceil(shard / batch) times an epoch whatever the policy: "drop" runs the
    # last, short batch too and throws it away. The schedule counts pipeline runs.
    runs_per_epoch = steps_per_epoch(len(split), s.batch_size, s.shard()[1], "partial")
    pipe = train_pipeline(
        s,
        recipe=recipe,
        backend=backend,
        return_params=return_params,
        steps_per_epoch=runs_per_epoch,
        start_epoch=origin,
        checkpoint=state["dali"] if state else None,
        source=split,
    )
    return DALILoader(
        pipe,
        output_names(recipe, return_params),
        device=s.output_device(),
        last_batch=last_batch,
        start_epoch=start_epoch,
        origin=origin,
        reader_name=READER_NAME,
        normalize=_device_normalize(s),
        images_hwc=_hwc_floats(s),
        classes=split.classes,
        identity=identity,
        locate=_locator(split),
    )


def val_loader(data: LoaderSettings | str | os.PathLike | Source, **settings) -> DALILoader:
    """A loader of ``(images, labels)`` over the validation pipeline: this rank's share of every
    sample once. ``data`` as in :func:`train_loader` (``classes``: the training classes)."""
    s = LoaderSettings.of(data, **settings)
    source = load_source(s.data, s.classes)
    return DALILoader(
        val_pipeline(s, source=source), ("images", "labels"), device=s.output_device(), last_batch="partial",
        reader_name=READER_NAME, normalize=_device_normalize(s), images_hwc=_hwc_floats(s), classes=source.classes,
        locate=_locator(source),
    )  # fmt: skip


def _device_normalize(s: LoaderSettings) -> DeviceNormalize | None:
    """The normalisation the trainer's device does to uint8 images (the pipeline's MEAN and STD)."""
    return DeviceNormalize(MEAN, STD) if s.ships_uint8() else None


def _hwc_floats(s: LoaderSettings) -> bool:
    """Whether the pipeline's float images are HWC (the GPU's): the loader hands on their
    channels_last NCHW view."""
    return s.image_layout() == "HWC" and not s.ships_uint8()


def _identity(s: LoaderSettings, split) -> dict:
    """What a loader's saved state belongs to: the data's size and classes, the batch, the share."""
    return {"samples": len(split), "classes": len(split.classes), "batch_size": s.batch_size, "shards": s.shard()[1]}


def _check_state(state, identity: dict) -> None:
    """A :class:`SettingError` naming ``state`` when it is not a loader's :meth:`DALILoader.state`,
    or one of a loader over other data, another batch size or another number of shards."""
    if state is None:
        return
    if (
        not isinstance(state, dict)
        or not isinstance(state.get("dali"), (str, bytes))
        or not isinstance(state.get("origin"), int)
    ):
        raise SettingError("state", f"must be what DALILoader.state() returned (a dict with 'dali' and "
                           f"'origin'), got {type(state).__name__}")  # fmt: skip
    saved = state.get("identity")
    if saved is not None and saved != identity:
        differs = ", ".join(f"{k} {saved.get(k)} -> {v}" for k, v in identity.items() if saved.get(k) != v)
        raise SettingError("state", f"is a loader's over other data or settings ({differs}): a saved state continues "
                           f"only a loader of the same data, batch size and shards")  # fmt: skip


def _locator(source):
    """For a loader over ``source``: find the file a DALI failure that named none is about
    (:func:`pipelines.scan.find_failed_file`), as a :class:`DecodeFailed`."""
    since = time.time()
    on_disk = kind_of(source).files_on_disk

    def locate() -> DecodeFailed | None:
        paths = list(source.files) if on_disk else list(source.paths)
        found = find_failed_file(paths, since, images=on_disk)
        if found is None:
            return None
        path, reason, changed = found
        return DecodeFailed(f"DALI failed to read {path}: {reason}", path, reason, changed)

    return locate
