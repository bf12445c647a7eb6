"""What a hostile new user tried (issue: 282 cases, 24 silently wrong): each now behaves as its
neighbours do, in one line naming the file, flag or value, or by doing the right thing."""

import io
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("nvidia.dali", exc_type=ImportError)  # `pytest -m gpu` collects without DALI

import numpy as np
import torch
from conftest import train_args, write_jpeg_tree
from PIL import Image

import train
from dali_cutmix.errors import DataError
from dali_cutmix.files import cache_root
from dali_cutmix_trainer import checkpoint as ckpt
from dali_cutmix_trainer import run
from pipelines.folders import load_split, usable_cache
from pipelines.loaders import train_loader, val_loader

ROOT = Path(__file__).resolve().parents[1]


def last_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and "Traceback" not in "\n".join(err), err
    return err[-1]


def rows(out: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def corrupt_png(path: Path) -> None:
    """A PNG whose header and IEND are intact but whose pixel data is garbage: the quick check
    passes it, DALI's decoder fails on it."""
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), np.uint8)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    for k in range(60, len(data) - 20):
        data[k] = (data[k] * 7 + 3) % 256
    path.write_bytes(bytes(data))


# ---------------------------------------------------------------- flags


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--lr", "nan"], "--lr must be a finite number > 0, got nan"),
        (["--lr", "inf"], "--lr must be a finite number > 0, got inf"),
        (["--momentum", "nan"], r"--momentum must be a finite number >= 0 and < 1, got nan"),
        (["--momentum", "1.5"], r"--momentum must be a finite number >= 0 and < 1, got 1.5"),
        (["--weight-decay", "nan"], "--weight-decay must be a finite number >= 0, got nan"),
        (["--warmup-epochs", "inf"], "--warmup-epochs must be a finite number >= 0, got inf"),
        (["--smoothing", "nan"], r"--smoothing must be a finite number >= 0 and < 1, got nan"),
        (["--seed", str(2**40)], r"--seed must be an int in \[0, 2147483647\], got 1099511627776"),
        (["--seed", "-1"], r"--seed must be an int in \[0, 2147483647\], got -1"),
        (["--image-size", "100000"], r"--image-size must be an int in \[16, 4096\], got 100000"),
        (["--cutmix-alpha", "inf"], "--cutmix-alpha must be a finite number >= 0, got inf"),
        (["--random-area", "nan", "1"], r"--random-area must be \(min, max\) with 0 < min <= max <= 1, got \(nan, 1"),
    ],
    ids=[
        "lr-nan",
        "lr-inf",
        "momentum-nan",
        "momentum-big",
        "wd-nan",
        "warmup-inf",
        "smoothing-nan",
        "seed-huge",
        "seed-neg",
        "size-huge",
        "alpha-inf",
        "area-nan",
    ],  # fmt: skip
)
def test_non_finite_and_out_of_range_numbers_are_refused_before_anything_runs(flags, message, capsys):
    with pytest.raises(SystemExit) as stop:
        train.parse_args(flags)
    assert stop.value.code == 2
    assert re.search(message, last_error(capsys))


# ---------------------------------------------------------------- data


