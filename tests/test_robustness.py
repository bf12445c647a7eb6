"""Never lose a run: bad files, odd but valid images, interruptions, non-finite loss."""

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import train_args, write_jpeg_tree
from PIL import Image

import train
from dali_cutmix import checkpoint as ckpt
from dali_cutmix.data import load_split
from dali_cutmix.scan import check_file, scan
from pipelines.loaders import train_loader, val_loader

ROOT = Path(__file__).resolve().parents[1]


def photo(h=60, w=80, seed=0):
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, w)[None, :, None] * np.ones((h, 1, 3))
    return Image.fromarray(np.clip(base + rng.integers(0, 30, (h, w, 3)), 0, 255).astype(np.uint8))


def jpeg_bytes(image, **kwargs):
    buf = io.BytesIO()
    image.save(buf, format="JPEG", **kwargs)
    return buf.getvalue()


def write_odd_images(folder: Path) -> dict[str, Path]:
    """Valid images of the kinds real ImageNet holds; each must decode to an RGB crop."""
    folder.mkdir(parents=True, exist_ok=True)
    p = photo()
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees
    files = {
        "cmyk": jpeg_bytes(p.convert("CMYK")),
        "gray": jpeg_bytes(p.convert("L")),
        "progressive": jpeg_bytes(p, progressive=True, quality=85),
        "exif-rotated": jpeg_bytes(p, exif=exif.tobytes()),
        "tiny-1x1": jpeg_bytes(photo(1, 1)),
        "long-20000x50": jpeg_bytes(photo(50, 20000)),
    }
    png = io.BytesIO()
    p.save(png, format="PNG")
    files["png-named-jpeg"] = png.getvalue()
    paths = {}
    for name, data in files.items():
        paths[name] = folder / f"{name}.JPEG"
        paths[name].write_bytes(data)
    return paths


