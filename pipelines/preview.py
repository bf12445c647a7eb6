"""A picture of what the pipeline feeds: the first training batch, un-normalised, as a grid with
each image's two class names and lam, the pasted box outlined
(:func:`dali_cutmix.batch_grid.show_batch`).

    python -m pipelines.preview --data DIR [--mixup 0.4 --cutmix-mode elem ...] --output batch.png

``train.py`` writes the same picture of its own first batch to ``OUTPUT/batch.png``.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path

from dali_cutmix.batch_grid import show_batch
from dali_cutmix.loop import LoopMixer
from dali_cutmix.paste import apply_cutmix, placed
from pipelines.sources import usable

from .cli_flags import add_recipe_args, recipe_from_args, setting_flag
from .graphs import MEAN, STD
from .loaders import train_loader
from .settings import LoaderSettings, SettingError


def write_batch_png(path, data, classes, *, mixer: LoopMixer | None = None, start_epoch: int = 0,
                    **loader_args) -> Path:  # fmt: skip
    """Draw the first batch of ``train_loader(data, start_epoch=start_epoch, **loader_args)`` to
    ``path``: the batch that loader gives first (the same pipeline, its parameters returned too).

    data: :class:`pipelines.settings.LoaderSettings`, or its data with its fields in ``loader_args``.
    classes: the class names the labels index.
    mixer: a trainer that mixes in the loop (``recipe=None`` in the loader): the first batch is
        mixed as that mixer would next (a copy of it draws; the mixer itself does not move).
    """
    loader = train_loader(data, return_params=True, start_epoch=start_epoch, **loader_args)
    batches = iter(loader)
    batch = dict(zip(loader.output_map, next(batches)))
    mirror = batch.get("mirror")
    if mixer is not None:
        images = batch["images"]
        drawn = copy.deepcopy(mixer).sample(images.shape[0], *images.shape[2:], start_epoch)
        params = placed(images, drawn, "CHW")  # SaliencyMix's boxes centred: the ones to draw
        batch["images"], batch["labels_a"], batch["labels_b"], batch["lam"] = apply_cutmix(
            images, batch["labels_a"], params, "CHW"
        )
        batch["boxes"], batch["blend"], mirror = params.boxes, params.blend, None  # mixed after the flip
    labelled = batch["images"], batch["labels_a"], batch["labels_b"], batch["lam"]
    return show_batch(*labelled, classes, path, boxes=batch.get("boxes"), blend=batch.get("blend"), mirror=mirror,
                      mean=MEAN, std=STD)  # fmt: skip


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="training folder, file list or shards (an ImageNet root: its train/)")
    p.add_argument("--output", default="batch.png", help="the PNG to write")
    p.add_argument("--batch-size", type=int, default=16, help="images in the batch (up to 16 are drawn)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--seed", type=int, default=0)
    add_recipe_args(p)
    args = p.parse_args(argv)
    recipe = recipe_from_args(p, args)
    if Path(args.output).suffix.lower() != ".png":
        p.error(f"--output {args.output!r}: the picture is a PNG, give a name ending in .png")
    data = Path(args.data) / "train" if (Path(args.data) / "train").is_dir() else args.data
    try:
        settings = LoaderSettings(data, batch_size=args.batch_size, image_size=args.image_size, seed=args.seed,
                                  num_threads=2, shard_id=0, num_shards=1)  # fmt: skip
    except SettingError as e:
        p.error(f"{setting_flag(e.name)} {e.reason}")
    try:
        with tempfile.TemporaryDirectory() as listing:  # the bad-file check first, as train.py runs it
            source = usable(data, "train", workers=1, listing_dir=Path(listing), report=False)
        path = write_batch_png(args.output, settings.replace(data=source), source.classes, recipe=recipe,
                               backend=args.cutmix_backend)  # fmt: skip
    except (ValueError, OSError) as e:
        p.exit(2, f"{p.prog}: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