def test_a_file_dali_cannot_decode_is_named_in_one_line(jpeg_tree, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("pipelines.sources.CACHE", tmp_path / "cache")
    bad = jpeg_tree / "train" / "class0" / "zz-corrupt.png"
    corrupt_png(bad)
    out = tmp_path / "run"
    code = train.main(train_args(jpeg_tree, out, "--epochs", "1", "--batch-size", "19"))  # every file in batch 1
    line = last_error(capsys)
    assert code == 2 and line.startswith(f"train.py: error: {bad}: DALI failed to decode it")
    assert "--scan full" in line
    assert not out.exists()  # a failed start leaves no batch.png, listing or lock behind
    assert train.main(train_args(jpeg_tree, out, "--epochs", "1", "--scan", "full")) == 0  # no --overwrite needed
    assert str(bad) in (out / "bad_files_train.txt").read_text()


def test_the_library_names_the_file_dali_failed_on(jpeg_tree):
    from dali_cutmix.loader import DecodeFailed

    bad = jpeg_tree / "train" / "class1" / "zz-corrupt.png"
    corrupt_png(bad)
    with pytest.raises(DecodeFailed, match=f"DALI failed to decode {bad}") as failed:
        list(train_loader(jpeg_tree / "train", batch_size=19, image_size=32, num_threads=1, shard_id=0, num_shards=1))
    assert failed.value.path == str(bad)


def test_an_imagenet_root_given_as_a_split_is_refused(jpeg_tree):
    with pytest.raises(DataError, match="is an ImageNet root .* give '.*/train' for training"):
        train_loader(jpeg_tree, batch_size=2, num_threads=1, shard_id=0, num_shards=1)


def test_a_file_list_label_beyond_the_classes_is_refused_naming_it(jpeg_tree):
    files = sorted((jpeg_tree / "val").rglob("*.JPEG"))
    listing = jpeg_tree / "val.txt"
    listing.write_text("".join(f"{f.relative_to(jpeg_tree)} {i % 3}\n" for i, f in enumerate(files[:-1]))
                       + f"{files[-1].relative_to(jpeg_tree)} 9\n")  # fmt: skip
    classes = load_split(jpeg_tree / "train").classes
    with pytest.raises(DataError, match=f"{files[-1]} has label 9, beyond the 3 training classes"):
        val_loader(listing, batch_size=2, num_threads=1, classes=classes, shard_id=0, num_shards=1)


def test_a_newline_in_a_file_or_class_name_keeps_the_cache_and_the_picture(tmp_path, monkeypatch):
    from pipelines.scan import scan

    root = write_jpeg_tree(tmp_path / "data")
    odd = root / "train" / "line\nbreak"
    for split in ("train", "val"):
        (root / split / "class2").rename(root / split / "line\nbreak")
    (odd / "img0.JPEG").rename(odd / "new\nline\tand tab.JPEG")
    split = load_split(root / "train")
    assert scan(split, cache_dir=tmp_path / "cache", workers=1).scanned == 18
    assert scan(split, cache_dir=tmp_path / "cache", workers=1).scanned == 0  # the cache holds every file
    monkeypatch.setattr("pipelines.sources.CACHE", tmp_path / "cache")
    assert train.main(train_args(root, tmp_path / "run", "--epochs", "1")) == 0
    assert (tmp_path / "run" / "batch.png").stat().st_size > 0


# ---------------------------------------------------------------- the cache


def test_the_cache_follows_xdg_and_an_unusable_cache_is_a_warning(jpeg_tree, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DALI_CUTMIX_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "dali-cutmix"
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("DALI_CUTMIX_CACHE", str(blocker))
    assert cache_root() == blocker
    monkeypatch.setattr("pipelines.sources.CACHE", blocker)
    assert train.main(train_args(jpeg_tree, tmp_path / "run", "--epochs", "1")) == 0
    err = capsys.readouterr().err
    assert f"warning: the cache {blocker} cannot be used" in err and "DALI_CUTMIX_CACHE" in err
    assert usable_cache(tmp_path / "fine") == tmp_path / "fine"


# ---------------------------------------------------------------- resume


def test_the_same_data_spelled_otherwise_resumes(jpeg_tree, tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert train.main(train_args(jpeg_tree, out, "--epochs", "1")) == 0
    monkeypatch.chdir(jpeg_tree.parent)
    for i, spelling in enumerate([f"{jpeg_tree}/", f"{jpeg_tree}//", f"./{jpeg_tree.name}"]):
        flags = train_args(spelling, out, "--epochs", str(2 + i), "--resume")
        assert train.main(flags) == 0, spelling
    assert rows(out) == [0, 1, 2, 3]


def test_a_resume_that_would_end_before_the_checkpoint_is_refused(jpeg_tree, tmp_path, capsys):
    out = tmp_path / "run"
    assert train.main(train_args(jpeg_tree, out, "--epochs", "2")) == 0
    config = (out / "config.json").read_text()
    assert train.main(train_args(jpeg_tree, out, "--epochs", "1", "--resume")) == 2
    line = last_error(capsys)
    assert "--epochs 1 ends before the checkpoint" in line and "give --epochs above 2" in line
    assert (out / "config.json").read_text() == config


def test_the_metrics_row_of_an_epoch_survives_a_kill_before_its_checkpoint(jpeg_tree, tmp_path, monkeypatch):
    out = tmp_path / "run"
    real = ckpt.write_metrics

    def killed_after(path, written):
        real(path, written)
        if len(written) == 2:
            raise KeyboardInterrupt  # stands for a SIGKILL between the row and the checkpoint

    monkeypatch.setattr(ckpt, "write_metrics", killed_after)
    assert train.main(train_args(jpeg_tree, out, "--epochs", "2")) == 130
    monkeypatch.setattr(ckpt, "write_metrics", real)
    assert train.main(train_args(jpeg_tree, out, "--epochs", "2", "--resume")) == 0
    assert rows(out) == [0, 1]  # epoch 1 trained again from checkpoint 1, its row written once


def test_a_foreign_checkpoint_gets_our_advice_not_torchs(jpeg_tree, tmp_path, capsys):
    import collections

    path = tmp_path / "foreign.pt"
    torch.save({"model": collections.OrderedDict(a=Path("x")), "epoch": 1}, path)  # a Path: refused by a safe load
    assert train.main(train_args(jpeg_tree, tmp_path / "run", "--epochs", "2", "--resume", str(path))) == 2
    line = last_error(capsys)
    assert f"checkpoint {path} cannot be loaded" in line and "weights_only" not in line and "trust" not in line


# ---------------------------------------------------------------- interruptions and small things


def test_ctrl_c_during_the_start_up_scan_is_one_line(jpeg_tree, tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "resolve", interrupted)
    assert train.main(train_args(jpeg_tree, tmp_path / "run", "--epochs", "1")) == 130
    assert last_error(capsys).startswith("train.py: interrupted")
    assert not (tmp_path / "run").exists()


def test_ctrl_c_twice_during_training_is_one_line(jpeg_tree, tmp_path, monkeypatch):
    code = ("import os, signal, sys, train; from dali_cutmix_trainer import engine; real = engine.train_step\n"
            "def step(*a, **k):\n    os.kill(os.getpid(), signal.SIGINT); os.kill(os.getpid(), signal.SIGINT)\n"
            "    return real(*a, **k)\n"
            "engine.train_step = step; sys.exit(train.main())")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code, *train_args(jpeg_tree, tmp_path / "run", "--epochs", "1")],
                          cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 130 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("train.py: interrupted")


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--repeat", "0"], "--workers and --repeat must be >= 1, got"),
        (["--workers", "-3"], "--workers and --repeat must be >= 1, got -3"),
        (["--cache", "FILE"], "--cache .* is a file, not a folder"),
    ],
    ids=["repeat0", "workers-neg", "cache-file"],
)
def test_the_scan_command_refuses_bad_flags_in_one_line(jpeg_tree, tmp_path, flags, message):
    (tmp_path / "FILE").write_text("x")
    flags = [str(tmp_path / "FILE") if f == "FILE" else f for f in flags]
    done = subprocess.run([sys.executable, "-m", "pipelines.scan", str(jpeg_tree / "train"), *flags], cwd=ROOT,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert re.search(message, done.stderr.strip().splitlines()[-1])


def test_scan_workers_are_capped_at_the_cores(tmp_path, monkeypatch):
    from pipelines import scan as scan_module

    root = write_jpeg_tree(tmp_path / "data", train_per_class=40)
    asked = []
    real = scan_module.worker_pool
    monkeypatch.setattr(scan_module, "worker_pool", lambda n: asked.append(n) or real(n))
    scan_module.scan(load_split(root / "train"), workers=1000)
    assert asked == [] or asked[0] <= (os.cpu_count() or 1)


@pytest.mark.parametrize("flags, message", [
    (["--image-size", "100000"], r"--image-size must be an int in \[16, 4096\], got 100000"),
    (["--output", "x.jpg"], "--output 'x.jpg': the picture is a PNG"),
], ids=["size", "jpg"])  # fmt: skip
def test_the_preview_refuses_bad_flags_in_one_line(jpeg_tree, flags, message):
    done = subprocess.run([sys.executable, "-m", "pipelines.preview", "--data", str(jpeg_tree), *flags], cwd=ROOT,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert re.search(message, done.stderr.strip().splitlines()[-1])


def test_output_files_take_the_umask_not_a_private_mode(jpeg_tree, tmp_path):
    out = tmp_path / "run"
    assert train.main(train_args(jpeg_tree, out, "--epochs", "1")) == 0
    expected = 0o666 & ~files_module_umask()
    for name in ("config.json", "metrics.jsonl", "checkpoint_0001.pt"):
        assert stat.S_IMODE((out / name).stat().st_mode) == expected, name


def files_module_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_damaged_metrics_file_is_a_user_error_naming_its_line(jpeg_tree, tmp_path, capsys):
    out = tmp_path / "run"
    assert train.main(train_args(jpeg_tree, out, "--epochs", "1")) == 0
    with (out / "metrics.jsonl").open("a") as f:
        f.write("GARBAGE{\n")
    assert train.main(train_args(jpeg_tree, out, "--epochs", "2", "--resume")) == 2
    line = last_error(capsys)
    assert line.startswith(f"train.py: error: {out / 'metrics.jsonl'}:2 is damaged") and "remove that line" in line


def test_a_learning_rate_that_overflows_once_scaled_is_refused(capsys):
    with pytest.raises(SystemExit):
        train.parse_args(["--lr", "1e308"])
    assert "--lr 1e+308 overflows once scaled by the global batch" in last_error(capsys)


# ---------------------------------------------------------------- round 2


def test_a_max_steps_run_resumes_on_its_exact_lr_step(jpeg_tree, tmp_path):
    """With --max-steps an epoch is 2 steps, not the loader's 3: the resumed run's lr and weights
    follow the uninterrupted run's."""
    flags = ("--max-steps", "2", "--lr-schedule", "cosine")
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert train.main(train_args(jpeg_tree, whole, "--epochs", "3", *flags)) == 0
    assert train.main(train_args(jpeg_tree, part, "--epochs", "1", *flags)) == 0
    assert train.main(train_args(jpeg_tree, part, "--epochs", "3", "--resume", *flags)) == 0
    lrs = [
        [json.loads(line)["lr"] for line in (out / "metrics.jsonl").read_text().splitlines()] for out in (whole, part)
    ]
    assert lrs[0] == pytest.approx(lrs[1], rel=1e-9, abs=0) and lrs[0][1] != lrs[0][2]


@pytest.mark.parametrize(
    "first, then, message",
    [
        ((), ("--val-data", "VAL2"), r"was validated on other data .* --val-data may not change on resume"),
        ((), ("--mixup", "0.3"), r"was trained with --mixup 0.0, this run has 0.3"),
    ],
    ids=["val-data", "mixup-named"],
)
def test_a_resume_that_would_change_the_results_is_refused_naming_the_flag(jpeg_tree, tmp_path, capsys, first,
                                                                          then, message):  # fmt: skip
    out = tmp_path / "run"
    other_val = write_jpeg_tree(tmp_path / "other", classes=3, val_per_class=5) / "val"
    then = tuple(str(other_val) if v == "VAL2" else v for v in then)
    assert train.main(train_args(jpeg_tree, out, "--epochs", "1", *first)) == 0
    capsys.readouterr()
    assert train.main(train_args(jpeg_tree, out, "--epochs", "2", "--resume", *then)) == 2
    assert re.search(message, last_error(capsys))


def test_a_resume_accepts_what_changes_nothing(jpeg_tree, tmp_path):
    """The backend that ran, named on resume; the demo's size with --data given (moot)."""
    out = tmp_path / "run"
    assert train.main(train_args(jpeg_tree, out, "--epochs", "1")) == 0
    assert train.main(train_args(jpeg_tree, out, "--epochs", "2", "--resume", "--cutmix-backend", "native",
                                 "--demo-per-class", "7")) == 0  # fmt: skip


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--size-schedule", "-1:32"], "--size-schedule needs epochs >= 0, got -1"),
        (["--demo-per-class=-5"], "--demo-per-class must be in [1, 6000]"),
    ],
    ids=["negative-epoch", "demo-size"],
)
def test_flags_said_wrong_get_their_own_message(flags, message, capsys):
    with pytest.raises(SystemExit):
        train.parse_args(flags)
    assert message in capsys.readouterr().err