def write_bad_files(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    good = jpeg_bytes(photo(120, 160), quality=95)
    files = {
        "truncated": good[: len(good) // 2],
        "garbage": np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes(),
        "zero-byte": b"",
        "text": b"this is not an image\n" * 20,
    }
    paths = {}
    for name, data in files.items():
        paths[name] = folder / f"{name}.JPEG"
        paths[name].write_bytes(data)
    return paths


def test_check_file_tells_good_from_bad(tmp_path):
    for name, path in write_odd_images(tmp_path / "odd").items():
        assert check_file(str(path)) == "", name
    reasons = {name: check_file(str(path)) for name, path in write_bad_files(tmp_path / "bad").items()}
    assert reasons["truncated"] == "truncated JPEG (no end-of-image marker)"
    assert reasons["zero-byte"] == "empty file"
    assert reasons["garbage"].startswith("UnidentifiedImageError")
    assert reasons["text"].startswith("UnidentifiedImageError")
    unreadable = tmp_path / "bad" / "unreadable.JPEG"
    unreadable.mkdir()  # a directory with an image name: open() fails
    assert check_file(str(unreadable)).startswith("IsADirectoryError")


@pytest.mark.parametrize("backend", ["python", "native"])
def test_odd_but_valid_images_decode_to_rgb_crops(tmp_path, backend):
    write_odd_images(tmp_path / "train" / "a")
    loader = train_loader(tmp_path / "train", batch_size=7, image_size=32, num_threads=1, backend=backend)
    ((images, *_),) = list(loader)
    assert images.shape == (7, 3, 32, 32) and torch.isfinite(images).all()
    val = val_loader(tmp_path / "train", batch_size=7, image_size=32, num_threads=1)
    ((images, _),) = list(val)
    assert images.shape == (7, 3, 32, 32)


def test_exif_orientation_is_applied(tmp_path):
    # A tall image stored as wide plus an orientation tag: DALI must hand back the tall one.
    exif = Image.Exif()
    exif[0x0112] = 6
    only = tmp_path / "e" / "a"
    only.mkdir(parents=True)
    (only / "x.JPEG").write_bytes(jpeg_bytes(photo(40, 120), exif=exif.tobytes()))
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def pipe():
        jpegs, _ = fn.readers.file(file_root=str(tmp_path / "e"))
        return fn.decoders.image(jpegs, output_type=types.RGB)

    p = pipe()
    p.build()
    (out,) = p.run()
    assert out.as_array().shape == (1, 120, 40, 3)


def test_scan_leaves_bad_files_out_and_caches(tmp_path):
    root = write_jpeg_tree(tmp_path / "data")
    bad = write_bad_files(root / "train" / "class1")
    split = load_split(root / "train")
    result = scan(split, cache_dir=tmp_path / "cache", workers=2)
    assert result.scanned == 22 and len(result.good) == 18
    assert {Path(p).stem for p, _ in result.bad} == set(bad)
    again = scan(split, cache_dir=tmp_path / "cache", workers=2)
    assert again.scanned == 0 and again.good == result.good  # all from the cache
    bad["zero-byte"].write_bytes(jpeg_bytes(photo()))  # fixed: size and mtime change
    stat = bad["zero-byte"].stat()
    os.utime(bad["zero-byte"], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a later mtime, without a sleep
    fixed = scan(split, cache_dir=tmp_path / "cache", workers=2)
    assert fixed.scanned == 1 and len(fixed.good) == 19


def test_training_goes_on_past_bad_files_and_strict_stops(tmp_path, capsys, monkeypatch):
    root = write_jpeg_tree(tmp_path / "data")
    write_bad_files(root / "train" / "class2")
    (root / "train" / "class3-empty").mkdir()
    monkeypatch.setattr(train, "CACHE", tmp_path / "cache")  # scan verdicts cached here
    out = tmp_path / "run"
    args = train_args(root, out, "--epochs", "1")
    assert train.main(args) == 0
    printed = capsys.readouterr().out
    assert "left out 4 of 22 train files that are unusable" in printed
    assert "1 train classes have no usable images: class3-empty" in printed
    listed = (out / "bad_files_train.txt").read_text().splitlines()
    assert len(listed) == 4 and all("\t" in line for line in listed)
    assert json.loads((out / "metrics.jsonl").read_text())["train_images"] == 18
    assert train.main([*args, "--strict", "--output", str(tmp_path / "strict")]) == 2
    assert "--strict: 4 train files are unusable, first" in capsys.readouterr().err


def test_a_data_dir_without_images_is_a_one_line_error(tmp_path):
    (tmp_path / "data" / "train" / "a").mkdir(parents=True)
    (tmp_path / "data" / "val" / "a").mkdir(parents=True)
    proc = subprocess.run(
        [sys.executable, "train.py", "--data", str(tmp_path / "data"), "--output", str(tmp_path / "o")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert (
        proc.stderr.strip().splitlines()[-1]
        == f"train.py: error: {str(tmp_path / 'data' / 'train')!r} holds no images "
        "(.jpg, .jpeg, .png, .bmp, .tif, .tiff, .webp)"
    )


def test_checkpoint_writes_are_atomic(tmp_path):
    target = tmp_path / "c.pt"
    target.write_bytes(b"old")

    def crash(f):
        f.write(b"half of a checkpoint")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        ckpt.atomic_write(target, crash)
    assert target.read_bytes() == b"old" and list(tmp_path.iterdir()) == [target]


def test_checkpoint_writes_sync_the_folder_after_the_rename(tmp_path, monkeypatch):
    import stat

    synced = []
    real = os.fsync

    def spy(fd):
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    ckpt.atomic_write(tmp_path / "c.pt", lambda f: f.write(b"data"))
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


def test_non_finite_loss_stops_naming_the_step(jpeg_tree, tmp_path, capsys):
    out = tmp_path / "run"
    base = train_args(jpeg_tree, out)
    assert train.main([*base, "--epochs", "1"]) == 0
    good = (out / "checkpoint_0001.pt").read_bytes()
    # Resumed with an absurd lr, the run blows up at once; the earlier checkpoint must survive.
    assert train.main([*base, "--epochs", "2", "--lr", "1e30", "--resume"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("train.py: error: non-finite loss") and "at epoch 1, step 1;" in err
    assert (out / "checkpoint_0001.pt").read_bytes() == good and ckpt.latest(out) == out / "checkpoint_0001.pt"


def train_cmd(data: Path, out: Path) -> list[str]:
    """train.py for 2 epochs of 30 steps on ``data``, with MixUp switching, as a subprocess command."""
    flags = train_args(data, out, "--epochs", "2", "--mixup", "0.2", "--mixup-mode", "elem", batch_size=4)
    return [sys.executable, "train.py", *flags]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """120 images and the final weights of a run that nothing interrupted."""
    root = tmp_path_factory.mktemp("uninterrupted")
    data = write_jpeg_tree(root / "data", train_per_class=40)
    proc = subprocess.run(train_cmd(data, root / "run"), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return data, torch.load(root / "run" / "checkpoint_0002.pt", weights_only=True)["model"]


def assert_same_weights(out: Path, reference: dict) -> None:
    final = torch.load(out / "checkpoint_0002.pt", weights_only=True)["model"]
    for name, tensor in reference.items():
        torch.testing.assert_close(final[name], tensor, rtol=1e-5, atol=1e-6, msg=name)


# train.py, with a signal sent to itself right after the Nth training step of the run: the
# interruption lands at a known step, whatever the machine's speed.
SIGNAL_AT_STEP = """
import os, sys
import train
signum, at = int(sys.argv[1]), int(sys.argv[2])
real, done = train.train_step, [0]
def step(*args, **kwargs):
    loss = real(*args, **kwargs)
    done[0] += 1
    if done[0] == at:
        os.kill(os.getpid(), signum)
    return loss
train.train_step = step
sys.exit(train.main(sys.argv[3:]))
"""


def interrupted(tmp_path, data: Path, signum: int, at_step: int):
    """Run :func:`train_cmd` until ``signum`` after its ``at_step``-th step; return the finished
    process, the command and the output folder."""
    out = tmp_path / "run"
    cmd = train_cmd(data, out)
    driver = [sys.executable, "-c", SIGNAL_AT_STEP, str(signum), str(at_step), *cmd[2:]]
    proc = subprocess.run(driver, cwd=ROOT, capture_output=True, text=True, timeout=300)
    return proc, cmd, out


@pytest.mark.slow
def test_sigterm_saves_mid_epoch_and_resume_is_exact(tmp_path, uninterrupted):
    data, reference = uninterrupted
    proc, cmd, out = interrupted(tmp_path, data, signal.SIGTERM, at_step=30 + 12)  # epoch 1, its 12th step
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
    saved = ckpt.latest(out)
    state = torch.load(saved, weights_only=True)
    assert saved.name == "checkpoint_0001_step000012.pt" and state["epoch"] == 1 and state["step"] == 12
    proc = subprocess.run([*cmd, "--resume"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"resuming from {saved}: epoch 1, step 12, with the data stream exactly" in proc.stdout
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]
    assert rows[1]["steps"] == 30 and rows[1]["train_images"] == 4 * (30 - 12)
    assert not saved.exists()  # superseded by checkpoint_0002.pt
    assert_same_weights(out, reference)  # the same batches, mixes and updates as without the signal


@pytest.mark.slow
def test_sigkill_mid_epoch_resumes_from_the_last_complete_checkpoint_exactly(tmp_path, uninterrupted):
    data, reference = uninterrupted
    proc, cmd, out = interrupted(tmp_path, data, signal.SIGKILL, at_step=30 + 10)
    assert proc.returncode == -signal.SIGKILL
    assert ckpt.latest(out) == out / "checkpoint_0001.pt"
    torch.load(out / "checkpoint_0001.pt", weights_only=True)  # whole, loadable
    proc = subprocess.run([*cmd, "--resume"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "epoch 1, step 0, with the data stream exactly" in proc.stdout
    assert [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [0, 1]
    assert_same_weights(out, reference)


def test_resuming_on_data_with_other_classes_is_a_clear_error(tmp_path, capsys):
    three = write_jpeg_tree(tmp_path / "three", classes=3)
    four = write_jpeg_tree(tmp_path / "four", classes=4)
    out = tmp_path / "run"
    assert train.main(train_args(three, out, "--epochs", "1")) == 0
    assert train.main(train_args(four, out, "--epochs", "2", "--resume")) == 2
    assert capsys.readouterr().err.strip().endswith("checkpoint has 3 classes, but the data has 4")
