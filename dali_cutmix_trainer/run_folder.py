"""The run folder's policy: what a start finds there (a live run, a run to resume or to move
aside, writes that never finished), the lock held for the run, and what a write that fails
(a full disk) tells the user. The files themselves are :mod:`dali_cutmix_trainer.checkpoint`'s."""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path

from dali_cutmix.errors import UserError

from . import checkpoint as ckpt

# What may differ between a run and its resumption (the lr schedule is rebuilt from the flags and
# continues from the checkpoint's step); every other flag must match the checkpoint's.
RESUMABLE = ("epochs", "lr", "lr_schedule", "lr_step", "warmup_epochs", "workers", "keep_checkpoints",
             "scan", "strict", "max_steps", "device", "no_amp", "amp_dtype", "val_image_size")  # fmt: skip
# Where, how, or checked another way (the data by its fingerprint).
NOT_FLAGS = ("output", "resume", "overwrite", "data", "val_data", "recipe", "default_output", "flags")
# Files a start writes into a folder it made: a failed start removes them.
START_FILES = ("batch.png", "bad_files_train.txt", "bad_files_val.txt", "unreadable_files_train.txt",
               "unreadable_files_val.txt")  # fmt: skip


class StopRun(Exception):
    """Why the run stops early, in one line, with the exit code: 2 for bad data, flags or
    checkpoints (found before anything is written), 1 for a non-finite loss or a failed write."""

    def __init__(self, error: Exception | str, code: int):
        super().__init__(str(error))
        self.code = code


def open_run(args, rank: int, world: int, out: Path, load: Callable):
    """``(state, data, lock)``: the checkpoint to resume from (or None), the data that ``load``
    gives, and (rank 0) the lock on ``out``.

    args: the trainer's flags (``resume``, ``arch``, ``epochs``, ``overwrite``, ``default_output``).
    rank, world: this process's rank and the world size.
    out: the run folder.
    load: ``load(start_epoch, loader_state, fits)`` returns the data for the epoch the run starts at,
        calling ``fits(classes, fingerprint, val_fingerprint)`` (a resumed run's check of the data
        against the checkpoint's) before it builds the loaders.
    Raises :class:`UserError` on bad input, before anything in ``out`` changes.
    """
    state, loader_state, lock, path = None, None, None, None
    say = print if rank == 0 else lambda *a, **k: None
    if rank == 0:
        holder = ckpt.live_run(out)  # first: a live run's folder is neither resumed nor moved aside
        if holder:
            raise ckpt.RunInUse(out, holder)
        for partial in ckpt.remove_partial(out):
            say(f"removed {partial}, left by a write that never finished")
    if args.resume == "latest" and not ckpt.has_checkpoints(out):
        # One command starts and restarts (torchrun --max-restarts, Slurm --requeue): nothing to
        # resume is a fresh start, after what a start killed before its first checkpoint left.
        if rank == 0:
            for leftover in ckpt.remove_leftovers(out):
                say(f"removed {leftover}, left by a start that wrote no checkpoint")
        say(f"--resume: {out} holds no checkpoint yet: starting the run afresh")
    elif args.resume:
        if args.resume == "latest":
            found = ckpt.newest_loadable(out, args.arch, say=say)
            if found is None:
                raise UserError(f"--resume: no checkpoint in {out} loads (they are listed above): move them away to "
                                f"start afresh, or give one with --resume PATH")  # fmt: skip
            path, state = found
        else:
            path = Path(args.resume)
            state = ckpt.load(path, args.arch)
        moot = ("demo_per_class",) if args.data is not None else ()  # the demo's size, with --data given
        moot += ("cutmix_backend",) if args.recipe is None else ()  # no mixing: --no-cutmix says it
        recorded = dict(state.get("config") or {})
        if recorded.get("cutmix_backend", "") is None:  # a run that recorded no backend ran the default one
            recorded["cutmix_backend"] = args.cutmix_backend
        if isinstance(recorded.get("prob_schedule"), dict):  # older runs recorded {epoch: prob}
            recorded["prob_schedule"] = sorted([int(epoch), p] for epoch, p in recorded["prob_schedule"].items())
        try:
            flag = getattr(args, "flags", {})
            ckpt.check_flags(recorded, vars(args), path, may_change=RESUMABLE, skip=NOT_FLAGS + moot,
                             name=lambda key: flag.get(key, "--" + key.replace("_", "-")))  # fmt: skip
        except UserError as e:
            raise UserError(f"--resume: {e}") from e
        if args.epochs <= state["epoch"]:
            raise UserError(f"--epochs {args.epochs} ends before the checkpoint {path}, which is at epoch "
                            f"{state['epoch']}: give --epochs above {state['epoch']} to train on")  # fmt: skip
        saved = state["loaders"] or []
        loader_state = saved[rank] if len(saved) == world else None
        exact = (
            "the data stream exactly" if loader_state else ("a fresh data order (no loader state for this world size)")
        )
        say(f"resuming from {path}: epoch {state['epoch']}, step {state['step']}, with {exact}")
    if not args.resume and ckpt.holds_run(out) and not (args.overwrite or args.default_output):
        raise UserError(
            f"--output {out} already holds a run: continue it with --resume, or start afresh with --overwrite "
            f"(the old run is moved to {out}.old-N)"
        )
    if not state and ckpt.holds_run(out) and rank == 0:  # --overwrite, or the default folder
        say(f"moved the earlier run in {out} to {ckpt.move_aside(out)}")
    fresh = not out.exists()
    if rank == 0:  # held for the run (released when it ends, or by the OS); under torchrun rank 0 holds it
        lock = ckpt.RunLock(out)

    def fits(classes, fingerprint, val_fingerprint) -> None:
        try:
            ckpt.check_data(state, path, len(classes), fingerprint, val_fingerprint)
        except UserError as e:
            raise UserError(f"--resume: {e}") from e

    try:
        data = load(state["epoch"] if state else 0, loader_state, fits if state else None)
    except BaseException as e:
        if lock is not None:
            if fresh:  # what the start-up wrote into the folder it made: a failed start leaves no trace,
                for name in START_FILES:  # but the listing its error line points to
                    if name not in str(e):
                        (out / name).unlink(missing_ok=True)
            lock.release(tidy=fresh)
        raise
    return state, data, lock


def next_checkpoint_bytes(out: Path, model, optimizer) -> int:
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


def on_disk_full(out: Path, write: Callable, *args, **kwargs):
    """``write(*args, **kwargs)``; a full disk (or another OSError) stops the run in one line naming
    the file and the last good checkpoint, which the atomic writes leave intact for ``--resume``."""
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
