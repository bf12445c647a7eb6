"""``pipelines/graphs.py`` through its loaders (``pipelines/loaders.py``) on a generated JPEG tree."""

import numpy as np
import pytest

pytest.importorskip("nvidia.dali", exc_type=ImportError)  # `pytest -m gpu` collects without DALI

from collections import Counter

import torch
from nvidia.dali import fn, pipeline_def, types

from dali_cutmix.ops import cutmix
from dali_cutmix.recipe import MixConfig
from pipelines import train_pipeline
from pipelines.folders import Split, load_split
from pipelines.graphs import MEAN, STD
from pipelines.loaders import train_loader, val_loader

LOW = min((0 - m) / s for m, s in zip(MEAN, STD))
HIGH = max((255 - m) / s for m, s in zip(MEAN, STD))


@pytest.mark.parametrize("backend", ["python", "native"])
def test_train_loader_outputs(jpeg_tree, backend):
    loader = train_loader(jpeg_tree / "train", batch_size=8, image_size=32, num_threads=1, backend=backend)
    assert len(loader) == 3  # 18 images, batch 8, last batch partial
    seen = 0
    for images, labels_a, labels_b, lam in loader:
        seen += len(images)
        assert images.shape[1:] == (3, 32, 32) and images.dtype == torch.float32
        assert LOW - 1e-3 <= images.min() and images.max() <= HIGH + 1e-3
        assert labels_a.dtype == torch.int64 and labels_a.shape == (len(images),)
        assert set(labels_a.tolist()) <= {0, 1, 2} and set(labels_b.tolist()) <= {0, 1, 2}
        assert lam.dtype == torch.float32 and ((lam > 0) & (lam <= 1)).all()
        assert len(set(lam.tolist())) == 1  # batch mode: one lambda per batch
    assert seen == 18


def test_cutmix_disabled_gives_lam_one(jpeg_tree):
    loader = train_loader(jpeg_tree / "train", batch_size=6, image_size=32, num_threads=1, recipe=None)
    for _, labels_a, labels_b, lam in loader:
        assert (lam == 1).all() and torch.equal(labels_a, labels_b)


@pytest.mark.parametrize("batch_size, last_batch", [(6, "partial"), (4, "partial"), (4, "drop")])
def test_schedule_switches_cutmix_off_for_chosen_epochs(jpeg_tree, batch_size, last_batch):
    # 18 images: 3 full batches of 6; 4 of 4 plus a short one, kept ("partial") or dropped ("drop")
    loader = train_loader(
        jpeg_tree / "train",
        batch_size=batch_size,
        last_batch=last_batch,
        image_size=32,
        num_threads=1,
        recipe=MixConfig(mode="elem", prob_schedule={1: 0.0, 2: 1.0}, off_epoch=3),
    )
    mixed = []
    for _ in range(4):
        mixed.append(any((lam < 1).any().item() for *_, lam in loader))
    assert mixed == [True, False, True, False]


def test_val_is_deterministic_and_covers_every_image_once(jpeg_tree):
    def run():
        loader = val_loader(jpeg_tree / "val", batch_size=4, image_size=32, num_threads=1)
        return [(x.clone(), y.clone()) for x, y in loader]

    a, b = run(), run()
    assert sum(len(y) for _, y in a) == 9
    assert Counter(torch.cat([y for _, y in a]).tolist()) == {0: 3, 1: 3, 2: 3}
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert xa.shape[1:] == (3, 32, 32)


def test_val_shards_are_disjoint_and_cover_the_set(jpeg_tree):
    labels, shapes = [], []
    for shard in range(2):
        loader = val_loader(jpeg_tree / "val", batch_size=4, image_size=32, num_threads=1, shard_id=shard, num_shards=2)
        for x, y in loader:
            labels += y.tolist()
            shapes += [tuple(t.flatten()[:8].tolist()) for t in x]
    assert len(labels) == 9 and Counter(labels) == {0: 3, 1: 3, 2: 3}
    assert len(set(shapes)) == 9  # nine distinct images, none read twice


