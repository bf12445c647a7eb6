"""FFCV beside this project's loader on the same photos: the profiler's ``ffcv`` section.

    bash scripts/peers.sh                                   # FFCV 1.0.2 in .venv-peers, once
    .venv-peers/bin/python -m dali_cutmix_bench.bench --data DIR --sections ffcv --workers 2 --reps 3

Four loaders, each for ``--epochs`` whole epochs after a warm-up epoch, in a process of its own,
taken in turn for ``--reps`` rounds (images/s and process CPU time per batch, as the ``epochs``
section measures ours):

* FFCV reading the images as JPEG at their own size (its writer, ``write_mode="jpg"``, quality 90);
* FFCV's ImageNet recipe: ``write_mode="proportion"``, ``compress_probability=0.5`` (half the
  images stored raw), ``max_resolution=500``, quality 90;
* this project's native CutMix on the original JPEG files;
* the same on the photos prepared by :mod:`pipelines.prepare` at a longer side of 256.

FFCV's loaders decode with ``RandomResizedCropRGBImageDecoder``, flip and normalise (its own
operators), then ``torchvision.transforms.v2.CutMix`` mixes each batch, as FFCV has no CutMix.
Without ``ffcv`` importable the section says so and measures nothing.
"""

from __future__ import annotations

import importlib.util
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

FFCV_JPEG = "FFCV, JPEG at own size + v2.CutMix"
FFCV_RECIPE = "FFCV ImageNet recipe (max 500, half raw) + v2.CutMix"
OURS = "DALI + CutMix (native), originals"
OURS_PREPARED = "DALI + CutMix (native), prepared (longer side 256)"
PREPARED_SIDE = 256


def available() -> bool:
    return importlib.util.find_spec("ffcv") is not None


def convert(train_root: Path, path: Path, *, recipe: bool, workers: int) -> Path:
    """``train_root`` (``<class>/<image>``) as an FFCV ``.beton`` written by FFCV's own writer, once."""
    if path.is_file():
        return path
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter
    from torchvision.datasets import ImageFolder

    image = (RGBImageField(write_mode="proportion", compress_probability=0.5, max_resolution=500, jpeg_quality=90)
             if recipe else RGBImageField(write_mode="jpg", jpeg_quality=90))  # fmt: skip
    tmp = path.with_suffix(".partial")
    DatasetWriter(str(tmp), {"image": image, "label": IntField()}, num_workers=workers).from_indexed_dataset(
        ImageFolder(str(train_root))
    )
    tmp.rename(path)
    return path


def ffcv_loader(beton: Path, *, batch_size: int, image_size: int, workers: int):
    """FFCV's loader as its ImageNet example builds it, on the CPU: random resized crop at decode,
    flip, normalise to float32, CHW torch tensors."""
    from ffcv.fields.decoders import IntDecoder, RandomResizedCropRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import NormalizeImage, RandomHorizontalFlip, Squeeze, ToTensor, ToTorchImage

    mean, std = np.array([0.485, 0.456, 0.406]) * 255, np.array([0.229, 0.224, 0.225]) * 255
    pipelines = {
        "image": [RandomResizedCropRGBImageDecoder((image_size, image_size)), RandomHorizontalFlip(),
                  NormalizeImage(mean, std, np.float32), ToTensor(), ToTorchImage()],
        "label": [IntDecoder(), ToTensor(), Squeeze()],
    }  # fmt: skip
    return Loader(str(beton), batch_size=batch_size, num_workers=workers, order=OrderOption.RANDOM, drop_last=True,
                  pipelines=pipelines, os_cache=True)  # fmt: skip


