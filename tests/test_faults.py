"""What a user, their disk or their data can do wrong: each ends in one line naming the file, flag
or value and what to do, and loses nothing already done."""

import errno
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytest.importorskip("nvidia.dali", exc_type=ImportError)  # `pytest -m gpu` collects without DALI

import numpy as np
import torch
from conftest import train_args, write_jpeg_tree
from PIL import Image

import train
from dali_cutmix.batch_grid import BOX_COLOUR, grid_size, show_batch, tile_origin, tile_scale
from dali_cutmix_trainer import checkpoint as ckpt
from dali_cutmix_trainer import run

ROOT = Path(__file__).resolve().parents[1]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and "Traceback" not in "\n".join(err), err
    return err[-1]


def start_live_run(data: Path, cwd: Path, *flags: str) -> subprocess.Popen:
    """train.py in a process of its own, training on and on; returns once it holds its folder."""
    command = [sys.executable, str(ROOT / "train.py"), "--data", str(data), "--arch", "resnet18", "--image-size",
               "32", "--batch-size", "6", "--workers", "1", "--epochs", "1000", "--warmup-epochs", "0",
               *flags]  # fmt: skip
    proc = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    out = cwd / (flags[flags.index("--output") + 1] if "--output" in flags else "runs/latest")
    for _ in range(600):
        if (out / "config.json").is_file():
            return proc
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.1)
    raise TimeoutError("the first run never started")


# ---------------------------------------------------------------- the disk


def test_a_checkpoint_that_cannot_be_written_loses_nothing_and_resume_continues(tmp_path, capsys, monkeypatch):
    """ENOSPC injected where a full disk reports it (the write's fsync) for epoch 2's checkpoint."""
    data, out = write_jpeg_tree(tmp_path / "data"), tmp_path / "run"
    assert train.main(train_args(data, out, "--epochs", "1")) == 0
    first = (out / "checkpoint_0001.pt").read_bytes()
    real_fsync = os.fsync

    def full(fd):
        if "checkpoint_0002" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full)
    assert train.main(train_args(data, out, "--epochs", "2", "--resume")) == 1
    line = one_line_error(capsys)
    assert "No space left on device" in line and "nothing was lost" in line
    assert f"the last good checkpoint is {out / 'checkpoint_0001.pt'}" in line and "--resume" in line
    assert sorted(p.name for p in out.iterdir() if p.name.endswith(".pt")) == ["checkpoint_0001.pt"]
    assert not list(out.glob(".*.tmp")) and (out / "checkpoint_0001.pt").read_bytes() == first
    monkeypatch.setattr(os, "fsync", real_fsync)  # space freed
    assert train.main(train_args(data, out, "--epochs", "2", "--resume")) == 0
    assert [r["epoch"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())] == [0, 1]


