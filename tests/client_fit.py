"""Train a tiny CNN for 2 epochs through the loaders under another trainer, as a user would:
``python tests/client_fit.py lightning|accelerate DATA_LIST OUT [--devices N]`` (Lightning
launches its DDP processes itself; Accelerate's are started by ``accelerate launch``).

Each process writes ``OUT/rank{R}.json``: the labels it trained on and validated, by epoch, and
a checksum of its weights before and after. The tests (``test_lightning.py``,
``test_loaders.py``) read them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, when run as a script

from dali_cutmix.loss import mixed_cross_entropy  # noqa: E402

LOADER = dict(image_size=32, num_threads=1, seed=5)
BATCH = 4


def tiny_cnn(num_classes: int) -> nn.Module:
    torch.manual_seed(0)  # the same start on every rank and in every client
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes)
    )


def checksum(model: nn.Module) -> float:
    return float(sum(p.detach().double().abs().sum() for p in model.parameters()))


def record(out: Path, rank: int, log: dict) -> None:
    (out / f"rank{rank}.json").write_text(json.dumps(log))


def fit_lightning(
    data, val, out: Path, devices: int = 1, epochs: int = 2, resume: str | None = None, every_n_steps: int | None = None
):
    """Lightning's Trainer over :class:`pipelines.lightning.DALIDataModule`; with ``resume``, from that
    checkpoint. Saves a checkpoint at each epoch's end, or every ``every_n_steps`` training steps;
    returns the rank's log."""
    import lightning as L

    from pipelines.lightning import DALIDataModule

    class Module(L.LightningModule):
        def __init__(self, num_classes: int):
            super().__init__()
            self.net = tiny_cnn(num_classes)
            self.log_ = {"train": [], "val": [], "before": checksum(self.net)}

        def on_train_epoch_start(self):
            self.log_["train"].append([])

        def training_step(self, batch, _):
            images, labels_a, labels_b, lam = batch
            if not self.log_["train"]:  # a fit resumed mid-epoch starts without on_train_epoch_start
                self.log_["train"].append([])
            self.log_["train"][-1] += labels_a.tolist()
            return mixed_cross_entropy(self.net(images), labels_a, labels_b, lam)

        def on_validation_epoch_start(self):
            self.log_["val"].append([])

        def validation_step(self, batch, _):
            images, labels = batch
            self.log_["val"][-1] += labels.tolist()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = DALIDataModule(data, val, batch_size=BATCH, **LOADER)
    dm.setup("fit")
    module = Module(len(dm.train_source.classes))
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        logger=False,
        callbacks=[
            L.pytorch.callbacks.ModelCheckpoint(out / "checkpoints", save_top_k=-1, every_n_train_steps=every_n_steps)
        ],
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=out,
    )
    trainer.fit(module, datamodule=dm, ckpt_path=resume)
    log = module.log_
    if resume is None:
        log["val"] = log["val"][1:]  # the first is Lightning's sanity check (2 batches)
    log["after"] = checksum(module.net)
    record(out, trainer.global_rank, log)
    return log


def fit_accelerate(data: str, val: str, out: Path) -> None:
    from accelerate import Accelerator

    from pipelines.loaders import train_loader, val_loader
    from pipelines.sources import load_source

    accelerator = Accelerator(cpu=True)
    train_data = load_source(data)
    # Rank and world size come from the environment that ``accelerate launch`` set up.
    train = train_loader(train_data, batch_size=BATCH, last_batch="drop", torch_device=accelerator.device, **LOADER)
    valid = val_loader(val, batch_size=BATCH, classes=train_data.classes, torch_device=accelerator.device, **LOADER)
    net = tiny_cnn(len(train_data.classes))
    log = {"train": [], "val": [], "before": checksum(net)}
    model, optimizer = accelerator.prepare(net, torch.optim.SGD(net.parameters(), lr=0.1))
    for _ in range(2):
        model.train()
        log["train"].append([])
        for images, labels_a, labels_b, lam in train:
            log["train"][-1] += labels_a.tolist()
            loss = mixed_cross_entropy(model(images), labels_a, labels_b, lam)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
        model.eval()
        log["val"].append([])
        with torch.no_grad():
            for images, labels in valid:
                model(images)
                log["val"][-1] += labels.tolist()
    log["after"] = checksum(accelerator.unwrap_model(model))
    record(out, accelerator.process_index, log)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("client", choices=("lightning", "accelerate"))
    p.add_argument("data")
    p.add_argument("val")
    p.add_argument("out", type=Path)
    p.add_argument("--devices", type=int, default=1)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.client == "lightning":
        fit_lightning(args.data, args.val, args.out, args.devices)
    else:
        fit_accelerate(args.data, args.val, args.out)


if __name__ == "__main__":
    main()
