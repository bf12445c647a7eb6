"""WebDataset shards: expansion, the check and index (bad members left out and listed), DALI's
reader over the index (every good sample once an epoch, per-rank shares, exact resume), train.py."""

import pytest

pytest.importorskip("nvidia.dali", exc_type=ImportError)  # `pytest -m gpu` collects without DALI

import io
import signal
import tarfile

import torch
import torchvision
from conftest import sigterm_after_step, train_args, write_jpeg_tree

import train
from dali_cutmix_bench.shards_vs_files import write_shards
from pipelines import shards as wds
from pipelines.folders import load_split
from pipelines.loaders import train_loader, val_loader


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def shard_set(tmp_path):
    """3 classes x 8 training images in 3 shards, 3 x 2 validation images in 1 shard."""
    tree = write_jpeg_tree(tmp_path / "tree", train_per_class=8, val_per_class=2)
    train_split = load_split(tree / "train")
    write_shards(train_split, tmp_path / "train" / "train-%06d.tar", per_shard=8)
    write_shards(load_split(tree / "val"), tmp_path / "val" / "val-%06d.tar", per_shard=6)
    return tmp_path, tree, train_split


def break_members(path) -> list[str]:
    """Append three bad samples to a shard: a truncated JPEG, one without a class, one with a
    class that is not a number. Returns their image member names."""
    good = open(next((path.parent.parent / "tree" / "train" / "class0").iterdir()), "rb").read()
    with tarfile.open(path, "a") as tar:
        add(tar, "bad_truncated.jpg", good[: len(good) // 2])
        add(tar, "bad_truncated.cls", b"0")
        add(tar, "bad_nolabel.jpg", good)
        add(tar, "bad_word.jpg", good)
        add(tar, "bad_word.cls", b"dog")
    return ["bad_truncated.jpg", "bad_nolabel.jpg", "bad_word.jpg"]


def test_specs_expand_to_the_shards_in_order(tmp_path):
    for i in range(3):
        (tmp_path / f"s-{i:03d}.tar").write_bytes(b"")
    names = [f"s-{i:03d}.tar" for i in range(3)]
    assert wds.expand(tmp_path) == [str(tmp_path / n) for n in names]
    assert wds.expand(f"{tmp_path}/s-{{000..002}}.tar") == [str(tmp_path / n) for n in names]
    assert wds.expand(f"{tmp_path}/s-{{002,000}}.tar") == [str(tmp_path / n) for n in (names[2], names[0])]
    assert wds.is_shards(tmp_path) and wds.is_shards("x-{0..3}.tar") and not wds.is_shards(tmp_path / "s-000")
    with pytest.raises(ValueError, match=r"1 of 4 files do not exist, first '.*s-003.tar'"):
        wds.expand(f"{tmp_path}/s-{{000..003}}.tar")
    with pytest.raises(ValueError, match=r"range \{3..1\} runs backwards"):
        wds.expand(f"{tmp_path}/s-{{3..1}}.tar")


def test_bad_members_are_left_out_listed_and_the_index_is_cached(shard_set, monkeypatch):
    root, _, train_split = shard_set
    bad_names = break_members(root / "train" / "train-000001.tar")
    cache = root / "cache"
    shards = wds.load_shards(root / "train", cache_dir=cache, workers=1)
    assert len(shards) == len(train_split) == 24 and shards.counts == [8, 8, 8]
    assert shards.classes == ["class0", "class1", "class2"]  # from classes.txt
    listed = {item.rpartition(":")[2]: reason for item, reason in shards.bad}
    assert sorted(listed) == sorted(bad_names)
    assert "truncated JPEG" in listed["bad_truncated.jpg"]
    assert "no .cls member" in listed["bad_nolabel.jpg"]
    assert "'dog' is not a non-negative integer" in listed["bad_word.jpg"]
    # The index is DALI's v1.2 format and lists only the good samples.
    lines = open(shards.index_paths[1]).read().splitlines()
    assert lines[0] == "v1.2 8" and not any("bad_" in line for line in lines)
    # A second load reads the cache: no tar is opened again.
    monkeypatch.setattr(wds, "_index", lambda *a: pytest.fail("indexed again"))
    again = wds.load_shards(root / "train", cache_dir=cache, workers=1)
    assert again == shards and again.fingerprint() == shards.fingerprint()


def test_labels_beyond_the_classes_are_left_out(shard_set):
    root, _, _ = shard_set
    with tarfile.open(root / "val" / "val-000000.tar", "a") as tar:
        add(tar, "far.jpg", open(next((root / "tree" / "val" / "class1").iterdir()), "rb").read())
        add(tar, "far.cls", b"7")
    val = wds.load_shards(root / "val", ["class0", "class1", "class2"], cache_dir=root / "cache", workers=1)
    assert len(val) == 6 and val.bad == [
        (f"{root / 'val' / 'val-000000.tar'}:far.jpg", "class 7 is beyond the 3 classes")
    ]


def labels_of(loader) -> list[int]:
    return [int(v) for batch in loader for v in batch[1]]


def test_every_good_sample_once_an_epoch_and_ranks_share_the_set(shard_set):
    root, tree, _ = shard_set
    break_members(root / "train" / "train-000001.tar")
    shards = wds.load_shards(f"{root}/train/train-{{000000..000002}}.tar", cache_dir=root / "cache", workers=1)
    folder = torchvision.datasets.ImageFolder(tree / "train")
    expected = sorted(label for _, label in folder.samples)  # ImageFolder's indices for the same images
    common = dict(batch_size=5, image_size=32, num_threads=1, recipe=None)
    loader = train_loader(shards, **common)
    for _ in range(2):
        assert sorted(labels_of(loader)) == expected
    parts = [labels_of(train_loader(shards, shard_id=r, num_shards=2, **common)) for r in range(2)]
    assert sorted(parts[0] + parts[1]) == expected and abs(len(parts[0]) - len(parts[1])) <= 1
    val = val_loader(root / "val", batch_size=4, image_size=32, num_threads=1, classes=shards.classes)
    assert shards.classes == folder.classes
    images, _ = next(iter(val))
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32
    assert sorted(labels_of(val)) == [0, 0, 1, 1, 2, 2]


def test_a_loader_state_resumes_shards_exactly(shard_set):
    root, _, _ = shard_set
    shards = wds.load_shards(root / "train", cache_dir=root / "cache", workers=1)
    common = dict(batch_size=4, image_size=32, num_threads=1, seed=3)
    first = train_loader(shards, **common)
    it = iter(first)
    for _ in range(2):
        next(it)
    state = first.state()
    rest = [tuple(t.clone() for t in batch) for batch in it]
    resumed = train_loader(shards, state=state, **common)
    again = [tuple(t.clone() for t in batch) for batch in resumed]
    assert len(again) == len(rest) == 4
    for a, b in zip(again, rest):
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_train_py_on_shards_leaves_bad_members_out_and_strict_stops(shard_set, capsys):
    root, _, _ = shard_set
    break_members(root / "train" / "train-000002.tar")
    out = root / "run"
    flags = train_args(f"{root}/train/train-{{000000..000002}}.tar", out, "--epochs", "1", batch_size=4)
    assert train.main([*flags, "--val-data", str(root / "val")]) == 0
    printed = capsys.readouterr().out
    assert "left out 3 of 27 train samples that are unusable" in printed
    listing = (out / "bad_files_train.txt").read_text().splitlines()
    assert len(listing) == 3 and all("train-000002.tar:bad_" in line for line in listing)
    metrics = (out / "metrics.jsonl").read_text()
    assert '"train_images": 24' in metrics
    assert train.main([*flags, "--val-data", str(root / "val"), "--strict", "--overwrite"]) == 2
    assert "--strict: 3 train samples are unusable, first" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.parse_args(flags)
    assert "give the validation data with --val-data" in capsys.readouterr().err


def test_train_py_resumes_on_shards_exactly(shard_set, monkeypatch):
    """2 epochs at once, and the same run stopped by SIGTERM in epoch 1 then resumed: the same
    weights (the checkpoint's loader state continues the shard reader's stream mid-epoch)."""
    root, _, _ = shard_set
    spec = f"{root}/train/train-{{000000..000002}}.tar"
    flags = [*train_args(spec, root / "whole", "--epochs", "2", batch_size=4), "--val-data", str(root / "val")]
    assert train.main(flags) == 0
    sigterm_after_step(monkeypatch, 8)  # epoch 1 (6 steps an epoch), step 2
    parts = [arg if arg != str(root / "whole") else str(root / "parts") for arg in flags]
    assert train.main(parts) == 128 + signal.SIGTERM
    assert (root / "parts" / "checkpoint_0001_step000002.pt").is_file()
    assert train.main([*parts, "--resume"]) == 0
    a, b = (torch.load(root / d / "checkpoint_0002.pt", weights_only=True)["model"] for d in ("whole", "parts"))
    for name, tensor in a.items():
        torch.testing.assert_close(b[name], tensor, rtol=1e-5, atol=1e-6, msg=name)