@pytest.fixture
def small_disk(tmp_path):
    """A 150 MiB tmpfs (root only): room for one resnet18 checkpoint (85 MiB), not two."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=150m", "tmpfs", str(disk)],
                                           capture_output=True).returncode:  # fmt: skip
        pytest.skip("mounting a tmpfs needs root (the injected ENOSPC test covers the write)")
    yield disk
    subprocess.run(["umount", str(disk)], check=False)


def test_a_full_disk_is_said_before_the_epoch_whose_checkpoint_cannot_fit(tmp_path, small_disk, capsys):
    data, out = write_jpeg_tree(tmp_path / "data"), small_disk / "run"
    start = time.perf_counter()
    assert train.main(train_args(data, out, "--epochs", "3")) == 1
    line = one_line_error(capsys)
    assert f"{out}: No space left on device" not in line  # said by the check, before a write failed
    assert "MiB free, the next checkpoint takes about 85 MiB" in line
    assert f"the last good checkpoint is {out / 'checkpoint_0001.pt'}" in line and "free some space" in line
    assert [r["epoch"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())] == [0]
    assert time.perf_counter() - start < 60
    subprocess.run(["mount", "-o", "remount,size=400m", str(small_disk)], check=True)  # space freed
    assert train.main(train_args(data, out, "--epochs", "3", "--resume")) == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3


# ---------------------------------------------------------------- the output folder


def test_an_output_that_is_a_file_is_a_usage_error(tmp_path, capsys):
    (tmp_path / "taken").write_text("not a folder")
    with pytest.raises(SystemExit) as stop:
        train.main(train_args(tmp_path / "data", tmp_path / "taken"))
    assert stop.value.code == 2
    assert f"--output {str(tmp_path / 'taken')!r} is a file, not a folder" in one_line_error(capsys)


def test_an_unwritable_output_is_one_line(jpeg_tree, capsys):
    """/sys refuses new folders even to root."""
    assert train.main(train_args(jpeg_tree, "/sys/dali-cutmix-run", "--epochs", "1")) == 1
    line = one_line_error(capsys)
    assert line.startswith("train.py: error: /sys/dali-cutmix-run") and "choose another --output" in line


def test_a_live_run_keeps_its_folder_from_a_second_run_and_from_resume(jpeg_tree, tmp_path):
    live = start_live_run(jpeg_tree, tmp_path)  # into the default folder, runs/latest
    try:
        for extra in ([], ["--resume"], ["--overwrite"]):
            done = subprocess.run([sys.executable, str(ROOT / "train.py"), "--data", str(jpeg_tree), *extra],
                                  cwd=tmp_path, capture_output=True, text=True)  # fmt: skip
            assert done.returncode == 2, done.stderr
            lines = done.stderr.strip().splitlines()
            assert len(lines) == 1 and f"in use by a live run (pid {live.pid} on " in lines[0], (extra, lines)
        assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["latest"]  # not moved aside
    finally:
        live.send_signal(signal.SIGKILL)
        live.wait()
    # SIGKILL leaves no stale lock: the run continues from its folder
    assert ckpt.live_run(tmp_path / "runs" / "latest") is None


def test_the_lock_is_held_for_the_run_and_dies_with_it(tmp_path):
    lock = ckpt.RunLock(tmp_path / "run")
    assert f"pid {os.getpid()} on " in ckpt.live_run(tmp_path / "run")
    with pytest.raises(ckpt.RunInUse, match=r".*run is in use by a live run \(pid \d+"):
        ckpt.RunLock(tmp_path / "run")
    lock.release()
    assert ckpt.live_run(tmp_path / "run") is None and ckpt.live_run(tmp_path / "nothing") is None


# ---------------------------------------------------------------- flags and data


def test_a_batch_larger_than_the_ranks_share_names_both_numbers(jpeg_tree, tmp_path, capsys):
    assert train.main(train_args(jpeg_tree, tmp_path / "run", batch_size=256)) == 2
    line = one_line_error(capsys)
    assert "--batch-size 256 is larger than a rank's share of the training data: 18 of 18 images" in line
    assert "lower --batch-size" in line and not (tmp_path / "run").exists()  # a failed start leaves no folder


def test_max_steps_below_one_is_a_usage_error(jpeg_tree, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        train.main(train_args(jpeg_tree, tmp_path / "run", "--max-steps", "0"))
    assert stop.value.code == 2 and "--max-steps must be >= 1, got 0" in one_line_error(capsys)


def test_a_class_folder_without_images_is_an_error_naming_it(jpeg_tree, tmp_path, capsys):
    (jpeg_tree / "train" / "class9-empty").mkdir()
    (jpeg_tree / "train" / "class9-empty" / "notes.txt").write_text("no images here")
    assert train.main(train_args(jpeg_tree, tmp_path / "run")) == 2
    line = one_line_error(capsys)
    assert "has class folders without images: 'class9-empty'" in line and "remove the folders" in line


def test_a_bug_is_one_line_that_says_so_and_names_the_file_with_its_traceback(jpeg_tree, tmp_path):
    out = tmp_path / "run"
    code = "import sys, train, dali_cutmix_trainer.run as r; r.build_model = None; sys.exit(train.main())"
    done = subprocess.run([sys.executable, "-c", code,
                           *train_args(jpeg_tree, out, "--epochs", "1")], cwd=ROOT, capture_output=True,
                          text=True)  # fmt: skip
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert lines[-1] == (
        f"train.py: internal error (a bug, not your input): TypeError: 'NoneType' object is not callable; the "
        f"traceback is in {out / 'error.log'}: please report it with the command you ran"
    )
    assert "Traceback (most recent call last)" in (out / "error.log").read_text()
    debug = subprocess.run(
        done.args, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "DALI_CUTMIX_DEBUG": "1"}
    )
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr


def test_a_bug_before_the_output_exists_keeps_its_traceback_in_a_temporary_file(jpeg_tree, tmp_path, capsys,
                                                                                  monkeypatch):  # fmt: skip
    def broken(*args, **kwargs):
        raise KeyError("a bug in the data's resolution")

    monkeypatch.setattr(run, "resolve", broken)
    assert train.main(train_args(jpeg_tree, tmp_path / "never", "--epochs", "1")) == 1
    line = one_line_error(capsys)
    assert line.startswith("train.py: internal error (a bug, not your input): KeyError:")
    log = Path(line.split("the traceback is in ")[1].split(":")[0])
    assert log.parent == Path(tempfile.gettempdir()) and "KeyError" in log.read_text()
    log.unlink()
    assert not (tmp_path / "never").exists()


def test_a_library_value_error_is_a_bug_not_a_usage_error(jpeg_tree, tmp_path, capsys, monkeypatch):
    """A ValueError from inside is no longer taken for bad input (exit 2): only the library's
    UserError is."""

    def broken(*args, **kwargs):
        raise ValueError("shard_id must be in [0, num_shards=1), got 3")

    monkeypatch.setattr(run, "train_loader", broken)
    assert train.main(train_args(jpeg_tree, tmp_path / "run", "--epochs", "1")) == 1
    assert "internal error (a bug, not your input): ValueError: shard_id" in one_line_error(capsys)


def test_the_error_line_starts_on_a_line_of_its_own_after_the_progress_bar(jpeg_tree, tmp_path):
    code = ("import sys, train; from dali_cutmix_trainer import engine; real = engine.train_step\n"
            "def step(*a, **k):\n    raise RuntimeError('a bug mid-epoch')\n"
            "engine.train_step = step; sys.exit(train.main())")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code, *train_args(jpeg_tree, tmp_path / "run", "--epochs", "1")],
                          cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 1
    assert "\ntrain.py: internal error (a bug, not your input): RuntimeError: a bug mid-epoch" in done.stderr


@pytest.mark.parametrize("where", ["checkpoint.RunLock.release", "cli.Report.bug"])
def test_a_failing_rank_outlives_the_sigterm_that_follows_a_peers_exit(jpeg_tree, tmp_path, where):
    """torchrun SIGTERMs every rank once one exits: a rank failing at that moment (here the signal
    lands as the failing run lets go of its folder, or as it reports its bug) still writes its
    line, where the signal used to kill it."""
    owner, name = where.rsplit(".", 1)
    code = ("import os, signal, sys, train; from dali_cutmix_trainer import checkpoint, cli, engine\n"
            "def step(*a, **k):\n    raise RuntimeError('a bug mid-epoch')\n"
            f"real = {owner}.{name}\n"
            "def hook(*a, **k):\n    os.kill(os.getpid(), signal.SIGTERM)\n    return real(*a, **k)\n"
            f"engine.train_step = step; {owner}.{name} = hook; sys.exit(train.main())")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code, *train_args(jpeg_tree, tmp_path / "run", "--epochs", "1")],
                          cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 1, done.stderr[-2000:]
    assert "train.py: internal error (a bug, not your input): RuntimeError: a bug mid-epoch" in done.stderr


@pytest.mark.parametrize("error, code", [(RuntimeError("a bug mid-epoch"), 1), (KeyboardInterrupt(), 130)],
                         ids=["bug", "interrupted"])  # fmt: skip
def test_a_failed_run_gives_back_the_signal_handlers_it_found(jpeg_tree, tmp_path, monkeypatch, error, code):
    """train.main in a notebook: after a bug or a Ctrl-C, SIGTERM and SIGINT work as before."""
    from dali_cutmix_trainer import engine

    def step(*args, **kwargs):
        raise error

    monkeypatch.setattr(engine, "train_step", step)
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    assert train.main(train_args(jpeg_tree, tmp_path / "run", "--epochs", "1")) == code
    assert {sig: signal.getsignal(sig) for sig in before} == before


# ---------------------------------------------------------------- the picture of the batch


def test_show_batch_draws_each_box_where_the_parameters_say(tmp_path):
    images = np.full((5, 12, 20, 3), 90, np.uint8)  # (B, H, W, C): grey, nowhere magenta
    boxes = np.array([[2, 3, 8, 11], [0, 0, 12, 5], [4, 4, 4, 4], [1, 2, 6, 9], [1, 2, 6, 9]])
    blend = np.array([0, 0, 0, 0, 1.0])  # the last is a MixUp blend: no box
    mirror = np.array([0, 1, 0, 0, 0])  # the second was flipped after mixing: its box too
    labels_a, labels_b = torch.tensor([0, 1, 2, 0, 1]), torch.tensor([1, 0, 2, 2, 0])
    lam = torch.tensor([0.8, 0.75, 1.0, 0.79, 0.3])
    path = show_batch(images, labels_a, labels_b, lam, ["cat", "dog", "bird"], tmp_path / "b.png", boxes=boxes,
                      blend=blend, mirror=mirror)  # fmt: skip
    png = np.asarray(Image.open(path).convert("RGB"))
    assert png.shape[1::-1] == grid_size(5, 12, 20)
    s = tile_scale(12, 20)

    def magenta(i, x, y):
        x0, y0 = tile_origin(i, 12, 20)
        return tuple(png[y0 + y, x0 + x]) == BOX_COLOUR

    def tile_has_magenta(i):
        x0, y0 = tile_origin(i, 12, 20)
        return (png[y0 : y0 + 12 * s, x0 : x0 + 20 * s] == BOX_COLOUR).all(-1).any()

    assert magenta(0, 3 * s, 2 * s) and magenta(0, 11 * s - 1, 8 * s - 1) and not magenta(0, 2 * s, 2 * s)
    assert magenta(1, 15 * s, 0) and magenta(1, 20 * s - 1, 12 * s - 1)  # x 0..5 flipped: 15..20
    assert not tile_has_magenta(2) and tile_has_magenta(3) and not tile_has_magenta(4)


def test_train_writes_the_picture_of_its_first_batch(jpeg_tree, tmp_path):
    out = tmp_path / "run"
    assert train.main(train_args(jpeg_tree, out, "--epochs", "1", "--mixup", "0.4", "--cutmix-mode", "elem")) == 0
    png = Image.open(out / "batch.png")
    assert png.size == grid_size(6, 32, 32)  # batch 6 at 32 px