def test_a_prepared_root_validated_above_its_prepared_size_is_a_warning(tmp_path, capsys, monkeypatch):
    from pipelines import prepare as prep

    monkeypatch.setattr("pipelines.sources.CACHE", tmp_path / "cache")
    src = write_jpeg_tree(tmp_path / "src")
    prep.prepare(src, tmp_path / "prepared", prep.Settings(max_side=64, val_size=16, quality=90), workers=1,
                 show=False)  # fmt: skip
    assert (
        train.main(train_args(tmp_path / "prepared", tmp_path / "run", "--epochs", "1", "--val-image-size", "40")) == 0
    )
    err = capsys.readouterr().err
    assert "was prepared for validation crops up to 16 px (--val-size 16): --val-image-size 40 upsamples" in err


def test_ctrl_c_before_the_first_checkpoint_leaves_nothing_behind(jpeg_tree, tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "build_model", interrupted)
    out = tmp_path / "run"
    assert train.main(train_args(jpeg_tree, out, "--epochs", "1")) == 130
    assert last_error(capsys) == "train.py: interrupted; no checkpoint had been written yet"
    assert not out.exists()


def test_a_storage_error_on_the_data_advises_about_the_data(jpeg_tree, tmp_path, capsys, monkeypatch):
    data_file = str(jpeg_tree / "train" / "class0" / "img0.JPEG")

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", data_file)

    monkeypatch.setattr(run, "resolve", denied)
    assert train.main(train_args(jpeg_tree, tmp_path / "run", "--epochs", "1")) == 1
    line = last_error(capsys)
    assert line.startswith(f"train.py: error: {data_file}: Permission denied: it is your data, not the run folder")