def worker(argv=None) -> None:
    """One FFCV configuration alone in this process: a warm-up epoch (numba compiles), then
    ``--epochs`` whole epochs with ``v2.CutMix`` on each batch; prints images, wall and process
    CPU seconds as JSON."""
    import argparse

    import torch
    from torchvision.transforms import v2

    p = argparse.ArgumentParser()
    for flag in ("--batch-size", "--image-size", "--workers", "--epochs", "--classes"):
        p.add_argument(flag, type=int, required=True)
    p.add_argument("--beton", required=True)
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # the loader's threads fill the cores, as DALI's do
    loader = ffcv_loader(Path(args.beton), batch_size=args.batch_size, image_size=args.image_size,
                         workers=args.workers)  # fmt: skip
    cutmix = v2.CutMix(alpha=1.0, num_classes=args.classes)
    for images, labels in loader:
        cutmix(images, labels)
    images_seen, start, start_cpu = 0, time.perf_counter(), time.process_time()
    for _ in range(args.epochs):
        for images, labels in loader:
            images, labels = cutmix(images, labels)
            images_seen += len(images)
    wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    print(json.dumps({"images": images_seen, "wall": wall, "cpu": cpu}))


def ffcv_run(args, beton: Path, classes: int) -> dict:
    flags = ["--beton", str(beton), "--batch-size", str(args.batch_size), "--image-size", str(args.image_size),
             "--workers", str(args.workers), "--epochs", str(args.epochs), "--classes", str(classes)]  # fmt: skip
    command = [sys.executable, "-m", "dali_cutmix_bench.ffcv_peers", *flags]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"FFCV worker failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def ffcv_rows(args, root: Path, classes: int, row, epoch_run) -> list:
    """The section's rows (``row``: the profiler's Row; ``epoch_run``: its own-process epochs of
    one of our configurations on a root), or none with a note when FFCV is missing."""
    if not available():
        print("ffcv: not importable here, nothing measured (bash scripts/peers.sh installs it in .venv-peers)")
        return []
    from pipelines.prepare import Settings, prepare

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    prepared = out / f"prepared-{PREPARED_SIDE}"
    prepare(root, prepared, Settings(PREPARED_SIDE, args.image_size, 90), workers=args.workers, show=False)
    betons = {
        FFCV_JPEG: convert(root / "train", out / "jpeg.beton", recipe=False, workers=args.workers),
        FFCV_RECIPE: convert(root / "train", out / "recipe.beton", recipe=True, workers=args.workers),
    }
    runs = {
        FFCV_JPEG: lambda: ffcv_run(args, betons[FFCV_JPEG], classes),
        FFCV_RECIPE: lambda: ffcv_run(args, betons[FFCV_RECIPE], classes),
        OURS: lambda: epoch_run(args, root, "DALI + CutMix (native)"),
        OURS_PREPARED: lambda: epoch_run(args, prepared, "DALI + CutMix (native)"),
    }
    names = list(runs)
    rates = {n: [] for n in names}
    cpu = {n: [] for n in names}
    for rep in range(args.reps):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            got = runs[name]()
            rates[name].append(got["images"] / got["wall"])
            cpu[name].append(1000 * got["cpu"] / got["images"] * args.batch_size)
    baselines = {OURS: FFCV_JPEG, OURS_PREPARED: FFCV_RECIPE, FFCV_RECIPE: FFCV_JPEG}
    return [row("ffcv", n, rates[n], baseline=baselines.get(n, ""), cpu_ms=cpu[n]) for n in names]


def ffcv_findings(by: dict) -> list[str]:
    """The targets' ratios, each the median of per-round ratios (the rounds were taken in turn)."""
    out = []
    pairs = [
        (OURS_PREPARED, OURS, 1.5, "prepared data against the originals"),
        (OURS_PREPARED, FFCV_RECIPE, 2.0, "native on prepared data against FFCV's recipe"),
        (OURS, FFCV_JPEG, 2.5, "native on the originals against FFCV reading the same JPEGs"),
    ]
    for name, base, target, what in pairs:
        a, b = by.get(("ffcv", name)), by.get(("ffcv", base))
        if a is None or b is None:
            continue
        ratios = sorted(x / y for x, y in zip(a.images_per_s, b.images_per_s))
        median = statistics.median(ratios)
        verdict = "met" if median >= target else "NOT met"
        out.append(f"ffcv: {what}: x{median:.2f} ({ratios[0]:.2f}..{ratios[-1]:.2f}, {len(ratios)} rounds); "
                   f"target x{target}: {verdict}")  # fmt: skip
    return out


if __name__ == "__main__":
    worker()
