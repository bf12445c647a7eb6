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

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import math
import os
import signal
import sys
import tempfile
import traceback
import uuid
from pathlib import Path
from typing import NamedTuple

import torch
import torch.distributed as dist

from dali_cutmix.errors import DataError, UserError
from dali_cutmix.files import write_json
from dali_cutmix.loader import DecodeFailed, process_device, process_shard
from dali_cutmix.mix import LoopMixer
from pipelines.files import demo_root
from pipelines.imagenet import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE, SizeSchedule
from pipelines.loaders import train_loader, val_loader
from pipelines.preview import write_batch_png
from pipelines.recipe_args import add_recipe_args, recipe_from_args
from pipelines.scan import UnusableData
from pipelines.sources import resolve, source_kind
from trainer import checkpoint as ckpt
from trainer.curves import plot_metrics
from trainer.engine import LRSchedule, Stop, evaluate, gather_states, sgd, train_epoch
from trainer.model import ARCHS, build_model

# Flags whose default differs between the demo (no --data) and real data.
DEMO_DEFAULTS = {"epochs": 10, "batch_size": 128, "image_size": 32, "arch": "resnet18", "warmup_epochs": 0}
# What may differ between a run and its resumption (the lr schedule is rebuilt from the flags and
# continues from the checkpoint's step); every other flag must match the checkpoint's.
RESUMABLE = ("epochs", "lr", "lr_schedule", "lr_step", "warmup_epochs", "workers", "keep_checkpoints",
             "scan", "strict", "max_steps", "device", "no_amp", "val_image_size")  # fmt: skip
# Where, how, or checked another way (the data by its fingerprint).
NOT_FLAGS = ("output", "resume", "overwrite", "data", "val_data", "recipe", "default_output")
DATA_DEFAULTS = {"epochs": 90, "batch_size": 256, "image_size": 224, "arch": "resnet50", "warmup_epochs": 5}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", default=None, help="ImageNet-layout root or training shards; default: the demo data")
    p.add_argument("--val-data", default=None, help="validation shards, folder or file list (default: ROOT/val)")
    p.add_argument("--epochs", type=int, default=None, help="total epochs (demo 10, else 90)")
    p.add_argument("--batch-size", type=int, default=None, help="per process (demo 128, else 256)")
    p.add_argument("--arch", default=None, help=f"one of {', '.join(ARCHS)} (demo resnet18, else resnet50)")
    p.add_argument("--image-size", type=int, default=None, help="train crop side (demo 32, else 224)")
    p.add_argument(
        "--size-schedule",
        default=None,
        metavar="EPOCH:SIDE,...",
        help="progressive resizing: the train crop side from each epoch on, e.g. 0:160,10:192",
    )
    p.add_argument(
        "--val-image-size",
        type=int,
        default=None,
        help="validation crop side (default: the last training side; FFCV trains at 192, validates at 256)",
    )
    p.add_argument(
        "--random-area",
        type=float,
        nargs=2,
        default=(0.08, 1.0),
        metavar=("MIN", "MAX"),
        help="the random crop's share of the image (timm's --scale)",
    )
    p.add_argument("--lr", type=float, default=0.1, help="learning rate for a global batch of 256")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--lr-schedule", choices=("cosine", "step"), default="cosine")
    p.add_argument("--lr-step", type=int, default=75, help="step schedule: lr x0.1 every N epochs (paper: 75)")
    p.add_argument("--warmup-epochs", type=float, default=None, help="linear warmup (demo 0, else 5)")
    p.add_argument("--smoothing", "--label-smoothing", type=float, default=0.0, dest="smoothing")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="DALI CPU threads")
    add_recipe_args(p)  # the mixing flags, timm's names among them (pipelines.recipe_args)
    p.add_argument(
        "--mix-in",
        choices=("pipeline", "loop"),
        default="pipeline",
        help="mix inside the DALI pipeline, or in the training loop on the device (the paper's way)",
    )
    p.add_argument("--output", type=str, help="where config, checkpoints and metrics go (default runs/latest)")
    p.add_argument("--resume", nargs="?", const="latest", default=None, help="continue: latest in --output, or PATH")
    p.add_argument(
        "--overwrite", action="store_true", help="start afresh in a used --output (the old run is moved aside)"
    )
    p.add_argument("--keep-checkpoints", type=int, default=3, help="how many epoch checkpoints to keep")
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    p.add_argument("--no-amp", action="store_true", help="GPU: train in float32 instead of float16 autocast")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--demo-per-class", type=int, default=1000, help="demo: training images per class")
    p.add_argument("--scan", choices=("quick", "full", "off"), default="quick", help="check files before training")
    p.add_argument("--strict", action="store_true", help="stop on undecodable files instead of leaving them out")
    p.add_argument("--max-steps", type=int, default=None, help="stop each epoch after N steps (smoke tests)")
    args = p.parse_args(argv)
    # The default folder is a scratch place: a fresh run there moves the earlier one aside.
    args.default_output = args.output is None
    args.output = args.output or "runs/latest"
    defaults = DEMO_DEFAULTS if args.data is None else DATA_DEFAULTS
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    check_args(p, args)
    return args


