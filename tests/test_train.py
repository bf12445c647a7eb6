"""train.py end to end on the CPU: a few steps, metrics, checkpoints, resume, bad input."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import train_args

import train

ROOT = Path(__file__).resolve().parents[1]


def read_rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_train_then_resume(jpeg_tree, tmp_path):
    out = tmp_path / "run"
    train.main(train_args(jpeg_tree, out, "--epochs", "2"))
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

    train.main(train_args(jpeg_tree, out, "--epochs", "3", "--resume"))
    rows = read_rows(out)
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert torch.load(out / "checkpoint_0003.pt", weights_only=True)["epoch"] == 3


def test_resume_from_a_path_and_arch_mismatch(jpeg_tree, tmp_path, capsys):
    out = tmp_path / "run"
    assert train.main(train_args(jpeg_tree, out, "--epochs", "1", "--max-steps", "1")) == 0
    path = out / "checkpoint_0001.pt"
    assert train.main(train_args(jpeg_tree, out, "--epochs", "2", "--resume", str(path), "--arch", "resnet34")) == 2
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
        (["--mixup", "-1"], r"--mixup must be a number >= 0, got -1.0"),
        (["--mixup", "0.2", "--mixup-switch-prob", "2"], r"--mixup-switch-prob must be a number in \[0, 1\], got 2.0"),
        (["--cutmix-minmax", "0.9", "0.1"], r"--cutmix-minmax must be \(min, max\) with 0 < min < max <= 1"),
        (["--cutmix", "0"], "--cutmix-alpha and --mixup are both 0: nothing to mix"),
        (["--prob-schedule", "0:1.5"], "argument --prob-schedule: invalid parse_schedule value: '0:1.5'"),
    ],
    ids=[
        "batch0",
        "batch-neg",
        "epochs0",
        "size",
        "arch",
        "data",
        "prob",
        "resume",
        "mixup",
        "switch",
        "minmax",
        "nothing",
        "schedule",
    ],
)
def test_bad_command_line_is_one_line_and_exit_2(args, message):
    proc = subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert re.search(message, last), last


def test_timm_style_recipe_flags_reach_the_pipeline(jpeg_tree, tmp_path, monkeypatch):
    seen = {}
    real = train.train_loader

    def spy(split, **kwargs):
        seen.update(kwargs)
        return real(split, **kwargs)

    monkeypatch.setattr(train, "train_loader", spy)
    out = tmp_path / "run"
    flags = [
        "--mixup",
        "0.2",
        "--cutmix",
        "1.0",
        "--mixup-prob",
        "0.9",
        "--mixup-switch-prob",
        "0.4",
        "--mixup-mode",
        "elem",
        "--cutmix-minmax",
        "0.2",
        "0.8",
        "--mix-no-self",
        "--smoothing",
        "0.1",
        "--prob-schedule",
        "1:0.5",
        "--mixup-off-epoch",
        "3",
        "--epochs",
        "2",
    ]
    assert train.main(train_args(jpeg_tree, out, *flags)) == 0
    assert seen["mixup_alpha"] == 0.2 and seen["cutmix_alpha"] == 1.0 and seen["mixup_switch_prob"] == 0.4
    assert seen["cutmix_mode"] == "elem" and seen["cutmix_minmax"] == [0.2, 0.8] and seen["mix_no_self"]
    schedule = seen["cutmix_prob"]
    assert [schedule(e) for e in range(4)] == [0.9, 0.5, 0.5, 0.0]
    config = json.loads((out / "config.json").read_text())
    assert config["mixup_alpha"] == 0.2 and config["smoothing"] == 0.1 and config["prob_schedule"] == {"1": 0.5}
    assert len(read_rows(out)) == 2


@pytest.mark.gpu
def test_train_on_the_gpu_with_amp(jpeg_tree, tmp_path):
    out = tmp_path / "run"
    train.main(train_args(jpeg_tree, out, "--epochs", "1", "--device", "gpu"))
    (row,) = read_rows(out)
    assert row["train_loss"] == row["train_loss"] and row["val_images"] == 9
    state = torch.load(out / "checkpoint_0001.pt", weights_only=True)
    assert state["scaler"] is not None  # float16 autocast with a GradScaler