def test_a_write_that_cannot_start_names_the_file_not_its_temporary(tmp_path):
    from dali_cutmix.files import atomic_write

    (tmp_path / "a-file").write_text("x")
    with pytest.raises(OSError) as info:
        atomic_write(tmp_path / "a-file" / "config.json", lambda f: f.write(b"{}"))
    assert info.value.filename == str(tmp_path / "a-file" / "config.json")


def test_the_scan_command_says_what_it_cannot_do_in_one_line(jpeg_tree, tmp_path):
    (tmp_path / "shard.tar").write_bytes(b"")
    (tmp_path / "blocker").write_text("x")
    weird = jpeg_tree / "train" / "class0" / "two\nlines.JPEG"
    weird.write_bytes(b"")
    cases = [
        ([str(tmp_path / "shard.tar")], "holds WebDataset shards: they are checked sample by sample when indexed"),
        ([str(jpeg_tree / "train"), "--cache", str(tmp_path / "blocker" / "cache")], "give a writable --cache"),
    ]
    for args, message in cases:
        done = subprocess.run([sys.executable, "-m", "pipelines.scan", *args], cwd=ROOT, capture_output=True,
                              text=True)  # fmt: skip
        assert done.returncode != 0 and message in done.stderr and "Traceback" not in done.stderr, done.stderr
    done = subprocess.run([sys.executable, "-m", "pipelines.scan", str(jpeg_tree / "train")], cwd=ROOT,
                          capture_output=True, text=True)  # fmt: skip
    assert "two\\nlines.JPEG\tempty file" in done.stdout  # one line a file, the newline escaped


