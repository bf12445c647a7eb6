"""``pipelines/imagenet.py`` through its loaders (``pipelines/loaders.py``) on a generated JPEG tree."""

from collections import Counter

import pytest
import torch

from dali_cutmix.data import load_split
from dali_cutmix.loader import mix_schedule
from dali_cutmix.mix import MixConfig
from pipelines import train_pipeline
from pipelines.imagenet import MEAN, STD
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
    schedule = mix_schedule(1.0, off_epochs=[1], mix_off_epoch=3)
    loader = train_loader(
        jpeg_tree / "train",
        batch_size=batch_size,
        last_batch=last_batch,
        image_size=32,
        num_threads=1,
        recipe=MixConfig(mode="elem"),
        prob_schedule=schedule,
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
        ({"image_size": 4}, "image_size must be an int >= 8, got 4"),
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


@pytest.mark.parametrize("backend", ["python", "native"])
def test_loader_state_resumes_the_exact_stream(jpeg_tree, backend):
    def make(state=None):
        return train_loader(jpeg_tree / "train", batch_size=4, image_size=16, num_threads=1, backend=backend,
                            recipe=MixConfig(mixup_alpha=0.3, mode="elem"),
                            prob_schedule=mix_schedule(1.0, off_epochs=[1]), state=state)  # fmt: skip

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