def test_file_list_is_accepted(jpeg_tree):
    lines = [f"class{c}/img{i}.JPEG {c}" for c in range(3) for i in range(6)]
    (jpeg_tree / "train" / "list.txt").write_text("\n".join(lines) + "\n")
    split = load_split(jpeg_tree / "train" / "list.txt")
    assert len(split) == 18 and split.labels[-1] == 2
    loader = train_loader(split, batch_size=6, image_size=32, num_threads=1)
    assert sum(len(b[0]) for b in loader) == 18


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"batch_size": 0}, "batch_size must be an int >= 1, got 0"),
        ({"image_size": 8}, r"image_size must be an int in \[16, 4096\], got 8"),
        ({"device": "tpu"}, "device must be one of .*, got 'tpu'"),
        ({"backend": "cupy"}, "backend must be one of .*, got 'cupy'"),
        ({"random_area": (0.5, 0.2)}, r"random_area must be \(min, max\) with 0 < min <= max <= 1, got \(0.5, 0.2\)"),
        ({"shard_id": 2, "num_shards": 2}, r"shard_id must be in \[0, num_shards=2\), got 2"),
    ],
    ids=["batch", "size", "device", "backend", "area", "shard"],
)
def test_pipeline_argument_errors(jpeg_tree, kwargs, match):
    with pytest.raises(ValueError, match=match):
        train_pipeline(jpeg_tree / "train", **{"batch_size": 4, **kwargs})


@pytest.mark.gpu
@pytest.mark.parametrize("backend", [None, "python"], ids=["default", "python"])
def test_gpu_train_loader_decodes_on_the_gpu(jpeg_tree, backend):
    loader = train_loader(
        jpeg_tree / "train",
        batch_size=8,
        image_size=32,
        num_threads=1,
        device="gpu",
        backend=backend,
        recipe=MixConfig(mode="elem"),
        fp16=True,
    )
    seen = 0
    for images, labels_a, _labels_b, lam in loader:
        seen += len(images)
        assert images.is_cuda and images.dtype == torch.float16 and images.shape[1:] == (3, 32, 32)
        assert labels_a.is_cuda and lam.is_cuda and ((lam > 0) & (lam <= 1)).all()
    assert seen == 18
    val = val_loader(jpeg_tree / "val", batch_size=4, image_size=32, num_threads=1, device="gpu")
    assert sum(len(y) for _, y in val) == 9


@pytest.mark.gpu
@pytest.mark.parametrize("mixup", [0.0, 0.4], ids=["cutmix", "mixup-switch"])
def test_gpu_pipeline_outputs_and_a_cpu_pipeline_feeding_the_gpu_give_the_same_batches(jpeg_tree, mixup):
    """The GPU pipeline hands torch only GPU tensors (MixUp's lam too, which a CPU output would
    give as pinned memory torch.from_dlpack refuses); a CPU pipeline feeding the GPU ships uint8
    through torch's pinned memory and normalises on the device, as the float CPU pipeline does."""
    common = dict(batch_size=6, image_size=32, num_threads=1, seed=3, recipe=MixConfig(mixup_alpha=mixup))
    on_gpu = next(iter(train_loader(jpeg_tree / "train", device="gpu", backend="python", **common)))
    assert all(t.is_cuda for t in on_gpu)
    fed = [tuple(t.clone() for t in b) for b in train_loader(jpeg_tree / "train", torch_device="cuda", **common)]
    ref = [tuple(t.clone() for t in b) for b in train_loader(jpeg_tree / "train", **common)]
    for got, want in zip(fed, ref):
        assert got[0].is_cuda and got[0].is_contiguous(memory_format=torch.channels_last)
        assert torch.allclose(got[0].cpu(), want[0], atol=1e-5)
        assert all(torch.equal(a.cpu(), b) for a, b in zip(got[1:], want[1:]))


