"""Atomic, synced writes (``dali_cutmix/files.py``); foreign or broken checkpoints are clear errors
(``dali_cutmix_trainer/checkpoint.py``)."""

import os

import pytest
import torch

from dali_cutmix.files import atomic_write
from dali_cutmix_trainer import checkpoint as ckpt


def test_checkpoint_writes_are_atomic(tmp_path):
    target = tmp_path / "c.pt"
    target.write_bytes(b"old")

    def crash(f):
        f.write(b"half of a checkpoint")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, crash)
    assert target.read_bytes() == b"old" and list(tmp_path.iterdir()) == [target]


def test_checkpoint_writes_sync_the_folder_after_the_rename(tmp_path, monkeypatch):
    import stat

    synced = []
    real = os.fsync

    def spy(fd):
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    atomic_write(tmp_path / "c.pt", lambda f: f.write(b"data"))
    assert synced == [False, True]  # the file's bytes, then the folder's entry


def test_a_foreign_or_broken_checkpoint_is_a_clear_error(tmp_path):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"PK not a checkpoint at all")
    with pytest.raises(ValueError, match=f"checkpoint {broken} cannot be loaded"):
        ckpt.load(broken, "resnet18")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign, pickle_protocol=2)
    with pytest.raises(ValueError, match="is not a dali-cutmix training checkpoint"):
        ckpt.load(foreign, "resnet18")


def test_restore_returns_the_schedule_at_the_checkpoints_step_through_public_api(recwarn):
    def schedule(step):
        return 0.9**step

    def fresh():
        model = torch.nn.Linear(2, 2)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
        return model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)

    model, optimizer, scheduler = fresh()
    for _ in range(13):  # 2 epochs of 5 steps and 3 more
        optimizer.step()
        scheduler.step()
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 2, "step": 3,
             "scaler": None, "torch_rng": torch.get_rng_state()}  # fmt: skip
    model, optimizer, scheduler = fresh()
    resumed = ckpt.restore(state, model, optimizer, scheduler, None, steps_per_epoch=5)
    assert resumed.last_epoch == 13 and resumed.get_last_lr() == [0.5 * schedule(13)]
    assert optimizer.param_groups[0]["lr"] == 0.5 * schedule(13)
    optimizer.step()
    resumed.step()
    assert optimizer.param_groups[0]["lr"] == 0.5 * schedule(14)
    assert not [w for w in recwarn if "lr_scheduler" in str(w.message)]