# Bounds of the numeric flags: (low, high, whether low itself is allowed); every one must be finite.
FLOAT_RANGES = {"lr": (0, None, False), "momentum": (0, 1, True), "weight_decay": (0, None, True),
                "warmup_epochs": (0, None, True), "smoothing": (0, 1, True)}  # fmt: skip
MAX_SEED = 2**31 - 1  # DALI's seeds, derived from it per rank and epoch, stay in int64


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """One-line errors (exit code 2) for input we can judge before any work starts."""
    for name, (low, high, closed) in FLOAT_RANGES.items():
        value, flag = getattr(args, name), "--" + name.replace("_", "-")
        below = value < low if closed else value <= low
        if not math.isfinite(value) or below or (high is not None and value >= high):
            bounds = f"{'>=' if closed else '>'} {low}" + (f" and < {high}" if high is not None else "")
            p.error(f"{flag} must be a finite number {bounds}, got {value}")
    if not math.isfinite(args.lr * args.batch_size * 1024 / 256):  # the lr scaled by the global batch
        p.error(f"--lr {args.lr} overflows once scaled by the global batch: give a learning rate below 1e300")
    if not 0 <= args.seed <= MAX_SEED:
        p.error(f"--seed must be in [0, {MAX_SEED}], got {args.seed}")
    if not all(math.isfinite(v) for v in args.random_area):
        p.error(f"--random-area must be finite, got {' '.join(map(str, args.random_area))}")
    positive = {
        "--epochs": args.epochs,
        "--batch-size": args.batch_size,
        "--workers": args.workers,
        "--lr-step": args.lr_step,
        "--keep-checkpoints": args.keep_checkpoints,
    }
    for flag, value in positive.items():
        if value < 1:
            p.error(f"{flag} must be >= 1, got {value}")
    if args.max_steps is not None and args.max_steps < 1:
        p.error(f"--max-steps must be >= 1, got {args.max_steps} (leave it out to train whole epochs)")
    if Path(args.output).exists() and not Path(args.output).is_dir():
        p.error(f"--output {args.output!r} is a file, not a folder: give a folder for the run")
    if not MIN_IMAGE_SIZE <= args.image_size <= MAX_IMAGE_SIZE:
        p.error(f"--image-size must be in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}], got {args.image_size}")
    try:
        sizes = SizeSchedule.parse(args.size_schedule) if args.size_schedule is not None else None
    except UserError as e:
        p.error(f"--size-schedule: {e}")
    if sizes is not None:
        if sizes.steps[-1][0] >= args.epochs:
            p.error(f"--size-schedule: epoch {sizes.steps[-1][0]} is past the last epoch ({args.epochs - 1}) "
                    f"of --epochs {args.epochs}")  # fmt: skip
        args.size_schedule = sizes.text()  # one spelling: a resume compares the schedule, not its text
    if args.val_image_size is None:
        args.val_image_size = sizes.sizes()[-1] if sizes else args.image_size
    if not MIN_IMAGE_SIZE <= args.val_image_size <= MAX_IMAGE_SIZE:
        p.error(f"--val-image-size must be in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}], got {args.val_image_size}")
    if not 0 < args.random_area[0] <= args.random_area[1] <= 1:
        p.error(f"--random-area must be MIN MAX with 0 < MIN <= MAX <= 1, got {' '.join(map(str, args.random_area))}")
    if args.arch not in ARCHS:
        p.error(f"--arch must be one of {', '.join(ARCHS)}, got {args.arch!r}")
    args.recipe = recipe_from_args(p, args)
    kinds = {}
    for flag, spec in (("--data", args.data), ("--val-data", args.val_data)):
        if spec is not None:
            try:
                kinds[flag] = source_kind(spec)
            except UserError as e:
                p.error(f"{flag} {e}")
    if kinds.get("--data") == "shards" and args.val_data is None:
        p.error(f"--data {args.data!r} names WebDataset shards: give the validation data with --val-data")
    if args.device == "gpu" and not torch.cuda.is_available():
        p.error("--device gpu: CUDA is not available on this machine")
    if args.resume not in (None, "latest") and not Path(args.resume).is_file():
        p.error(f"--resume {args.resume!r}: no such checkpoint file")