@pytest.mark.parametrize("backend, kind", [
    ("python", {}), ("native", {}), ("python", {"paste": "resize"}), ("python", {"centre": "saliency"}),
    ("native", {"paste": "resize"}), ("native", {"centre": "saliency"}),
], ids=["python", "native", "resize", "saliency", "native-resize", "native-saliency"])  # fmt: skip
def test_loader_state_resumes_the_exact_stream(jpeg_tree, backend, kind):
    def make(state=None):
        recipe = MixConfig(mixup_alpha=0.3, mode="elem", prob_schedule={1: 0.0, 2: 1.0}, **kind)
        return train_loader(jpeg_tree / "train", batch_size=4, image_size=16, num_threads=1, backend=backend,
                            recipe=recipe, state=state)  # fmt: skip

    loader = make()
    batches = iter(loader)
    for _ in range(2):
        next(batches)
    state = loader.state()
    rest = [tuple(t.clone() for t in batch) for batch in batches] + [tuple(t.clone() for t in b) for b in loader]
    resumed = make(state)
    again = [tuple(t.clone() for t in batch) for batch in resumed] + [tuple(t.clone() for t in b) for b in resumed]
    assert len(rest) == len(again) == 3 + 5
    for ours, theirs in zip(rest, again):
        for a, b in zip(ours, theirs):
            assert torch.equal(a, b)
    assert all((b[3] == 1).all() for b in again[3:])  # the schedule's epoch 1 is still off after the resume


def test_a_later_start_without_state_does_not_replay_epoch_0(jpeg_tree):
    """A loader started at epoch 3 with no saved state (a resume without one) draws other files,
    crops and mixes than epoch 0 did; the same start epoch draws the same."""

    def first_batch(start_epoch):
        loader = train_loader(jpeg_tree / "train", batch_size=6, image_size=32, num_threads=1, start_epoch=start_epoch)
        return next(iter(loader))[0].clone()

    assert torch.equal(first_batch(3), first_batch(3))
    assert not torch.equal(first_batch(0), first_batch(3))


@pytest.mark.parametrize("backend", ["native", "python", "ops"])
def test_uint8_output_normalised_on_the_trainers_device_equals_the_float_pipeline(jpeg_tree, backend):
    """What a CPU pipeline feeding a GPU does (uint8 out, normalised by the loader on the device),
    here with the CPU as the device: the same images, labels and lam as the float pipeline."""
    runs = {}
    for uint8 in (False, True):
        loader = train_loader(jpeg_tree / "train", batch_size=6, image_size=32, num_threads=1, seed=3,
                              backend=backend, recipe=MixConfig(mixup_alpha=0.4, mode="elem"), uint8=uint8)  # fmt: skip
        assert (loader.normalize is not None) == uint8
        runs[uint8] = [tuple(t.clone() for t in batch) for batch in loader]
    for floats, bytes_ in zip(*runs.values()):
        assert bytes_[0].is_contiguous(memory_format=torch.channels_last)
        assert torch.allclose(floats[0], bytes_[0], atol=1e-5)
        assert all(torch.equal(a, b) for a, b in zip(floats[1:], bytes_[1:]))
    val = {u: [b[0] for b in val_loader(jpeg_tree / "val", batch_size=9, image_size=32, uint8=u)] for u in runs}
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(*val.values()))
    pipe = train_pipeline(jpeg_tree / "train", batch_size=6, image_size=32, num_threads=1, backend=backend, uint8=True)
    pipe.build()
    images = pipe.run()[0]
    assert images.dtype == types.UINT8 and images.layout() == "HWC" and images.as_tensor().shape() == [6, 32, 32, 3]


def test_decoder_hints_follow_the_largest_image_within_dalis_defaults_and_imagenets(tmp_path):
    from PIL import Image

    from pipelines.graphs import DALI_PADDINGS, IMAGENET_LARGEST, IMAGENET_PADDINGS, decoder_hints

    def split_of(*sizes):
        files = []
        for i, (w, h) in enumerate(sizes):
            Image.new("RGB", (w, h)).save(tmp_path / f"{i}.jpg")
            files.append(str(tmp_path / f"{i}.jpg"))
        return Split(files, [0] * len(files), ["a"])

    paddings = ("device_memory_padding", "host_memory_padding")
    small = decoder_hints(split_of((28, 28), (64, 48)))  # the demo's size: DALI's default paddings
    assert {k: small[k] for k in paddings} == DALI_PADDINGS
    assert (small["preallocate_width_hint"], small["preallocate_height_hint"]) == IMAGENET_LARGEST  # the floor
    big = decoder_hints(split_of((64, 48), (3000, 2000)))  # 18 MB decoded, +25%: 22 MiB
    assert {k: big[k] for k in paddings} == {"device_memory_padding": 22 << 20, "host_memory_padding": 22 << 20}
    assert all(DALI_PADDINGS[k] <= big[k] <= IMAGENET_PADDINGS[k] for k in paddings)
    huge = decoder_hints(split_of((7000, 300), (200, 7200)))  # wider and taller than ImageNet's largest
    assert (huge["preallocate_width_hint"], huge["preallocate_height_hint"]) == (7000, 7200)


