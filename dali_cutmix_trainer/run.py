"""The run: this process's place (rank, device), its data and loaders, then training and
evaluation epoch by epoch, saving as it goes. ``train.py`` runs it through :mod:`dali_cutmix_trainer.cli`."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import signal
import sys
import uuid
from datetime import timedelta
from pathlib import Path
from typing import NamedTuple

import torch
import torch.distributed as dist

from dali_cutmix.errors import DataError, UserError
from dali_cutmix.files import write_json
from dali_cutmix.loader import DecodeFailed, process_device, process_shard, rank_share
from dali_cutmix.loop import LoopMixer
from dali_cutmix.ops import default_backend
from dali_cutmix.seeds import derive_seed
from pipelines.folders import demo_root
from pipelines.loaders import train_loader, val_loader
from pipelines.prepare import prepared_val_size
from pipelines.preview import write_batch_png
from pipelines.scan import UnusableData
from pipelines.sources import resolve

from . import checkpoint as ckpt
from .curves import plot_metrics
from .engine import AMP_DTYPES, EpochBooks, LRSchedule, Stop, evaluate, gather_states, grad_scaler, sgd, train_epoch
from .flags import loader_settings, size_schedule
from .model import build_model
from .run_folder import StopRun, kept, next_checkpoint_bytes, on_disk_full, open_run


def setup_distributed(args) -> tuple[int, int, torch.device]:
    """rank, world size and this process's device; torchrun sets the environment."""
    use_gpu = args.device == "gpu" or (args.device == "auto" and torch.cuda.is_available())
    rank, world = process_shard()
    device = torch.device("cuda", process_device()) if use_gpu else torch.device("cpu")
    if use_gpu:
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True  # fixed-size input: cuDNN picks the fastest kernels once
    if world > 1:
        die_with_launcher()
        init_group("nccl" if use_gpu else "gloo", rank, world)
    return rank, world, device


def init_group(backend: str, rank: int, world: int) -> None:
    """The process group, formed so that a restart works whenever its ranks arrive.

    torchrun's agent keeps one store for the job across restarts (``--max-restarts``, static or
    c10d rendezvous), and gloo and NCCL exchange their addresses through it under fixed keys: a
    rank of a restarted job that reaches the group before its peer reads the dead peer's address
    and fails (gloo: "connectFullMesh failed ... Connection refused"). Each restart's keys get
    their own prefix here, so a rank that arrives first waits for the peer's new address instead.
    """
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    one_node = os.environ.get("LOCAL_WORLD_SIZE") == str(world)  # one agent: its count is the job's
    warning = shared_store_warning(world)
    if warning and rank == 0:
        print(warning, file=sys.stderr, flush=True)
    if restart is None or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or not one_node:
        # env:// as the launcher set it (Slurm's srun, a plain script). Across nodes each agent
        # counts its own restarts, so the count cannot key the store: there, a restartable job
        # takes a fresh store each round (TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1, docs/OPERATIONS.md).
        dist.init_process_group(backend)
        return
    agent = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=False,
                          timeout=timedelta(minutes=30))  # fmt: skip
    store = dist.PrefixStore(f"dali_cutmix/restart_{restart}", agent)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world)


def shared_store_warning(world: int) -> str | None:
    """One line when torchrun may restart this job on several nodes with the store shared across
    restarts (the agent's): there a restarted round can hang (docs/OPERATIONS.md); else None."""
    env = os.environ
    if env.get("LOCAL_WORLD_SIZE") in (None, str(world)) or env.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    if int(env.get("TORCHELASTIC_MAX_RESTARTS", "0") or 0) < 1:
        return None
    return ("train.py: warning: torchrun may restart this job on several nodes, and its store is shared across "
            "restarts, so a restart may hang: use --rdzv-backend c10d with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 set "
            "on every node (docs/OPERATIONS.md)")  # fmt: skip


def die_with_launcher() -> None:
    """Under torchrun, die with its agent: a SIGKILLed agent would otherwise leave its workers
    training on, writing into the run folder, with nobody to stop or restart them. The kernel
    sends SIGKILL when the parent dies (``prctl(PR_SET_PDEATHSIG)``, Linux): nothing more is
    written, the last checkpoint stays the resume point."""
    if sys.platform != "linux" or "TORCHELASTIC_RUN_ID" not in os.environ:
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(1, signal.SIGKILL, 0, 0, 0) != 0:  # PR_SET_PDEATHSIG = 1
        return
    if os.getppid() == 1:  # the agent died before the request: nobody will send the signal
        os.kill(os.getpid(), signal.SIGKILL)


class Data(NamedTuple):
    train: object  # DALILoader of (images, labels_a, labels_b, lam)
    val: object  # DALILoader of (images, labels)
    classes: list[str]
    fingerprint: str
    val_fingerprint: str
    mixer: LoopMixer | None  # --mix-in loop: mixes the plain batches in the training loop


