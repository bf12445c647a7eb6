"""``pipelines.prepare``: data prepared for speed keeps its classes and indices, has the sizes it
promises, leaves bad files out, and a stopped run continues without ever passing for a finished one."""

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("nvidia.dali", exc_type=ImportError)  # `pytest -m gpu` collects without DALI

import numpy as np
from PIL import Image

from dali_cutmix.errors import DataError, UserError
from pipelines import prepare as prep
from pipelines.folders import PREPARING, load_imagenet
from pipelines.loaders import train_loader, val_loader

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = prep.Settings(max_side=64, val_size=32, quality=90)  # validation: shorter side up to ceil(32/0.875) = 37


def photo(h: int, w: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, w)[None, :, None] * np.ones((h, 1, 3))
    return Image.fromarray(np.clip(base + rng.integers(0, 30, (h, w, 3)), 0, 255).astype(np.uint8))


def source_tree(root: Path, classes=("cat", "dog", "eel")) -> Path:
    """Images large and small, one EXIF-rotated, a PNG named .JPEG and a truncated file."""
    sizes = [(120, 90), (40, 50), (300, 200), (64, 64)]
    for split, per_class in (("train", 4), ("val", 2)):
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                h, w = sizes[(c + i) % len(sizes)]
                photo(h, w, 10 * c + i).save(folder / f"{name}_{i}.JPEG", quality=92)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 200 wide x 100 high, shown 100 wide x 200 high
    photo(100, 200, 99).save(root / "train" / "dog" / "rotated.JPEG", exif=exif.tobytes())
    photo(150, 100, 98).save(root / "train" / "eel" / "png.JPEG", format="PNG")
    good = (root / "train" / "cat" / "cat_0.JPEG").read_bytes()
    (root / "train" / "cat" / "broken.JPEG").write_bytes(good[: len(good) // 2])
    return root


@pytest.fixture
def source(tmp_path, monkeypatch):
    monkeypatch.setattr("pipelines.sources.CACHE", tmp_path / "cache")
    return source_tree(tmp_path / "src")


def test_prepared_data_keeps_classes_and_indices_and_has_the_promised_sizes(source, tmp_path):
    out = tmp_path / "out"
    done = prep.prepare(source, out, SETTINGS, workers=2, show=False)
    assert done["files"] == 20 and done["skipped"] == 0 and done["resized"] + done["copied"] == 20
    assert not (out / PREPARING).exists() and (out / prep.PREPARED).is_file()
    src_train, src_val = load_imagenet(source)
    train, val = load_imagenet(out)
    assert train.classes == src_train.classes == ["cat", "dog", "eel"]
    for before, after in ((src_train, train), (src_val, val)):
        labels = {Path(f).name: label for f, label in zip(before.files, before.labels) if "broken" not in f}
        assert {Path(f).name: label for f, label in zip(after.files, after.labels)} == labels
    for f in train.files:
        with Image.open(f) as im:
            assert max(im.size) <= 64, f
    for f in val.files:
        with Image.open(f) as im:
            assert min(im.size) <= math.ceil(32 / 0.875), f
    small = source / "train" / "dog" / "dog_0.JPEG"  # 40x50: copied byte for byte
    assert (out / "train" / "dog" / "dog_0.JPEG").read_bytes() == small.read_bytes()
    with Image.open(out / "train" / "dog" / "rotated.JPEG") as im:
        assert im.size == (32, 64)  # upright (as DALI shows the source), longer side 64
    with Image.open(out / "train" / "eel" / "png.JPEG") as im:
        assert im.format == "JPEG" and im.size == (43, 64)
    assert "broken.JPEG" in (out / "bad_files_train.txt").read_text()
    images, *_ = next(iter(train_loader(out / "train", batch_size=4, image_size=32, num_threads=1,
                                        shard_id=0, num_shards=1)))  # fmt: skip
    assert images.shape == (4, 3, 32, 32)
    (images, _), *_ = list(val_loader(out / "val", batch_size=6, image_size=32, num_threads=1, shard_id=0,
                                      num_shards=1, classes=train.classes))  # fmt: skip
    assert images.shape == (6, 3, 32, 32)


def test_a_stopped_prepare_is_refused_as_data_and_continues_where_it_stopped(source, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real, calls = prep.prepare_image, []

    def stops_after_five(*args, **kwargs):
        if len(calls) == 5:
            raise KeyboardInterrupt
        calls.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(prep, "prepare_image", stops_after_five)
    with pytest.raises(KeyboardInterrupt):
        prep.prepare(source, out, SETTINGS, workers=1, show=False)
    assert (out / PREPARING).exists() and not (out / prep.PREPARED).exists()
    with pytest.raises(DataError, match="preparation stopped half-way: run the same"):
        load_imagenet(out)
    stopped = "a stopped prepare of .* with --max-side 64 --quality 90 --val-size 32: continue"
    with pytest.raises(UserError, match=stopped):
        prep.prepare(source, out, prep.Settings(max_side=96, val_size=32, quality=90), workers=1, show=False)
    monkeypatch.setattr(prep, "prepare_image", real)
    done = prep.prepare(source, out, SETTINGS, workers=1, show=False)
    assert done["skipped"] == 5 and done["files"] == 20 and not (out / PREPARING).exists()
    assert not list(out.rglob("*.tmp"))
    again = prep.prepare(source, out, SETTINGS, workers=1, show=False)  # nothing to do
    assert again["changes"] == {"added": 0, "removed": 0, "new_classes": [], "gone_classes": [], "left_out": 0}
    assert again["skipped"] == again["files"] == done["files"]
    assert len(load_imagenet(out)[0]) == 14


def test_numeric_classes_from_file_lists_keep_their_indices(tmp_path, monkeypatch):
    monkeypatch.setattr("pipelines.sources.CACHE", tmp_path / "cache")
    src = tmp_path / "src"
    for split, n in (("train", 12), ("val", 12)):
        (src / "img" / split).mkdir(parents=True)
        lines = []
        for i in range(n):
            photo(30, 100, i).save(src / "img" / split / f"{i}.jpg")
            lines.append(f"img/{split}/{i}.jpg {i}\n")  # 12 classes: "10" sorts before "2"
        (src / f"{split}.txt").write_text("".join(lines))
    out = tmp_path / "out"
    prep.prepare(src, out, SETTINGS, workers=1, show=False)
    assert (out / "train.txt").is_file() and not (out / "train").exists()
    train, val = load_imagenet(out)
    assert [Path(f).name for f in train.files] == [f"{i}.jpg" for i in range(12)] and train.labels == list(range(12))
    assert val.labels == list(range(12))


@pytest.mark.parametrize("flags, message", [
    (["--max-side", "8"], r"--max-side must be in \[16, 4096\], got 8"),
    (["--max-side", "64", "--quality", "0"], r"--quality must be in \[1, 95\], got 0"),
    (["--max-side", "64", "--workers", "0"], r"--workers must be in \[1, inf\], got 0"),
], ids=["side", "quality", "workers"])  # fmt: skip
def test_bad_arguments_are_one_line(tmp_path, flags, message):
    (tmp_path / "src").mkdir()
    done = subprocess.run([sys.executable, "-m", "pipelines.prepare", str(tmp_path / "src"), str(tmp_path / "out"),
                           *flags], cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert re.search(message, done.stderr.strip().splitlines()[-1])


def test_an_output_holding_other_files_is_refused(source, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="holds other files: give a new or empty folder"):
        prep.prepare(source, tmp_path / "busy", SETTINGS, workers=1, show=False)


def test_the_command_prepares_and_reports_its_speed(source, tmp_path):
    env = {**os.environ, "DALI_CUTMIX_CACHE": str(tmp_path / "c")}
    done = subprocess.run([sys.executable, "-m", "pipelines.prepare", str(source), str(tmp_path / "out"),
                           "--max-side", "64", "--val-size", "32", "--workers", "2"], cwd=ROOT, capture_output=True,
                          text=True, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "prepared 20 files into" in done.stdout and "files/s" in done.stdout and "1,281,167" in done.stdout


def test_files_of_one_name_each_keep_their_own_output(tmp_path, monkeypatch):
    monkeypatch.setattr("pipelines.sources.CACHE", tmp_path / "cache")
    src = tmp_path / "src"
    for split in ("train", "val"):
        (src / split / "a" / "sub").mkdir(parents=True)
        photo(30, 40, 1).save(src / split / "a" / "x.JPEG")
        photo(30, 40, 2).save(src / split / "a" / "x-2.JPEG")
        photo(30, 40, 3).save(src / split / "a" / "sub" / "x.JPEG")
    out = tmp_path / "out"
    assert prep.prepare(src, out, SETTINGS, workers=1, show=False)["files"] == 6
    train, _ = load_imagenet(out)
    assert sorted(Path(f).name for f in train.files) == ["x-2.JPEG", "x-3.JPEG", "x.JPEG"]
    sources = sorted((src / "train").rglob("*.JPEG"))
    assert sorted(Path(f).read_bytes() for f in train.files) == sorted(f.read_bytes() for f in sources)


def test_a_class_left_without_images_is_refused_rather_than_shifting_the_indices(tmp_path, monkeypatch):
    monkeypatch.setattr("pipelines.sources.CACHE", tmp_path / "cache")
    src = source_tree(tmp_path / "src")
    for f in (src / "train" / "dog").iterdir():
        f.write_bytes(b"")  # every dog is unusable: the copy would have classes cat, eel
    with pytest.raises(UserError, match="the classes 'dog' have no usable training image"):
        prep.prepare(src, tmp_path / "out", SETTINGS, workers=1, show=False)
    # A start that fails leaves nothing behind but the listing it said the bad files are in.
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["bad_files_train.txt"]


def test_another_source_or_an_output_inside_the_source_is_refused(source, tmp_path):
    out = tmp_path / "out"
    prep.prepare(source, out, SETTINGS, workers=1, show=False)
    other = source_tree(tmp_path / "other")
    with pytest.raises(UserError, match=f"already prepared from {source} with --max-side 64"):
        prep.prepare(other, out, SETTINGS, workers=1, show=False)
    with pytest.raises(UserError, match="is inside .*: prepare into a folder outside the data"):
        prep.prepare(source, source / "train" / "prepared", SETTINGS, workers=1, show=False)
    assert not (source / "train" / "prepared").exists()


def test_a_half_prepared_file_list_root_is_refused_through_its_image_folders(tmp_path, monkeypatch):
    monkeypatch.setattr("pipelines.sources.CACHE", tmp_path / "cache")
    out = tmp_path / "out"
    (out / "images" / "train" / "0").mkdir(parents=True)
    photo(20, 20, 0).save(out / "images" / "train" / "0" / "a.jpg")
    (out / PREPARING).write_text("{}")
    with pytest.raises(DataError, match="preparation stopped half-way"):
        train_loader(out / "images" / "train", batch_size=1, image_size=16, num_threads=1, shard_id=0, num_shards=1)


# ---------------------------------------------------------------- a hostile user, round 2


def _dali_mean(path: Path) -> float:
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def decode():
        data, _ = fn.readers.file(files=[str(path)])
        return fn.decoders.image(data, output_type=types.RGB)

    p = decode()
    p.build()
    return float(np.asarray(p.run()[0].as_array()).mean())


def test_a_16_bit_png_keeps_its_brightness(tmp_path, monkeypatch):
    monkeypatch.setattr("pipelines.sources.CACHE", tmp_path / "cache")
    src = source_tree(tmp_path / "src")
    grey = (np.linspace(0, 65535, 200)[None, :] * np.ones((120, 1))).astype(np.uint16)  # a 16-bit ramp
    Image.fromarray(grey).save(src / "train" / "eel" / "deep.png")  # Pillow: mode I;16
    out = tmp_path / "out"
    prep.prepare(src, out, SETTINGS, workers=1, show=False)
    made = out / "train" / "eel" / "deep.png"
    assert made.is_file()
    assert abs(_dali_mean(made) - _dali_mean(src / "train" / "eel" / "deep.png")) < 3  # not whitened to 254


def test_an_output_that_resolves_into_the_source_is_refused(source, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(source)
    with pytest.raises(UserError, match=r"is inside .* \(as the links resolve\)"):
        prep.prepare(source, link / "prepared", SETTINGS, workers=1, show=False)
    assert not (source / "prepared").exists()
    with pytest.raises(UserError, match=r"src is inside .* \(as the links resolve\)"):
        prep.prepare(source, tmp_path, SETTINGS, workers=1, show=False)


def test_a_prepare_locks_its_output(source, tmp_path):
    from dali_cutmix.files import FolderLock

    out = tmp_path / "out"
    held = FolderLock(out / prep.LOCK)
    try:
        with pytest.raises(UserError, match=r"is being prepared by another process \(pid \d+"):
            prep.prepare(source, out, SETTINGS, workers=1, show=False)
    finally:
        held.release()
    assert prep.prepare(source, out, SETTINGS, workers=1, show=False)["files"] == 20


def test_a_finished_copy_is_brought_up_to_date_with_its_source(source, tmp_path, monkeypatch):
    """Files added, a new class, a copy deleted by hand, a file unreadable the first time: the next
    run says what changed and mends the copy."""
    out = tmp_path / "out"
    real = prep.prepare_image
    flaky = str(source / "train" / "dog" / "dog_1.JPEG")

    def unreadable_once(src, *args, **kwargs):
        if src == flaky:
            raise PermissionError(13, "Permission denied", src)
        return real(src, *args, **kwargs)

    monkeypatch.setattr(prep, "prepare_image", unreadable_once)
    first = prep.prepare(source, out, SETTINGS, workers=1, show=False)
    assert first["unreadable"] == 1 and "dog_1.JPEG" in (out / "unreadable_files_train.txt").read_text()
    monkeypatch.setattr(prep, "prepare_image", real)
    photo(80, 80, 5).save(source / "train" / "cat" / "new.JPEG")
    (source / "train" / "fox").mkdir()
    photo(80, 80, 6).save(source / "train" / "fox" / "fox_0.JPEG")
    (source / "val" / "fox").mkdir()
    photo(80, 80, 7).save(source / "val" / "fox" / "fox_1.JPEG")
    (out / "train" / "eel" / "eel_0.JPEG").unlink()
    (source / "train" / "dog" / "dog_0.JPEG").unlink()
    again = prep.prepare(source, out, SETTINGS, workers=1, show=False)
    changes = again["changes"]
    assert changes["added"] == 5 and changes["removed"] == 1 and changes["new_classes"] == ["fox"], changes
    for made in ("cat/new.JPEG", "fox/fox_0.JPEG", "eel/eel_0.JPEG", "dog/dog_1.JPEG"):
        assert (out / "train" / made).is_file(), made
    assert not (out / "train" / "dog" / "dog_0.JPEG").exists() and not (out / "unreadable_files_train.txt").exists()
    assert load_imagenet(out)[0].classes == ["cat", "dog", "eel", "fox"]


def test_a_file_the_decoder_fails_on_is_left_out_not_a_failure_of_the_run(source, tmp_path):
    """A PNG cut mid-stream with its end kept passes the quick check; prepare names it in its
    listing and finishes, and so does every run after."""
    from PIL import Image as PILImage

    cut = source / "train" / "eel" / "cut.png"
    photo(90, 120, 3).save(cut, format="PNG")
    data = cut.read_bytes()
    cut.write_bytes(data[: len(data) // 2] + data[-12:])  # the IEND chunk kept
    assert PILImage.open(cut).format == "PNG"
    out = tmp_path / "out"
    for _ in range(2):
        done = prep.prepare(source, out, SETTINGS, workers=1, show=False)
        assert done["bad"] == 1 or done.get("changes") is not None
        assert str(cut) in (out / "bad_files_train.txt").read_text()


@pytest.mark.parametrize("name", [prep.PREPARED, ".preparing"])
def test_a_damaged_record_is_one_line_naming_it(source, tmp_path, name):
    out = tmp_path / "out"
    prep.prepare(source, out, SETTINGS, workers=1, show=False)
    (out / name).write_text("{not json")
    if name == ".preparing":
        (out / prep.PREPARED).unlink()
    with pytest.raises(UserError, match=rf"{out / name} is damaged .*: remove {out} and prepare again"):
        prep.prepare(source, out, SETTINGS, workers=1, show=False)


def test_the_bomb_limit_is_the_decoders_not_pillows(tmp_path, monkeypatch):
    """Pillow refuses images above twice its MAX_IMAGE_PIXELS (about 179 megapixels by default);
    DALI decodes them. The check and prepare use the decoders' limit, whatever Pillow's is."""
    from PIL import Image as PILImage

    from pipelines.scan import DECODER_MAX_SIDE, check_file

    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 1000)  # a 64 x 64 image is a "bomb" to Pillow now
    photo(64, 64, 1).save(tmp_path / "big.JPEG")
    assert check_file(str(tmp_path / "big.JPEG"), full=True) == ""
    out = tmp_path / "small.JPEG"
    assert prep.prepare_image(str(tmp_path / "big.JPEG"), str(out), 90, {"longer": 32}) == "resized"
    assert PILImage.MAX_IMAGE_PIXELS == 1000 and DECODER_MAX_SIDE == 65500  # restored after; JPEG's limit