def setup_distributed(args) -> tuple[int, int, torch.device]:
    """rank, world size and this process's device; torchrun sets the environment."""
    use_gpu = args.device == "gpu" or (args.device == "auto" and torch.cuda.is_available())
    rank, world = process_shard()
    device = torch.device("cuda", process_device()) if use_gpu else torch.device("cpu")
    if use_gpu:
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True  # fixed-size input: cuDNN picks the fastest kernels once
    if world > 1:
        dist.init_process_group("nccl" if use_gpu else "gloo")
    return rank, world, device


class Data(NamedTuple):
    train: object  # DALILoader of (images, labels_a, labels_b, lam)
    val: object  # DALILoader of (images, labels)
    classes: list[str]
    fingerprint: str
    mixer: LoopMixer | None  # --mix-in loop: mixes the plain batches in the training loop


def load_data(args, rank: int, world: int, device: torch.device, start_epoch: int, out: Path, loader_state=None):
    """This rank's loaders, the class names, the data's fingerprint and the loop mixer.

    The data is resolved once (:func:`pipelines.sources.resolve`); undecodable files and shard
    samples are found first and left out, or are an error with ``--strict``. Rank 0 exports the
    demo data and scans while the others wait, then they read its caches. A fresh run's rank 0
    draws its first batch to ``out/batch.png``.
    """
    if world > 1 and rank != 0:
        dist.barrier()
    try:
        root = args.data or demo_root(args.demo_per_class)
    except DataError as e:  # the demo's Debian package is missing
        raise UserError(f"{e}, or pass --data DIR") from e
    checks = dict(check=args.scan, strict=args.strict, workers=args.workers, listing_dir=out, report=rank == 0)
    try:
        train_split, val_split = resolve(root, args.val_data, **checks)
    except UnusableData as e:
        raise UserError(f"--strict: {e}") from e
    if world > 1 and rank == 0:
        dist.barrier()
    share = -(-len(train_split) // world)  # DALI pads every rank's share to the largest
    if share < args.batch_size:
        raise UserError(
            f"--batch-size {args.batch_size} is larger than this rank's share of the training data: {share} of "
            f"{len(train_split)} images over {world} process(es); lower --batch-size (or run fewer processes)"
        )
    dali_device = "gpu" if device.type == "cuda" else "cpu"
    common = dict(
        batch_size=args.batch_size,
        device=dali_device,
        device_id=device.index,
        num_threads=args.workers,
        shard_id=rank,
        num_shards=world,
        image_size=args.image_size,
        torch_device=device,
    )
    settings = dict(
        seed=args.seed,
        start_epoch=start_epoch,
        recipe=args.recipe if args.mix_in == "pipeline" else None,  # loop: plain batches, mixed by the trainer
        backend=args.cutmix_backend,
        random_area=tuple(args.random_area),
        size_schedule=size_schedule(args),
        fp16=dali_device == "gpu" and not args.no_amp,
        last_batch="drop",  # equal batches on every rank, and no batch of 1 for BatchNorm
        **common,
    )
    train = train_loader(train_split, state=loader_state, **settings)
    val = val_loader(val_split, classes=train_split.classes, **(common | {"image_size": args.val_image_size}))
    mixer = None
    if args.recipe is not None and args.mix_in == "loop":
        mixer = LoopMixer(args.recipe, seed=args.seed * 1000 + rank + 1)
        if loader_state and loader_state.get("mixer"):
            mixer.load_state(loader_state["mixer"])
    if rank == 0 and loader_state is None and start_epoch == 0:
        write_batch_png(out / "batch.png", train_split, train_split.classes, mixer=mixer, **settings)
    return Data(train, val, train_split.classes, train_split.fingerprint(root), mixer)


def size_schedule(args) -> SizeSchedule | None:
    """``--size-schedule`` as the loaders take it (checked by :func:`check_args`)."""
    return SizeSchedule.parse(args.size_schedule) if args.size_schedule else None


def build_optimizer(args, model: torch.nn.Module, world: int, steps_per_epoch: int):
    """SGD (:func:`trainer.engine.sgd`), lr scaled by global batch / 256, and its per-step schedule."""
    lr = args.lr * args.batch_size * world / 256
    optimizer = sgd(model, lr=lr, momentum=args.momentum, weight_decay=args.weight_decay)
    schedule = LRSchedule(args.lr_schedule, args.warmup_epochs, args.epochs, args.lr_step, steps_per_epoch)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def prepare(args, rank: int, world: int, device: torch.device, out: Path):
    """The checkpoint to resume from (or None), the data (:class:`Data`) and (rank 0) the lock on
    ``out``; :class:`UserError` on bad input, before anything in ``out`` changes."""
    state, loader_state, lock = None, None, None
    say = print if rank == 0 else lambda *a, **k: None
    if rank == 0:
        holder = ckpt.live_run(out)  # first: a live run's folder is neither resumed nor moved aside
        if holder:
            raise ckpt.RunInUse(out, holder)
        for partial in ckpt.remove_partial(out):
            say(f"removed {partial}, left by a write that never finished")
    if args.resume:
        if args.resume == "latest":
            found = ckpt.newest_loadable(out, args.arch, say=say)
            if found is None:
                raise UserError(f"--resume: no loadable checkpoint in {out}")
            path, state = found
        else:
            path = Path(args.resume)
            state = ckpt.load(path, args.arch)
        try:
            ckpt.check_flags(state.get("config") or {}, vars(args), path, may_change=RESUMABLE, skip=NOT_FLAGS,
                             name=lambda key: "--" + key.replace("_", "-"))  # fmt: skip
        except UserError as e:
            raise UserError(f"--resume: {e}") from e
        if args.epochs <= state["epoch"]:
            raise UserError(f"--epochs {args.epochs} ends before the checkpoint {path}, which is at epoch "
                            f"{state['epoch']}: give --epochs above {state['epoch']} to train on")  # fmt: skip
        saved = state["loaders"] or []
        loader_state = saved[rank] if len(saved) == world else None
        if rank == 0:
            exact = (
                "the data stream exactly"
                if loader_state
                else "a fresh data order (no loader state for this world size)"
            )
            print(f"resuming from {path}: epoch {state['epoch']}, step {state['step']}, with {exact}")
    elif ckpt.holds_run(out) and not (args.overwrite or args.default_output):
        raise UserError(
            f"--output {out} already holds a run: continue it with --resume, or start afresh with --overwrite "
            f"(the old run is moved to {out}.old-N)"
        )
    if not state and ckpt.holds_run(out) and rank == 0:  # --overwrite, or the default folder
        say(f"moved the earlier run in {out} to {ckpt.move_aside(out)}")
    fresh = not out.exists()
    if rank == 0:  # held for the run (released when it ends, or by the OS); under torchrun rank 0 holds it
        lock = ckpt.RunLock(out)
    try:
        start_epoch = state["epoch"] if state else 0
        data = load_data(args, rank, world, device, start_epoch, out, loader_state)
        if state:
            try:
                ckpt.check_data(state, path, len(data.classes), data.fingerprint)
            except UserError as e:
                raise UserError(f"--resume: {e}") from e
    except BaseException:
        if lock is not None:
            if fresh:  # what the start-up wrote into the folder it made: a failed start leaves no trace
                for name in ("batch.png", "bad_files_train.txt", "bad_files_val.txt", "unreadable_files_train.txt",
                             "unreadable_files_val.txt"):  # fmt: skip
                    (out / name).unlink(missing_ok=True)
            lock.release(tidy=fresh)
        raise
    return state, data, lock


class StopRun(Exception):
    """Why the run stops early, in one line, with the exit code: 2 for bad data, flags or
    checkpoints (found before anything is written), 1 for a non-finite loss."""

    def __init__(self, error: Exception, code: int):
        super().__init__(str(error))
        self.code = code


def run(args) -> int:
    """The whole run: prepare, then train and evaluate epoch by epoch; the exit code."""
    rank, world, device = setup_distributed(args)
    torch.manual_seed(args.seed)
    out = Path(args.output)
    try:
        state, data, lock = prepare(args, rank, world, device, out)
    except ckpt.RunInUse as e:
        raise StopRun(f"--output {e}", 2) from e
    except DecodeFailed as e:  # met while drawing the first batch
        raise StopRun(f"{e.path or 'a file'}: DALI failed to decode it: run with --scan full to leave such files "
                      f"out", 2) from e  # fmt: skip
    except UserError as e:  # what the user can fix; any other exception is a bug, reported by main()
        raise StopRun(e, 2) from e
    try:
        return fit(args, rank, world, device, out, state, data)
    finally:
        if lock is not None:
            lock.release()
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def fit(args, rank: int, world: int, device: torch.device, out: Path, state: dict | None, data: Data) -> int:
    """Train and evaluate epoch by epoch from ``state`` (or afresh), saving as it goes; the exit code."""
    train, val, classes, fingerprint, mixer = data
    model = build_model(args.arch, len(classes), device)
    optimizer, scheduler = build_optimizer(args, model, world, len(train))
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" and not args.no_amp else None
    if state:  # prepare checked that it fits (flags, data, classes)
        scheduler = ckpt.restore(state, model, optimizer, scheduler, scaler, steps_per_epoch=len(train))
    ddp = (
        torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        if world > 1
        else model
    )
    recipe = dataclasses.asdict(args.recipe) if args.recipe else None
    config = {
        **vars(args),
        "recipe": recipe,
        "run_id": (state["config"].get("run_id") if state else None) or uuid.uuid4().hex[:12],
        "data_fingerprint": fingerprint,
        "train_files": int(fingerprint.split(":")[0]),
        "world_size": world,
        "device": str(device),
        "num_classes": len(classes),
        "classes": classes,
    }
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "config.json", config)
        print(
            f"{args.arch} on {device} x{world}: {len(classes)} classes, {len(train)} steps/epoch, "
            f"epochs {state['epoch'] if state else 0}..{args.epochs - 1}, output {out}",
            flush=True,
        )

    stop = Stop()
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    start_epoch, start_step = (state["epoch"], state["step"]) if state else (0, 0)
    metrics_path = out / "metrics.jsonl"
    rows = ckpt.read_metrics(metrics_path, before_epoch=start_epoch) if rank == 0 else []
    sizes = size_schedule(args)
    try:
        for epoch in range(start_epoch, args.epochs):
            if rank == 0:  # the checkpoint at this epoch's end must fit: said now, not after an hour's work
                on_disk_full(out, ckpt.check_space, out, checkpoint_bytes(out, model, optimizer))
            side = sizes.at(epoch, args.image_size) if sizes else args.image_size
            row = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"], "image_size": side}
            try:
                row |= train_epoch(ddp, train, optimizer, scheduler, scaler, epoch=epoch, device=device, stop=stop,
                                   world=world, start_step=start_step, max_steps=args.max_steps, mixer=mixer,
                                   smoothing=args.smoothing, show=rank == 0)  # fmt: skip
            except FloatingPointError as e:
                raise StopRun(f"{e}: lower --lr (or --warmup-epochs more); {kept(out)}", 1) from e
            except DecodeFailed as e:
                raise StopRun(f"{e.path or 'a file'}: DALI failed to decode it: run with --scan full to leave such "
                              f"files out, then --resume; {kept(out)}", 1) from e  # fmt: skip
            loaders = gather_states(train, mixer, world)
            save = dict(model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler, config=config,
                        keep=args.keep_checkpoints, loaders=loaders)  # fmt: skip
            if row.pop("stopped"):
                if rank == 0:
                    path = on_disk_full(out, ckpt.save, out, epoch, step=row["steps"], **save)
                    print(f"saved {path}; continue with --resume", file=sys.stderr)
                return 128 + (stop.signal or signal.SIGTERM)  # a rank told by another: as if SIGTERM
            start_step = 0
            try:
                row |= evaluate(ddp, val, device, world, amp=not args.no_amp)
            except DecodeFailed as e:
                raise StopRun(f"{e.path or 'a validation file'}: DALI failed to decode it: run with --scan full to "
                              f"leave such files out, then --resume; {kept(out)}", 1) from e  # fmt: skip
            if rank == 0:  # the row first: a kill between the two leaves it for the epoch a resume trains again
                rows.append(row)
                ckpt.write_metrics(metrics_path, rows)
                plot_metrics(rows, out / "curves.png")
                on_disk_full(out, ckpt.save, out, epoch + 1, **save)
                print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def checkpoint_bytes(out: Path, model, optimizer) -> int:
    """The size of the next checkpoint: the last one's, else the weights and the optimizer state
    (the momentum, as large as the weights, counted before the first step makes it)."""
    last = ckpt.latest(out)
    if last is not None:
        return last.stat().st_size
    weights = ckpt.checkpoint_bytes(model, None)
    return max(2 * weights, ckpt.checkpoint_bytes(model, optimizer))


