"""train.py end to end on the CPU: a few steps, metrics, checkpoints, resume, bad input."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train

ROOT = Path(__file__).resolve().parents[1]


def small_run(data, out, *extra):
    return ["--data", str(data), "--output", str(out), "--arch", "resnet18", "--image-size", "32",
            "--batch-size", "6", "--workers", "1", "--lr", "0.05", "--warmup-epochs", "0", *extra]  # fmt: skip


def read_rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_train_then_resume(jpeg_tree, tmp_path):
    out = tmp_path / "run"
    train.main(small_run(jpeg_tree, out, "--epochs", "2"))
    rows = read_rows(out)
    assert [r["epoch"] for r in rows] == [0, 1]
    for r in rows:
        for key in ("train_loss", "val_loss", "val_top1", "val_top5", "images_per_s", "epoch_seconds"):
            assert key in r and r[key] == r[key]  # present and not NaN
        assert r["val_images"] == 9 and r["train_images"] == 18
        assert 0 <= r["val_top1"] <= r["val_top5"] <= 100
    config = json.loads((out / "config.json").read_text())
    assert config["arch"] == "resnet18" and config["num_classes"] == 3
    assert (out / "curves.png").stat().st_size > 1000
    state = torch.load(out / "checkpoint_0002.pt", weights_only=True)
    assert state["epoch"] == 2 and state["arch"] == "resnet18"

    train.main(small_run(jpeg_tree, out, "--epochs", "3", "--resume"))
    rows = read_rows(out)
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert torch.load(out / "checkpoint_0003.pt", weights_only=True)["epoch"] == 3


def test_resume_from_a_path_and_arch_mismatch(jpeg_tree, tmp_path, capsys):
    out = tmp_path / "run"
    assert train.main(small_run(jpeg_tree, out, "--epochs", "1", "--max-steps", "1")) == 0
    path = out / "checkpoint_0001.pt"
    assert train.main(small_run(jpeg_tree, out, "--epochs", "2", "--resume", str(path), "--arch", "resnet34")) == 2
    assert f"checkpoint {path} is a resnet18, but --arch is resnet34" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
        (["--batch-size", "-4"], "--batch-size must be >= 1, got -4"),
        (["--epochs", "0"], "--epochs must be >= 1, got 0"),
        (["--image-size", "8"], "--image-size must be >= 16, got 8"),
        (["--arch", "vgg16"], "--arch must be one of resnet18, .*, got 'vgg16'"),
        (["--data", "/nonexistent/imagenet"], "--data '/nonexistent/imagenet' is not a directory"),
        (["--cutmix-prob", "1.5"], r"--cutmix-prob must be in \[0, 1\], got 1.5"),
        (["--resume", "/nonexistent.pt"], "--resume '/nonexistent.pt': no such checkpoint file"),
    ],
    ids=["batch0", "batch-neg", "epochs0", "size", "arch", "data", "prob", "resume"],
)
def test_bad_command_line_is_one_line_and_exit_2(args, message):
    proc = subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert re.search(message, last), last


@pytest.mark.gpu
def test_train_on_the_gpu_with_amp(jpeg_tree, tmp_path):
    out = tmp_path / "run"
    train.main(small_run(jpeg_tree, out, "--epochs", "1", "--device", "gpu"))
    (row,) = read_rows(out)
    assert row["train_loss"] == row["train_loss"] and row["val_images"] == 9
    state = torch.load(out / "checkpoint_0001.pt", weights_only=True)
    assert state["scaler"] is not None  # float16 autocast with a GradScaler