def test_the_preview_checks_the_files_first(jpeg_tree, tmp_path):
    (jpeg_tree / "train" / "class0" / "zero.JPEG").write_bytes(b"")
    done = subprocess.run([sys.executable, "-m", "pipelines.preview", "--data", str(jpeg_tree), "--image-size", "32",
                           "--batch-size", "4", "--output", str(tmp_path / "b.png")], cwd=ROOT, capture_output=True,
                          text=True)  # fmt: skip
    assert done.returncode == 0 and (tmp_path / "b.png").is_file(), done.stderr[-1500:]


@pytest.mark.parametrize("fault", ["cut-png", "vanished"])
def test_a_failure_dali_does_not_name_is_traced_to_its_file(jpeg_tree, tmp_path, fault):
    """DALI's words for a PNG cut mid-stream ("nvImageCodec failure: '#17'") and for a file gone
    during the run name no file; the loader finds it."""
    from dali_cutmix.loader import DecodeFailed

    common = dict(batch_size=3, image_size=32, num_threads=1, shard_id=0, num_shards=1, recipe=None)
    if fault == "cut-png":
        cut = jpeg_tree / "train" / "class1" / "zz-cut.png"
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(cut)
        data = cut.read_bytes()
        cut.write_bytes(data[: len(data) // 2] + data[-12:])
        with pytest.raises(DecodeFailed) as info:
            for _ in train_loader(jpeg_tree / "train", **common):
                pass
        assert info.value.path == str(cut) and not info.value.changed
    else:
        loader = train_loader(jpeg_tree / "train", prefetch_queue_depth=1, **common)
        gone = jpeg_tree / "train" / "class2"
        for f in gone.iterdir():
            f.unlink()
        with pytest.raises(DecodeFailed) as info:
            for _ in range(3):
                for _ in loader:
                    pass
        assert info.value.changed and "vanished during the run" in str(info.value)
        assert info.value.path.startswith(str(gone))