def kept(out: Path) -> str:
    """What a run that stops now leaves to ``--resume`` from, for its error line."""
    last = ckpt.latest(out)
    return f"the last good checkpoint is {last}" if last else "no checkpoint has been written yet"


def on_disk_full(out: Path, write, *args, **kwargs):
    """``write(*args, **kwargs)``; a full disk (or another OSError) stops the run in one line naming the file and
    the last good checkpoint, which the atomic writes leave intact for ``--resume``."""
    try:
        return write(*args, **kwargs)
    except OSError as e:
        todo = "free some space" if e.errno == errno.ENOSPC else "fix that"
        raise StopRun(f"{e.filename or out}: {e.strerror or e}; nothing was lost, {kept(out)}: {todo}, then continue "
                      f"with --resume", 1) from e  # fmt: skip


# What to do about an OSError outside a checkpoint write, by errno.
OS_ADVICE = {errno.ENOSPC: "free some space, then continue with --resume",
             errno.EACCES: "choose another --output, or fix its permissions",
             errno.EPERM: "choose another --output, or fix its permissions",
             errno.EROFS: "choose another --output on a writable disk",
             errno.ENOTDIR: "a part of that path is a file: choose another --output",
             errno.EIO: "the storage failed: check it, then run again (--resume continues a started run)"}  # fmt: skip


