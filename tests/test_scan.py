"""``dali_cutmix/scan.py``: bad files told from odd but valid ones, left out and listed, cached."""

import pytest

pytest.importorskip("nvidia.dali", exc_type=ImportError)  # `pytest -m gpu` collects without DALI

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from conftest import train_args, write_jpeg_tree
from PIL import Image

import train
from pipelines.folders import load_split
from pipelines.loaders import train_loader, val_loader
from pipelines.scan import check_file, scan

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
    unreadable.mkdir()  # a directory with an image name: open() fails, which says nothing of an image
    with pytest.raises(IsADirectoryError):
        check_file(str(unreadable))


def test_a_header_that_claims_more_pixels_than_its_bytes_hold_is_bad(tmp_path):
    data = bytearray(jpeg_bytes(photo(16, 16)))
    sof = data.index(b"\xff\xc0")  # baseline frame header: length (2), precision (1), height (2), width (2)
    data[sof + 5 : sof + 9] = (13000).to_bytes(2, "big") * 2
    forged = tmp_path / "forged.JPEG"
    forged.write_bytes(bytes(data))
    assert check_file(str(forged)) == f"13000x13000 JPEG in only {len(data)} bytes (truncated or forged header)"


def test_a_bug_in_the_check_is_raised_not_taken_for_a_bad_file(tmp_path, monkeypatch):
    path = tmp_path / "fine.JPEG"
    path.write_bytes(jpeg_bytes(photo()))

    def broken(*args, **kwargs):
        raise NameError("a bug")

    monkeypatch.setattr("PIL.Image.open", broken)
    with pytest.raises(NameError, match="a bug"):
        check_file(str(path))


def _scan_cli(root: Path, cache: Path, faults: dict | None = None):
    """``python -m pipelines.scan`` with 2 worker processes, with storage faults injected into
    every process (tests/faults/sitecustomize.py)."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo / "tests" / "faults"), str(repo)])}
    if faults is not None:
        env["DALI_CUTMIX_TEST_FAULTS"] = json.dumps(faults)
    command = [sys.executable, "-m", "pipelines.scan", str(root / "train"), "--workers", "2", "--cache", str(cache)]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=repo, check=True).stdout


def test_a_storage_error_is_retried_and_never_cached_as_a_verdict(tmp_path):
    root = write_jpeg_tree(tmp_path / "data")
    files = sorted(str(p) for p in (root / "train").rglob("*.JPEG"))
    on_open, on_read = files[0], files[-1]
    cache = tmp_path / "cache"
    printed = _scan_cli(root, cache, {"open": [on_open], "read": [on_read], "times": None})
    assert printed.splitlines()[0].startswith("18 files, 0 bad, 2 unreadable, 18 checked")
    assert f"{on_open}\tunreadable this time, not cached: EIO (errno 5): Input/output error" in printed
    assert f"{on_read}\tunreadable this time, not cached: EIO (errno 5)" in printed
    healthy = _scan_cli(root, cache)  # the storage is back: those two are checked again, and are good
    assert len(healthy.splitlines()) == 1 and healthy.startswith("18 files, 0 bad, 0 unreadable, 2 checked")
    tally = tmp_path / "tally"
    tally.mkdir()
    fresh = tmp_path / "cache2"
    hiccup = _scan_cli(root, fresh, {"open": [on_open], "read": [on_read], "times": 1, "tally": str(tally)})
    assert hiccup.startswith("18 files, 0 bad, 0 unreadable, 18 checked")  # one failed try each, then read
    assert sorted(p.stat().st_size for p in tally.iterdir()) == [2, 2]


def test_a_run_skips_unreadable_files_for_this_run_only_and_lists_them_apart(tmp_path, capsys, monkeypatch):
    from pipelines.scan import drop_undecodable

    root = write_jpeg_tree(tmp_path / "data")
    write_bad_files(root / "train" / "class0")
    split = load_split(root / "train")
    gone = split.files[3]

    def storage_fails(path, full=False):
        if path == gone:
            raise OSError(5, "Input/output error", path)
        return real(path, full)

    real = check_file
    monkeypatch.setattr("pipelines.scan.check_file", storage_fails)
    checks = dict(cache_dir=tmp_path / "cache", workers=1, full=False, listing_dir=tmp_path / "out", report=True)
    kept = drop_undecodable(split, "train", strict=False, **checks)
    assert len(kept) == 17 and gone not in kept.files
    printed = capsys.readouterr().out
    assert "the storage failed to read 1 of 22 train files after 3 tries, first " + gone in printed
    assert "skipped in this run only" in printed and "left out 4 of 22 train files" in printed
    assert (tmp_path / "out" / "unreadable_files_train.txt").read_text().startswith(gone + "\tEIO (errno 5)")
    assert gone not in (tmp_path / "out" / "bad_files_train.txt").read_text()
    with pytest.raises(ValueError, match="the storage failed to read 1 train files"):
        drop_undecodable(split, "train", strict=True, **checks)
    monkeypatch.setattr("pipelines.scan.check_file", real)
    assert len(drop_undecodable(split, "train", strict=False, **checks)) == 18


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
        "import sys; from pipelines.folders import load_split; from pipelines.scan import scan; "
        f"r = scan(load_split({str(root / 'train')!r}), cache_dir={str(tmp_path / 'cache')!r}, workers=1); "
        "print(r.scanned, sorted(m for m in ('torch', 'nvidia.dali') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["18", "[]"]
    assert list((tmp_path / "cache").rglob("*"))  # the cache was written


def test_a_plain_script_without_a_main_guard_runs_the_check_in_worker_processes(tmp_path):
    """As with torch's DataLoader on Linux, a user's script needs no ``if __name__ == "__main__":``:
    the check's workers do not import the script again (which would run it again in each worker
    and break the pool). A second script run with ``-m`` likewise."""
    data = write_jpeg_tree(tmp_path / "data", classes=2, train_per_class=40)
    body = (
        "from pathlib import Path\n"
        "from pipelines.sources import usable\n"
        f"source = usable({str(data / 'train')!r}, 'train', workers=2, listing_dir=Path({str(tmp_path)!r}),\n"
        f"                cache_dir=Path({str(tmp_path / 'cache')!r}))\n"
        "print('checked', len(source), flush=True)\n"
    )
    (tmp_path / "plain.py").write_text(body)
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "job.py").write_text(body.replace("'cache'", "'cache2'"))
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)])}
    for command in (["plain.py"], ["-m", "pkg.job"]):
        done = subprocess.run([sys.executable, *command], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=300)  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.count("checked 80") == 1  # run once: no worker ran the script again