def load_data(args, rank: int, world: int, device: torch.device, start_epoch: int, loader_state=None, fits=None, *,
              out: Path):  # fmt: skip
    """This rank's loaders, the class names, the data's fingerprints and the loop mixer. ``fits``
    (a resumed run's): ``fits(classes, fingerprint, val_fingerprint)`` raises when the data is not
    the checkpoint's, said before any loader is built on its saved state.

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
    kept = prepared_val_size(root)
    if rank == 0 and kept is not None and args.val_image_size > kept:
        print(f"warning: {root} was prepared for validation crops up to {kept} px (--val-size {kept}): "
              f"--val-image-size {args.val_image_size} upsamples its validation images; prepare with --val-size "
              f"{args.val_image_size} to validate at full detail", file=sys.stderr)  # fmt: skip
    fingerprint = train_split.fingerprint(root)
    val_fingerprint = val_split.fingerprint(args.val_data or root)
    if fits is not None:
        fits(train_split.classes, fingerprint, val_fingerprint)
    smallest = len(train_split) // world  # a rank's own images, before DALI pads its shard
    if smallest < args.batch_size:
        shares = f"{smallest}" if smallest == rank_share(len(train_split), world) else \
            f"{smallest} to {rank_share(len(train_split), world)}"  # fmt: skip
        raise UserError(
            f"--batch-size {args.batch_size} is larger than a rank's share of the training data: {shares} of "
            f"{len(train_split)} images over {world} process(es); lower --batch-size (or run fewer processes)"
        )
    dali_device = "gpu" if device.type == "cuda" else "cpu"
    # float16 images under either AMP dtype: half the bytes of float32 (bfloat16 autocast casts them)
    fp16 = dali_device == "gpu" and amp_dtype(args, device) is not None
    settings = loader_settings(args, train_split, device=dali_device, device_id=device.index, torch_device=device,
                               shard_id=rank, num_shards=world, fp16=fp16)  # fmt: skip
    mixing = dict(recipe=args.recipe if args.mix_in == "pipeline" else None, backend=args.cutmix_backend)  # loop: plain
    train = train_loader(settings, start_epoch=start_epoch, state=loader_state, last_batch="drop", **mixing)
    val = val_loader(settings.replace(data=val_split, image_size=args.val_image_size, size_schedule=None,
                                      classes=train_split.classes))  # fmt: skip
    mixer = None
    if args.recipe is not None and args.mix_in == "loop":
        mixer = LoopMixer(args.recipe, seed=derive_seed(args.seed, "loop_mixer", shard=rank))
        if loader_state and loader_state.get("mixer"):
            mixer.load_state(loader_state["mixer"])
    if rank == 0 and loader_state is None and start_epoch == 0:
        write_batch_png(out / "batch.png", settings, train_split.classes, mixer=mixer, **mixing)
    return Data(train, val, train_split.classes, fingerprint, val_fingerprint, mixer)


def decode_failed(e: DecodeFailed, what: str, kept_text: str) -> str:
    """The one line for a file DALI failed on: the file, what is wrong with it, what to do."""
    resume = f", then --resume; {kept_text}" if kept_text else ""
    if e.changed:
        return f"{e.path}: {e.reason}: restore it, or leave it out (the bad-file check does on the next start){resume}"
    why = f" ({e.reason})" if e.reason else ""
    return f"{e.path or what}: DALI failed to decode it{why}: run with --scan full to leave such files out{resume}"


def amp_dtype(args, device: torch.device) -> torch.dtype | None:
    """The autocast dtype: ``--amp-dtype`` on CUDA unless ``--no-amp``; None (float32) elsewhere."""
    return AMP_DTYPES[args.amp_dtype] if device.type == "cuda" and not args.no_amp else None


def steps_run(args, loader) -> int:
    """Training steps an epoch: the loader's, or ``--max-steps`` when fewer (the lr schedule counts these)."""
    return len(loader) if args.max_steps is None else min(len(loader), args.max_steps)