def main(argv=None) -> int:
    """Run, and end any failure in one line on stderr: what the user can fix says what to do; a
    bug says so and names the file holding its traceback (``DALI_CUTMIX_DEBUG=1`` prints it too)."""
    args = parse_args(argv)
    try:
        return run(args)
    except StopRun as e:  # bad data, flags or checkpoints, a non-finite loss: the message says what to do
        debug_traceback()
        print(f"train.py: error: {e}", file=sys.stderr)
        return e.code
    except UserError as e:  # found once the run had started (a damaged metrics file, ...)
        debug_traceback()
        print(f"train.py: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C before training started, or a second one during it
        print("train.py: interrupted; the checkpoints already written are kept (--resume continues from the last)",
              file=sys.stderr)  # fmt: skip
        return 130
    except OSError as e:  # the disk, the folder, the storage
        debug_traceback()
        if not e.strerror:
            return report_bug(e, Path(args.output))
        advice = OS_ADVICE.get(e.errno, "fix that, then run again (--resume continues a run that had started)")
        print(f"train.py: error: {e.filename or args.output}: {e.strerror}: {advice}", file=sys.stderr)
        return 1
    except Exception as e:
        return report_bug(e, Path(args.output))


def debug_traceback() -> None:
    """With ``DALI_CUTMIX_DEBUG=1``, the traceback of the exception being handled, on stderr."""
    if os.environ.get("DALI_CUTMIX_DEBUG"):
        traceback.print_exc()


def report_bug(error: BaseException, out: Path) -> int:
    """A bug: one line that says so and names the file holding the traceback (``out/error.log``,
    or a temporary file when ``out`` does not exist or cannot be written). Returns 1."""
    text = "".join(traceback.format_exception(error))
    debug_traceback()
    try:
        log = out / "error.log"
        if not out.is_dir():
            raise FileNotFoundError(out)
        log.write_text(text)
    except OSError:
        fd, name = tempfile.mkstemp(prefix="dali-cutmix-error-", suffix=".log")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        log = Path(name)
    first = (str(error).strip().splitlines() or [""])[0][:300]
    print(f"train.py: internal error (a bug, not your input): {type(error).__name__}: {first}; the traceback is "
          f"in {log}: please report it with the command you ran", file=sys.stderr)  # fmt: skip
    return 1


if __name__ == "__main__":
    sys.exit(main())
