"""The flags that become a loader's settings: one mapping, shared by the command line's checks
(:mod:`dali_cutmix_trainer.cli`) and the run (:mod:`dali_cutmix_trainer.run`). Light: no torch, no DALI."""

from __future__ import annotations

from pipelines.settings import LoaderSettings, SizeSchedule


def loader_settings(args, data, **fields) -> LoaderSettings:
    """The loaders' settings from the flags (``fields``: the rest, and overrides)."""
    flags = dict(batch_size=args.batch_size, image_size=args.image_size, size_schedule=size_schedule(args),
                 random_area=tuple(args.random_area), num_threads=args.workers, seed=args.seed)  # fmt: skip
    return LoaderSettings(data, **(flags | fields))


def size_schedule(args) -> SizeSchedule | None:
    """``--size-schedule`` as the loaders take it (checked by :func:`check_args`)."""
    return SizeSchedule.parse(args.size_schedule) if args.size_schedule else None
