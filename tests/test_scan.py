"""``dali_cutmix/scan.py``: bad files told from odd but valid ones, left out and listed, cached."""

import pytest

pytest.importorskip("nvidia.dali", exc_type=ImportError)  # `pytest -m gpu` collects without DALI

import io
import json
import os
from pathlib import Path

import numpy as np
import torch
from conftest import train_args, write_jpeg_tree
from PIL import Image

import train
from pipelines.files import load_split
from pipelines.loaders import train_loader, val_loader
from pipelines.scan import check_file, scan


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
    (root / "train" / "class3-broken").mkdir()  # a class whose only image is broken
    (root / "train" / "class3-broken" / "zero.JPEG").write_bytes(b"")
    monkeypatch.setattr("pipelines.sources.CACHE", tmp_path / "cache")  # scan verdicts cached here
    out = tmp_path / "run"
    args = train_args(root, out, "--epochs", "1")
    assert train.main(args) == 0
    printed = capsys.readouterr().out
    assert "left out 5 of 23 train files that are unusable" in printed
    assert "1 train classes have no usable images: class3-broken" in printed
    listed = (out / "bad_files_train.txt").read_text().splitlines()
    assert len(listed) == 5 and all("\t" in line for line in listed)
    assert json.loads((out / "metrics.jsonl").read_text())["train_images"] == 18
    assert train.main([*args, "--strict", "--output", str(tmp_path / "strict")]) == 2
    assert "--strict: 5 train files are unusable, first" in capsys.readouterr().err


def test_the_check_and_its_cache_load_neither_torch_nor_dali(tmp_path):
    """The scan CLI and the check's worker processes start in a fraction of a second: a scan that
    writes its cache imports neither torch nor DALI."""
    import subprocess
    import sys

    root = write_jpeg_tree(tmp_path / "data")
    code = (
        "import sys; from pipelines.files import load_split; from pipelines.scan import scan; "
        f"r = scan(load_split({str(root / 'train')!r}), cache_dir={str(tmp_path / 'cache')!r}, workers=1); "
        "print(r.scanned, sorted(m for m in ('torch', 'nvidia.dali') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["18", "[]"]
    assert list((tmp_path / "cache").rglob("*"))  # the cache was written
