"""``dali_cutmix/data.py``: ImageNet as it is downloaded (flat val folder labelled by a CSV), folder and
list errors, the demo export."""

import pytest

pytest.importorskip("nvidia.dali", exc_type=ImportError)  # `pytest -m gpu` collects without DALI

import gzip
import shutil

import numpy as np
import torchvision
from conftest import train_args
from PIL import Image

import train
from dali_cutmix.errors import DataError
from pipelines.folders import FASHION_MNIST_DIR, export_fashion_mnist, load_imagenet, load_split, read_idx

WNIDS = ["n01440764", "n01443537", "n01484850"]  # sorted, as LOC_synset_mapping.txt lists them


def jpeg(path, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (40, 52, 3), dtype=np.uint8)).save(path, quality=90)


def imagenet_download(root, per_class=4, val=6):
    """The ILSVRC 2012 CLS-LOC layout: class folders for train, a flat val folder, the two files."""
    images = root / "ILSVRC" / "Data" / "CLS-LOC"
    for k, wnid in enumerate(reversed(WNIDS)):  # created out of order: the order must come from names
        for i in range(per_class):
            jpeg(images / "train" / wnid / f"{wnid}_{i}.JPEG", seed=10 * k + i)
    rows, truth = ["ImageId,PredictionString"], {}
    for i in range(val):
        image_id = f"ILSVRC2012_val_{i + 1:08d}"
        wnid = WNIDS[(i * 2) % 3]
        jpeg(images / "val" / f"{image_id}.JPEG", seed=100 + i)
        rows.append(f"{image_id},{wnid} 10 12 30 35 {wnid} 1 2 3 4")
        truth[image_id] = WNIDS.index(wnid)
    (root / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    (root / "LOC_synset_mapping.txt").write_text("".join(f"{w} a class called {w}\n" for w in WNIDS))
    return root, truth


def test_imagenet_as_downloaded_is_read_with_imagefolders_class_indices(tmp_path):
    root, truth = imagenet_download(tmp_path / "imagenet")
    train_split, val_split = load_imagenet(root)
    folder = torchvision.datasets.ImageFolder(root / "ILSVRC" / "Data" / "CLS-LOC" / "train")
    assert train_split.classes == folder.classes == WNIDS
    assert sorted(zip(train_split.files, train_split.labels)) == sorted((p, i) for p, i in folder.samples)
    assert len(val_split) == 6 and val_split.classes == WNIDS
    for path, label in zip(val_split.files, val_split.labels):
        assert label == truth[path.rsplit("/", 1)[1].removesuffix(".JPEG")]


@pytest.mark.parametrize(
    "breakage, message",
    [
        ("unknown-class", r"LOC_val_solution.csv:2: class 'n99999999' of ILSVRC2012_val_00000001 is not among"),
        ("missing-image", r"LOC_val_solution.csv:2: .*ILSVRC2012_val_00000001.JPEG does not exist"),
        ("mapping", r"LOC_synset_mapping.txt lists 2 classes that are not the training folders \(3\)"),
    ],
)
def test_a_broken_download_is_a_one_line_error_naming_the_file(tmp_path, breakage, message):
    root, _ = imagenet_download(tmp_path / "imagenet")
    if breakage == "unknown-class":
        csv = root / "LOC_val_solution.csv"
        csv.write_text(csv.read_text().replace(f"00000001,{WNIDS[0]}", "00000001,n99999999", 1))
    elif breakage == "missing-image":
        (root / "ILSVRC" / "Data" / "CLS-LOC" / "val" / "ILSVRC2012_val_00000001.JPEG").unlink()
    else:
        (root / "LOC_synset_mapping.txt").write_text(f"{WNIDS[0]} a\n{WNIDS[1]} b\n")
    with pytest.raises(ValueError, match=message):
        load_imagenet(root)


def test_train_py_runs_on_imagenet_as_downloaded(tmp_path):
    root, _ = imagenet_download(tmp_path / "imagenet")
    out = tmp_path / "run"
    assert train.main(train_args(root, out, "--epochs", "1", batch_size=4)) == 0
    assert (out / "checkpoint_0001.pt").is_file()


def test_data_errors(tmp_path, jpeg_tree):
    with pytest.raises(ValueError, match="does not exist"):
        load_split(tmp_path / "missing")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(ValueError, match="holds no images"):
        load_split(tmp_path / "empty")
    shutil.rmtree(jpeg_tree / "val")
    with pytest.raises(ValueError, match="has no val/ folder"):
        load_imagenet(jpeg_tree)


def write_idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_demo_export_from_idx_files(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 40), ("t10k", 20)):
        images = rng.integers(0, 256, (n, 28, 28))
        write_idx(src / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(src / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    np.testing.assert_array_equal(read_idx(src / "train-labels-idx1-ubyte.gz"), np.arange(40) % 10)
    root = export_fashion_mnist(tmp_path / "out", per_class_train=3, per_class_val=1, source=src)
    train, val = load_imagenet(root)
    assert len(train) == 30 and len(val) == 10 and len(train.classes) == 10
    mtime = (root / ".complete").stat().st_mtime_ns
    export_fashion_mnist(tmp_path / "out", per_class_train=3, per_class_val=1, source=src)
    assert (root / ".complete").stat().st_mtime_ns == mtime  # cached: not exported again


def test_demo_export_without_the_package(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        export_fashion_mnist(tmp_path / "out", source=tmp_path / "nowhere")


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="needs Debian's dataset-fashion-mnist (scripts/setup.sh "
                    "installs it where apt runs)")  # fmt: skip
def test_demo_export_of_the_real_fashion_mnist(tmp_path):
    root = export_fashion_mnist(tmp_path / "fm", per_class_train=5, per_class_val=2)
    train, val = load_imagenet(root)
    assert len(train) == 50 and len(val) == 20
    assert train.classes[0] == "0-t-shirt" and train.classes[9] == "9-ankle-boot"
