"""Shared helpers: small DALI pipelines over in-memory batches, and the ``gpu`` marker."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dali_cutmix.recipe import MixConfig
from dali_cutmix.sampling import CutMixParams


def has_cuda() -> bool:
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if has_cuda():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


def backends() -> tuple[list[str], list[tuple[str, str]]]:
    """The backends, and every (backend, layout) the library accepts on the CPU, from its own table
    of refusals. A function: conftest itself imports no DALI, so that ``pytest -m gpu`` collects
    on a machine without it (the modules that need DALI skip themselves)."""
    from dali_cutmix import ops

    names = list(ops.BACKENDS)
    return names, [(b, lay) for b in names for lay in ("HWC", "CHW") if (b, lay) not in ops.REFUSED]


# Recipes for the tests that draw once and apply the same parameters in several ways.
REPLAY_CONFIGS = [MixConfig(prob=0.8, mode="elem"), MixConfig(mixup_alpha=0.3, mode="elem", minmax=(0.2, 0.8))]


def reference_mix(images: np.ndarray, params: CutMixParams, layout: str = "HWC") -> np.ndarray:
    """An independent oracle: a plain loop over the samples that copies each box from the
    partner and blends MixUp samples as ``floor(w * own + (1 - w) * partner + 0.5)`` in float32."""
    out = images.copy()
    for i, (j, (y1, x1, y2, x2)) in enumerate(zip(params.perm, params.boxes)):
        box = (slice(y1, y2), slice(x1, x2)) if layout == "HWC" else (slice(None), slice(y1, y2), slice(x1, x2))
        if params.blend is not None and params.blend[i]:
            w = np.float32(params.lam[i])
            mixed = images[i].astype(np.float32) * w + images[j].astype(np.float32) * (np.float32(1) - w)
            if np.issubdtype(images.dtype, np.integer):
                mixed = np.clip(np.floor(mixed + np.float32(0.5)), 0, np.iinfo(images.dtype).max)
            out[i] = mixed.astype(images.dtype)
        out[i][box] = images[j][box]
    return out


def box_lam(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """1 - box area / image area, in float32 as the library computes it."""
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).astype(np.float32)
    return np.float32(1) - area / np.float32(height * width)


def random_batch(rng, batch_size, shape, dtype=np.uint8):
    """Noise images: two different images share a pixel with negligible probability."""
    if np.issubdtype(dtype, np.integer):
        return [rng.integers(0, 256, shape, dtype=dtype) for _ in range(batch_size)]
    return [rng.random(shape, dtype=np.float32).astype(dtype) for _ in range(batch_size)]


def write_jpeg_tree(root, *, classes=3, train_per_class=6, val_per_class=3, seed=0):
    """An ImageNet-layout tree of small JPEGs of varied, non-square sizes; returns ``root``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    sizes = [(48, 64), (64, 48), (40, 90), (75, 75), (33, 57)]
    for split, per_class in (("train", train_per_class), ("val", val_per_class)):
        for c in range(classes if per_class else 0):  # no empty class folders
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                h, w = sizes[(c + i) % len(sizes)]
                base = np.linspace(0, 255, w)[None, :, None] * np.array([c == 0, c == 1, c == 2])
                noise = rng.integers(0, 40, (h, w, 3))
                image = np.clip(base + noise, 0, 255).astype(np.uint8)
                Image.fromarray(image).save(folder / f"img{i}.JPEG", quality=90)
    return root


def train_args(data, out, *extra: str, batch_size: int = 6) -> list[str]:
    """train.py flags for a small, quick run: resnet18 at 32 px, one DALI thread, no warmup."""
    flags = f"--arch resnet18 --image-size 32 --batch-size {batch_size} --workers 1 --lr 0.05 --warmup-epochs 0"
    return ["--data", str(data), "--output", str(out), *flags.split(), *extra]


def sigterm_after_step(monkeypatch, at: int) -> None:
    """Make in-process train.py send itself SIGTERM right after its ``at``-th training step
    (counted over the process, across runs), so an interruption lands at a known step."""
    import os
    import signal

    from dali_cutmix_trainer import engine

    real, done = engine.train_step, [0]

    def step(*args, **kwargs):
        loss = real(*args, **kwargs)
        done[0] += 1
        if done[0] == at:
            os.kill(os.getpid(), signal.SIGTERM)
        return loss

    monkeypatch.setattr(engine, "train_step", step)  # what engine.train_epoch calls


@pytest.fixture
def jpeg_tree(tmp_path):
    return write_jpeg_tree(tmp_path / "data")