def build_optimizer(args, model: torch.nn.Module, world: int, steps_per_epoch: int):
    """SGD (:func:`dali_cutmix_trainer.engine.sgd`), lr scaled by global batch / 256, and its per-step schedule."""
    lr = args.lr * args.batch_size * world / 256
    optimizer = sgd(model, lr=lr, momentum=args.momentum, weight_decay=args.weight_decay)
    schedule = LRSchedule(args.lr_schedule, args.warmup_epochs, args.epochs, args.lr_step, steps_per_epoch)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def run(args, report=None) -> int:
    """The whole run: prepare, then train and evaluate epoch by epoch; the exit code. ``report``
    (:class:`dali_cutmix_trainer.cli.Report`) learns when this job holds the run folder."""
    rank, world, device = setup_distributed(args)
    if args.cutmix_backend is None and args.recipe is not None and args.mix_in == "pipeline":
        # The backend that runs, recorded as such: a resume names it as the first run ran it.
        args.cutmix_backend = default_backend("gpu" if device.type == "cuda" else "cpu", config=args.recipe)
    torch.manual_seed(args.seed)
    out = Path(args.output)
    try:
        load = functools.partial(load_data, args, rank, world, device, out=out)
        state, data, lock = open_run(args, rank, world, out, load)
    except ckpt.RunInUse as e:
        raise StopRun(f"--output {e}", 2) from e
    except DecodeFailed as e:  # met while drawing the first batch
        raise StopRun(decode_failed(e, "a file", ""), 2) from e
    except UserError as e:  # what the user can fix; any other exception is a bug, reported by main()
        raise StopRun(e, 2) from e
    if report is not None:
        report.own()
    fresh = state is None
    interrupted = False
    try:
        return fit(args, rank, world, device, out, state, data)
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        if lock is not None:
            # A fresh run stopped by Ctrl-C before its first checkpoint leaves nothing behind: no
            # lock file, no picture, no config (a run that failed keeps them with its error.log).
            tidy = interrupted and fresh and not ckpt.has_checkpoints(out)
            if tidy:
                for name in ckpt.RUN_LEFTOVERS:
                    (out / name).unlink(missing_ok=True)
            lock.release(tidy=tidy)
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def fit(args, rank: int, world: int, device: torch.device, out: Path, state: dict | None, data: Data) -> int:
    """Train and evaluate epoch by epoch from ``state`` (or afresh), saving as it goes; the exit code."""
    train, val, classes, fingerprint, val_fingerprint, mixer = data
    model = build_model(args.arch, len(classes), device)
    optimizer, scheduler = build_optimizer(args, model, world, steps_run(args, train))
    amp = amp_dtype(args, device)
    scaler = grad_scaler(device, amp)
    if state:  # prepare checked that it fits (flags, data, classes)
        scheduler = ckpt.restore(state, model, optimizer, scheduler, scaler, steps_per_epoch=steps_run(args, train))
    # Gradients as views of DDP's buckets (kept as views: train_step zeroes them in place under
    # DDP), so nothing is copied into the buckets each step. BN buffers are broadcast from rank 0
    # before each forward (DDP's default; docs/DESIGN.md says why).
    ddp = (
        torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, gradient_as_bucket_view=True
        )  # fmt: skip
        if world > 1
        else model
    )
    recipe = dataclasses.asdict(args.recipe) if args.recipe else None
    config = {
        **{k: v for k, v in vars(args).items() if k != "flags"},
        "recipe": recipe,
        "run_id": (state["config"].get("run_id") if state else None) or uuid.uuid4().hex[:12],
        "data_fingerprint": fingerprint,
        "val_fingerprint": val_fingerprint,
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
                on_disk_full(out, ckpt.check_space, out, next_checkpoint_bytes(out, model, optimizer))
            side = sizes.at(epoch, args.image_size) if sizes else args.image_size
            row = {"epoch": epoch, "image_size": side}
            # A step checkpoint carries the interrupted epoch's books: its row counts the whole epoch.
            resumed = state.get("books") if state and start_step and epoch == state["epoch"] else None
            books = EpochBooks(device, rank=rank, world=world, state=resumed, lr=optimizer.param_groups[0]["lr"])
            try:
                row |= train_epoch(ddp, train, optimizer, scheduler, scaler, epoch=epoch, device=device, stop=stop,
                                   books=books, world=world, start_step=start_step, max_steps=args.max_steps,
                                   mixer=mixer, smoothing=args.smoothing, amp=amp, show=rank == 0)  # fmt: skip
            except FloatingPointError as e:
                raise StopRun(f"{e}: lower --lr (or --warmup-epochs more); {kept(out)}", 1) from e
            except DecodeFailed as e:
                raise StopRun(decode_failed(e, "a file", kept(out)), 1) from e
            loaders = gather_states(train, mixer, world)
            save = dict(model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler, config=config,
                        keep=args.keep_checkpoints, loaders=loaders)  # fmt: skip
            if row.pop("stopped"):
                if rank == 0:
                    path = on_disk_full(out, ckpt.save, out, epoch, step=row["steps"], books=books.state(), **save)
                    print(f"saved {path}; continue with --resume", file=sys.stderr)
                return 128 + (stop.signal or signal.SIGTERM)  # a rank told by another: as if SIGTERM
            start_step = 0
            try:
                row |= evaluate(ddp, val, device, world, amp=amp)
            except DecodeFailed as e:
                raise StopRun(decode_failed(e, "a validation file", kept(out)), 1) from e
            if rank == 0:
                # The row, then at once the checkpoint (a kill between the two leaves the row to the
                # epoch a resume trains again, which replaces it), then the plot, which is neither.
                rows.append(row)
                ckpt.write_metrics(metrics_path, rows)
                on_disk_full(out, ckpt.save, out, epoch + 1, **save)
                plot_metrics(rows, out / "curves.png")
                print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
        return 0
    except BaseException:
        # Failing. torchrun SIGTERMs a rank as soon as a peer exits: ignored from here on, so that
        # this rank still writes its error line (cli.main restores the handler when it returns).
        previous[signal.SIGTERM] = signal.SIG_IGN
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
