"""The ImageNet loaders as a PyTorch Lightning ``LightningDataModule`` (the optional
``lightning`` extra).

    dm = DALIDataModule("/imagenet/train", "/imagenet/val", batch_size=256)   # or shards
    trainer = L.Trainer(max_epochs=90, accelerator="gpu", devices=8, strategy="ddp")
    trainer.fit(model, datamodule=dm)   # training_step gets (images, labels_a, labels_b, lam)

Why an adapter at all: the loaders must know this process's rank, world size and device, which
Lightning settles only once ``fit`` has launched the processes; its hooks build them then. The
loader's position is saved in Lightning's checkpoints (``state_dict``), so a run resumed from an
epoch-end checkpoint, or from one taken mid-epoch (``every_n_train_steps``), continues the data
stream exactly. On a mid-epoch resume Lightning warns that the dataloader is not resumable: it
looks for ``state_dict`` on the loader, while the datamodule carries the position. Lightning's
distributed sampler does not apply (DALI shards by itself), and nothing else is needed.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from dali_cutmix.loader import DALILoader, process_shard
from dali_cutmix.recipe import MixConfig

from .graphs import DEFAULT_RECIPE
from .loaders import train_loader, val_loader
from .scan import UnusableData
from .settings import LoaderSettings
from .sources import usable


class DALIDataModule(L.LightningDataModule):
    """The training and validation loaders for Lightning.

    train: :class:`pipelines.settings.LoaderSettings`, or its ``data`` (a ``<class>/<image>``
        folder, a file list, WebDataset shards, a Split or Shards) with its other fields as
        keywords (``batch_size=`` at least). The shard and device fields are the trainer's.
    val: the validation data, or None; read with the training settings' ``image_size`` and
        ``num_threads`` in batches of ``val_batch_size`` (default: the training batch size).
    recipe, backend: the mixing, as in :func:`pipelines.loaders.train_loader`.
    check, strict: the bad-file check (:func:`pipelines.sources.usable`); what DALI cannot read
        is left out and listed in the trainer's ``default_root_dir``, or is an error with ``strict``.
    """

    def __init__(
        self,
        train,
        val=None,
        *,
        recipe: MixConfig | None = DEFAULT_RECIPE,
        backend: str | None = None,
        val_batch_size: int | None = None,
        check: str = "quick",
        strict: bool = False,
        **settings,
    ):
        super().__init__()
        self.settings = LoaderSettings.of(train, **settings)
        self.val_source = val
        self.recipe, self.backend = recipe, backend
        self.val_batch_size = val_batch_size or self.settings.batch_size
        self.check, self.strict = check, strict
        self.train_source = self.settings.data
        self._train: DALILoader | None = None
        self._state: dict | None = None
        self._checked = False

    def setup(self, stage: str) -> None:
        if self._checked:  # Lightning calls setup once a stage: check the data once
            return
        self._checked = True
        trainer = self.trainer
        checks = dict(
            check=self.check,
            strict=self.strict,
            listing_dir=Path(trainer.default_root_dir if trainer else "."),
            report=trainer is None or trainer.is_global_zero,
        )
        try:
            self.train_source = usable(self.train_source, "train", **checks)
            if self.val_source is not None:
                self.val_source = usable(self.val_source, "val", self.train_source.classes, **checks)
        except UnusableData as e:
            raise UnusableData(f"strict=True: {e}") from e  # named as this class's argument

    def _placement(self) -> dict:
        """This process's shard and device, from the trainer (or the environment without one)."""
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer else process_shard()
        root = trainer.strategy.root_device if trainer else torch.device("cpu")
        dali = dict(device="gpu", device_id=root.index or 0) if root.type == "cuda" else dict(device="cpu")
        return dict(shard_id=rank, num_shards=world, torch_device=root, **dali)

    def train_dataloader(self) -> DALILoader:
        self._train = train_loader(
            self.settings.replace(data=self.train_source, **self._placement()),
            recipe=self.recipe,
            backend=self.backend,
            start_epoch=self.trainer.current_epoch if self.trainer else 0,
            state=self._state,
            last_batch="drop",  # equal batches on every rank, and no batch of 1 for BatchNorm
        )
        return self._train

    def val_dataloader(self) -> DALILoader | list:
        if self.val_source is None:
            return []
        s = self.settings  # the user's settings (seed, dtype, threads, prefetch, ...), for validation
        side = s.size_schedule.sizes()[-1] if s.size_schedule else s.image_size  # the last training side
        val = s.replace(data=self.val_source, batch_size=self.val_batch_size, image_size=side, size_schedule=None,
                        classes=self.train_source.classes, **self._placement())  # fmt: skip
        return val_loader(val)

    def state_dict(self) -> dict:
        return {"loader": self._train.state()} if self._train is not None else {}

    def load_state_dict(self, state: dict) -> None:
        self._state = state.get("loader")