@pytest.mark.parametrize(
    "backend, message",
    [
        ("python", r"cutmix\(size=\(24, 24\)\) got sample 0 of shape \(32, 32, 3\)"),
        ("native", r"cutmix\(size=\(24, 24\)\) got images of 32x32"),
        ("ops", r"cutmix\(size=\(24, 24\)\) got images of 32x32"),
    ],
)
def test_a_size_that_the_images_do_not_have_is_an_error_naming_it(jpeg_tree, backend, message):
    """Every backend checks the size hint against the batch (none mixes with a wrong one)."""
    split = load_split(jpeg_tree / "train")

    @pipeline_def(batch_size=4, num_threads=1, device_id=None)
    def sized():
        jpegs, labels = fn.readers.file(files=split.files, labels=split.labels)
        images = fn.resize(fn.decoders.image(jpegs), resize_x=32, resize_y=32)
        return cutmix(images, labels, backend=backend, size=(24, 24))[0]

    pipe = sized()
    pipe.build()
    with pytest.raises(Exception, match=message):
        pipe.run()


def test_images_of_a_type_no_backend_mixes_are_refused_by_every_backend():
    """uint16 images: the python backend refuses them as the native and ops backends do."""
    from dali_helpers import mix_arrays

    batch = [np.zeros((8, 8, 3), np.uint16)] * 2
    refusals = (("python", "cutmix mixes uint8 or floating-point images, got torch.uint16"),
                ("native", "takes uint8 or float32 images"), ("ops", "Unsupported input type: uint16"))  # fmt: skip
    for backend, message in refusals:
        with pytest.raises(Exception, match=message):
            list(mix_arrays([batch], backend=backend))
    with pytest.raises(ValueError, match=r"size must be \(H, W\), got 32"):
        cutmix(None, None, size=32)


@pytest.mark.parametrize("recipe", [MixConfig(mixup_alpha=0.4, mode="elem"), None], ids=["mixup-elem", "no-mix"])
def test_the_batch_with_its_parameters_is_the_batch_the_loader_gives(jpeg_tree, recipe):
    """What the picture draws (train_loader(return_params=True)) is the loader's own first batch."""
    common = dict(batch_size=6, image_size=32, num_threads=1, seed=4, recipe=recipe)
    plain = next(iter(train_loader(jpeg_tree / "train", **common)))
    loader = train_loader(jpeg_tree / "train", return_params=True, **common)
    drawn = next(iter(loader))
    assert loader.output_map[4:] == (["perm", "boxes", "blend", "mirror"] if recipe else ["mirror"])
    assert all(torch.equal(a, b) for a, b in zip(plain, drawn[:4]))


def test_the_preview_command_draws_the_first_batch(jpeg_tree, tmp_path):
    import subprocess
    import sys

    from PIL import Image

    from dali_cutmix.batch_grid import grid_size

    command = [sys.executable, "-m", "pipelines.preview", "--data", str(jpeg_tree), "--output", str(tmp_path / "b.png"),
               "--batch-size", "6", "--image-size", "32", "--mixup", "0.4", "--cutmix-mode", "elem"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert Image.open(tmp_path / "b.png").size == grid_size(6, 32, 32)
    bad = subprocess.run([*command, "--cutmix-prob", "2"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].endswith(
        "--cutmix-prob must be a number in [0, 1], got 2.0"
    )
