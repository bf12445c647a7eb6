"""The loaders under PyTorch Lightning (``pipelines/lightning.py``): one process and two DDP
processes for 2 epochs, and a resumed fit that continues the data stream exactly."""

import pytest

pytest.importorskip("nvidia.dali", exc_type=ImportError)  # `pytest -m gpu` collects without DALI

import json
import subprocess
import sys
from pathlib import Path

from client_fit import fit_lightning
from conftest import assert_each_epoch_covers

pytest.importorskip("lightning")

ROOT = Path(__file__).resolve().parents[1]


def test_lightning_one_process(unique_labels, tmp_path):
    log = fit_lightning(*unique_labels, tmp_path)
    assert_each_epoch_covers([log], 24, 6)
    assert log["after"] != log["before"]  # the weights moved


def test_lightning_ddp_two_processes_read_their_own_shares(unique_labels, tmp_path):
    cmd = [sys.executable, "tests/client_fit.py", "lightning", *unique_labels, str(tmp_path), "--devices", "2"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    logs = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert_each_epoch_covers(logs, 24, 6)
    assert all(len(log["train"][0]) == 12 for log in logs)  # halves, not the whole set twice
    assert logs[0]["after"] == logs[1]["after"] != logs[0]["before"]  # DDP: identical weights, moved


def test_lightning_resumes_the_data_stream_exactly(unique_labels, tmp_path):
    whole = fit_lightning(*unique_labels, tmp_path / "whole")
    fit_lightning(*unique_labels, tmp_path / "first", epochs=1)
    checkpoint = tmp_path / "first" / "checkpoints" / "epoch=0-step=6.ckpt"
    resumed = fit_lightning(*unique_labels, tmp_path / "resumed", resume=str(checkpoint))
    assert resumed["train"] == whole["train"][1:]  # epoch 2's samples in the same order
    assert resumed["after"] == whole["after"]


def test_lightning_resumes_mid_epoch_exactly(unique_labels, tmp_path):
    """A checkpoint taken 3 steps into the first epoch (``every_n_train_steps``): the resumed fit
    reads that epoch's other half, then the next epoch, as the fit without a break did. Lightning
    warns that the dataloader is not resumable; the datamodule's state carries the position."""
    whole = fit_lightning(*unique_labels, tmp_path / "whole")
    fit_lightning(*unique_labels, tmp_path / "first", epochs=1, every_n_steps=3)
    checkpoint = tmp_path / "first" / "checkpoints" / "epoch=0-step=3.ckpt"
    resumed = fit_lightning(*unique_labels, tmp_path / "resumed", resume=str(checkpoint))
    assert resumed["train"] == [whole["train"][0][12:], whole["train"][1]]
    assert resumed["after"] == whole["after"]


def test_the_datamodule_leaves_unreadable_files_out(jpeg_tree, tmp_path, monkeypatch):
    from pipelines.lightning import DALIDataModule

    (jpeg_tree / "train" / "class1" / "broken.JPEG").write_bytes(b"not a jpeg")
    monkeypatch.chdir(tmp_path)  # without a trainer, the listing goes to the working folder
    dm = DALIDataModule(jpeg_tree / "train", jpeg_tree / "val", batch_size=4, image_size=32, num_threads=1)
    dm.setup("fit")
    assert len(dm.train_source) == 18 and len(dm.val_source) == 9
    assert "broken.JPEG" in (tmp_path / "bad_files_train.txt").read_text()
    with pytest.raises(ValueError, match=r"^strict=True: 1 train files are unusable, first .*broken.JPEG"):
        DALIDataModule(jpeg_tree / "train", batch_size=4, check="quick", strict=True).setup("fit")
