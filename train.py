"""Train a torchvision ResNet with CutMix applied inside the DALI input pipeline.

    python train.py                                    # demo: Fashion-MNIST, CPU-friendly defaults
    python train.py --data /imagenet --arch resnet50 --batch-size 256 --epochs 90
    torchrun --nproc_per_node 8 train.py --data /imagenet --arch resnet50   # DDP, one shard per rank

``--data`` is an ImageNet-layout root (``train/<class>/*.JPEG``, ``val/<class>/*.JPEG``), or WebDataset
training shards (``'shards/train-{000000..000146}.tar'`` or a folder of ``.tar``, with ``--val-data``). Without it
the demo data (Fashion-MNIST from Debian's ``dataset-fashion-mnist``) is exported once to JPEG
folders and used. ``--output DIR`` receives ``config.json``, a checkpoint per epoch,
``metrics.jsonl`` (one line per epoch) and ``curves.png``; ``--resume`` continues a run.
"""

import sys


def main(argv=None) -> int:
    """The trainer (:func:`dali_cutmix_trainer.cli.main`). This file imports nothing heavy itself: Python's
    fork server imports ``__main__`` again in each worker of the bad-file check, so those workers
    load neither torch nor DALI."""
    from dali_cutmix_trainer.cli import main as cli_main

    return cli_main(argv)


def parse_args(argv=None):
    """The flags, checked (:func:`dali_cutmix_trainer.cli.parse_args`)."""
    from dali_cutmix_trainer.cli import parse_args as cli_parse_args

    return cli_parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