@pytest.fixture(scope="module")
def unique_labels(tmp_path_factory):
    """24 training and 6 validation images as file lists, each image its own class: a label
    names the sample, so a rank's labels tell exactly which samples it read."""
    root = tmp_path_factory.mktemp("unique")
    write_jpeg_tree(root / "tree", classes=3, train_per_class=8, val_per_class=2)
    lists = []
    for split in ("train", "val"):
        files = sorted((root / "tree" / split).rglob("*.JPEG"))
        listing = root / f"{split}.txt"
        listing.write_text("".join(f"{f.relative_to(root)} {i}\n" for i, f in enumerate(files)))
        lists.append(str(listing))
    return lists  # the val labels are 0..5, a subset of the 24 training classes


def assert_each_epoch_covers(logs: list[dict], train_n: int, val_n: int) -> None:
    """Every sample once an epoch across the ranks, each rank its own share, validation each epoch."""
    for kind, n in (("train", train_n), ("val", val_n)):
        epochs = [log[kind] for log in logs]
        assert all(len(e) == 2 for e in epochs), kind
        for epoch in range(2):
            seen = [label for rank in epochs for label in rank[epoch]]
            assert sorted(seen) == list(range(n)), (kind, epoch)


def reference_resize_mix(images: np.ndarray, params: CutMixParams, layout: str = "HWC") -> np.ndarray:
    """The oracle: per sample and per box pixel, the partner's pixel whose centre is nearest,
    ``floor((i + 0.5) * H / h)`` in float64; MixUp samples as :func:`conftest.reference_mix`."""
    out = reference_mix(images, CutMixParams(params.perm, params.boxes * 0, params.lam, params.blend), layout)
    hwc = out if layout == "HWC" else out.transpose(0, 2, 3, 1)
    src = images if layout == "HWC" else images.transpose(0, 2, 3, 1)
    height, width = hwc.shape[1:3]
    for i, (j, (y1, x1, y2, x2)) in enumerate(zip(params.perm, params.boxes)):
        for y in range(y1, y2):
            for x in range(x1, x2):
                sy = int(np.floor((y - y1 + 0.5) * height / (y2 - y1)))
                sx = int(np.floor((x - x1 + 0.5) * width / (x2 - x1)))
                hwc[i, y, x] = src[j, sy, sx]
    return out


def reference_peak(image: np.ndarray) -> tuple[int, int]:
    """The oracle's map in float64: the mean grey level of each 2 x 2 cell, blurred by [1, 2, 1] / 4
    both ways, its distance from the mean of the 7 x 7 and of the 15 x 15 cells around it (edges
    repeated by padding, windows summed shift by shift), summed; the first maximum (to rounding)."""
    grey = image.astype(np.float64).sum(axis=2)
    f = max(1, min(grey.shape) // 32)
    rows, cols = grey.shape[0] // f, grey.shape[1] // f
    cells = grey[: rows * f, : cols * f].reshape(rows, f, cols, f).mean(axis=(1, 3))

    def around(x: np.ndarray, k: int, weight) -> np.ndarray:
        padded = np.pad(x, k // 2, mode="edge")
        return sum(
            weight(dr) * weight(dc) * padded[dr : dr + rows, dc : dc + cols] for dr in range(k) for dc in range(k)
        )

    cells = around(cells, 3, lambda d: (1, 2, 1)[d] / 4)
    contrast = sum(np.abs(cells - around(cells, k, lambda d, k=k: 1 / k)) for k in (7, 15))
    r, c = np.argwhere(contrast >= contrast.max() * (1 - 1e-12))[0]
    return int(r) * f + f // 2, int(c) * f + f // 2


def objects(rng, batch_size: int, height: int = 70, width: int = 96) -> np.ndarray:
    """(B, height, width, 3): dim noise with one bright square each, somewhere: a saliency peak to find."""
    images = rng.integers(0, 40, (batch_size, height, width, 3), dtype=np.uint8)
    for image in images:
        y, x = rng.integers(0, height - 12), rng.integers(0, width - 12)
        image[y : y + 12, x : x + 12] = rng.integers(180, 256, (12, 12, 3))
    return images


def compiled_copies() -> list[str]:
    """The native operator's copies of its pixel work this CPU runs (its ``isa`` argument)."""
    import platform
    import sys

    if platform.machine() != "x86_64":
        return ["portable"]
    flags = set(open("/proc/cpuinfo").read().split()) if sys.platform == "linux" else set()
    return ["portable"] + ["avx2"] * ("avx2" in flags) + ["avx512"] * ({"avx512f", "avx512bw", "avx512vl"} <= flags)
