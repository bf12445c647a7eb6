"""Checkpoints and run records that survive crashes (:mod:`dali_cutmix.files`' atomic writes),
safe loads (``torch.load(weights_only=True)``: no pickled code runs), the lock on a live run's
folder and the free-space check."""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

from dali_cutmix.errors import UserError
from dali_cutmix.files import FolderInUse, FolderLock, atomic_write, lock_holder

# checkpoint_0003.pt: 3 epochs done; checkpoint_0003_step000120.pt: interrupted 120 steps into
# epoch index 3. Sorting by (epoch, step) puts the newest last.
CHECKPOINT = re.compile(r"^checkpoint_(\d+)(?:_step(\d+))?\.pt$")
# What atomic_write leaves behind when the process dies mid-write (SIGKILL, power loss).
PARTIAL = re.compile(
    r"^\.(checkpoint_\d+(?:_step\d+)?\.pt|config\.json|metrics\.jsonl|curves\.png|batch\.png)"
    r"\..+\.tmp$"
)
# With the checkpoints, what makes a folder a run: config.json alone is a run that saved nothing.
RUN_FILES = ("metrics.jsonl",)
LOCK = ".lock"  # flock'ed by the live run's (rank 0's) process; its text names that process


class CheckpointError(UserError):
    """A checkpoint that does not fit this run: another architecture, flags, data or classes."""


class UnreadableCheckpoint(CheckpointError):
    """A file that is not a loadable dali-cutmix checkpoint (truncated, foreign, garbage)."""


def remove_partial(out: Path) -> list[Path]:
    """Delete the temporary files of writes that never finished; returns them."""
    if not Path(out).is_dir():
        return []
    partial = [p for p in Path(out).iterdir() if PARTIAL.match(p.name)]
    for p in partial:
        p.unlink(missing_ok=True)
    return partial


class RunInUse(UserError):
    """The run folder ``out`` is held by a live process, ``holder``."""

    def __init__(self, out: Path, holder: str):
        self.out, self.holder = out, holder
        super().__init__(f"{out} is in use by a live run ({holder}): wait for it to end, or choose another folder")


def live_run(out: Path) -> str | None:
    """Who holds ``out``'s lock (:func:`dali_cutmix.files.lock_holder`), or None."""
    return lock_holder(Path(out) / LOCK)


class RunLock(FolderLock):
    """The lock on a run folder, ``out/.lock`` (:class:`dali_cutmix.files.FolderLock`), held for
    the run: ``RunInUse`` if a live run holds it. Creates ``out``."""

    def __init__(self, out: Path):
        try:
            super().__init__(Path(out) / LOCK)
        except FolderInUse as e:
            raise RunInUse(out, e.holder) from None


def checkpoint_bytes(model, optimizer) -> int:
    """What a checkpoint of ``model`` and ``optimizer`` (or None) takes on disk, near enough: their
    tensors and a MiB for the rest."""
    import torch

    def size(obj) -> int:
        if isinstance(obj, torch.Tensor):
            return obj.numel() * obj.element_size()
        if isinstance(obj, dict):
            return sum(size(v) for v in obj.values())
        if isinstance(obj, (list, tuple)):
            return sum(size(v) for v in obj)
        return 0

    return size(model.state_dict()) + (size(optimizer.state_dict()) if optimizer is not None else 0) + (1 << 20)


def check_space(out: Path, need: int) -> None:
    """``OSError(ENOSPC)`` naming ``out`` when its disk has less than ``need`` bytes (plus a tenth)
    free: said before an epoch is trained whose checkpoint could not be written."""
    import errno

    free = shutil.disk_usage(out).free
    if free < need * 1.1:
        raise OSError(errno.ENOSPC, f"{free / 2**20:.0f} MiB free, the next checkpoint takes about "
                      f"{need / 2**20:.0f} MiB", str(out))  # fmt: skip


# What a run writes besides its checkpoints: a start that wrote no checkpoint leaves only these.
RUN_LEFTOVERS = ("metrics.jsonl", "config.json", "curves.png", "batch.png", "bad_files_train.txt",
                 "bad_files_val.txt", "unreadable_files_train.txt", "unreadable_files_val.txt")  # fmt: skip


def has_checkpoints(out: Path) -> bool:
    """Whether ``out`` holds a checkpoint file (loadable or not)."""
    return bool(_checkpoints(out))


def remove_leftovers(out: Path) -> list[Path]:
    """Delete what a start that wrote no checkpoint left in ``out`` (its rows, config, pictures,
    listings and error files); returns them. Only for a folder with no checkpoint."""
    if not Path(out).is_dir() or has_checkpoints(out):
        return []
    found = [Path(out) / n for n in RUN_LEFTOVERS if (Path(out) / n).exists()] + sorted(Path(out).glob("error*.log"))
    for p in found:
        p.unlink(missing_ok=True)
    return found


def holds_run(out: Path) -> bool:
    """Whether ``out`` holds (part of) a training run: its metrics or a checkpoint."""
    out = Path(out)
    return out.is_dir() and (any((out / name).exists() for name in RUN_FILES) or bool(_checkpoints(out)))


def move_aside(out: Path) -> Path:
    """Rename a run folder to the first free ``<out>.old-N``; returns the new name."""
    out = Path(out)
    n = 1
    while (target := out.with_name(f"{out.name}.old-{n}")).exists():
        n += 1
    out.rename(target)
    return target


def write_metrics(path: Path, rows: list[dict]) -> None:
    atomic_write(path, lambda f: f.write("".join(json.dumps(r) + "\n" for r in rows).encode()))


def read_metrics(path: Path, before_epoch: int) -> list[dict]:
    """The rows of epochs before ``before_epoch`` (a resumed run drops what it will redo)."""
    if not Path(path).is_file():
        return []
    rows = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("epoch"), int):
                raise ValueError("not an epoch's row")
        except ValueError as e:
            raise UserError(f"{path}:{n} is damaged ({str(e).splitlines()[0]}): remove that line (the checkpoints "
                            f"are what resumes the run), then --resume again") from e  # fmt: skip
        rows.append(row)
    return [r for r in rows if r["epoch"] < before_epoch]


def save(
    out: Path,
    epoch: int,
    model,
    optimizer,
    scheduler,
    scaler,
    config: dict,
    keep: int,
    step: int = 0,
    loaders: list[dict] | None = None,
    books: dict | None = None,
) -> Path:
    """Write the state after ``epoch`` complete epochs and ``step`` more steps; prune old ones.
    ``books``: a step checkpoint's running figures of its epoch (``EpochBooks.state``).

    Epoch checkpoints beyond the newest ``keep`` go, and so do interrupt checkpoints that a later
    one has superseded.
    """
    import torch

    state = {
        "epoch": epoch,
        "step": step,
        "arch": config["arch"],
        "num_classes": config["num_classes"],
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": {"last_epoch": scheduler.last_epoch},  # the step count; the schedule comes from the flags
        "scaler": scaler.state_dict() if scaler is not None else None,
        "torch_rng": torch.get_rng_state(),
        "config": config,
        "loaders": loaders,  # each rank's DALILoader.state(): resumes the data stream exactly
        "books": books,  # the interrupted epoch's loss sum, images and times: its row as if uninterrupted
    }
    name = f"checkpoint_{epoch:04d}.pt" if step == 0 else f"checkpoint_{epoch:04d}_step{step:06d}.pt"
    path = Path(out) / name
    # Serialised in memory first, so a full disk fails the file write itself with OSError(ENOSPC)
    # (torch.save straight to a full disk fails with a RuntimeError that does not say so).
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write(path, lambda f: f.write(buffer.getbuffer()))
    found = _checkpoints(out)
    epochs = [p for (e, s), p in found if s == 0]
    stale = [p for (e, s), p in found if s and (e, s) < (epoch, step)]
    for old in epochs[:-keep] + stale:
        old.unlink(missing_ok=True)
    return path


def _checkpoints(out: Path) -> list[tuple[tuple[int, int], Path]]:
    """[((epoch, step), path)] sorted oldest first."""
    if not Path(out).is_dir():
        return []
    found = [(m, p) for p in Path(out).iterdir() if (m := CHECKPOINT.match(p.name))]
    return sorted(((int(m.group(1)), int(m.group(2) or 0)), p) for m, p in found)


def latest(out: Path) -> Path | None:
    found = sorted(_checkpoints(out))
    return found[-1][1] if found else None


def newest_loadable(out: Path, arch: str, say=print) -> tuple[Path, dict] | None:
    """The newest checkpoint in ``out`` that loads, skipping (and saying so) any that does not."""
    for _, path in reversed(_checkpoints(out)):
        try:
            return path, load(path, arch)
        except UnreadableCheckpoint as e:  # a readable one of another run is an error, not skipped
            say(f"skipping {path}: unreadable ({str(e).split(': ', 1)[-1][:120]}); trying the one before")
    return None


def load(path: Path, arch: str) -> dict:
    """Load safely and check the architecture; raises :class:`CheckpointError` naming the file."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file
        first = (str(e).strip().splitlines() or ["?"])[0]
        if first.startswith("Weights only load failed"):  # torch's advice (load unsafely) is not ours to give
            first = "it holds objects other than tensors and plain data, which a safe load refuses"
        else:
            first = f"{type(e).__name__}: {first}"
        raise UnreadableCheckpoint(f"checkpoint {path} cannot be loaded ({first}): it is truncated, damaged or "
                                   f"not a dali-cutmix checkpoint") from e  # fmt: skip
    if not isinstance(state, dict) or "model" not in state or "epoch" not in state:
        raise UnreadableCheckpoint(f"checkpoint {path} is not a dali-cutmix training checkpoint")
    state.setdefault("step", 0)
    state.setdefault("loaders", None)
    state.setdefault("books", None)
    if state["arch"] != arch:
        raise CheckpointError(f"checkpoint {path} is a {state['arch']}, but the model asked for is a {arch}")
    return state


def check_flags(saved: dict, settings: dict, path: Path, *, may_change, skip, name=str) -> None:
    """A one-line :class:`CheckpointError` naming (by ``name(key)``) the first setting that differs from the run
    ``saved`` describes (a checkpoint's config), other than those that ``may_change`` on resume or
    are ``skip``ped."""
    for key, value in settings.items():
        if key in may_change or key in skip or key not in saved:
            continue
        if json.dumps(saved[key], sort_keys=True, default=str) != json.dumps(value, sort_keys=True, default=str):
            allowed = ", ".join(name(k) for k in may_change)
            raise CheckpointError(
                f"{path} was trained with {name(key)} {_plain(saved[key])!r}, this run has {_plain(value)!r}; on "
                f"resume only "
                f"{allowed} may change"
            )


def _plain(value):
    """``value`` as it reads back from JSON (a tuple as a list), so that both sides print alike."""
    return json.loads(json.dumps(value, default=str))


def check_data(state: dict, path: Path, num_classes: int, fingerprint: str, val_fingerprint: str | None = None) -> None:
    """A one-line :class:`CheckpointError` when the data is not what the checkpoint was trained on:
    first the class count, then the fingerprint of files, labels and classes (``Split.fingerprint``),
    then the validation data's (rows of one run must score the same images)."""
    if state["num_classes"] != num_classes:
        raise CheckpointError(f"checkpoint has {state['num_classes']} classes, but the data has {num_classes}")
    saved = state["config"]["data_fingerprint"]
    if saved != fingerprint:
        raise CheckpointError(
            f"{path} was trained on other data ({saved.split(':')[0]} training files, "
            f"now {fingerprint.split(':')[0]}, or other names or labels; a bad-file check that now leaves out other "
            f"files counts as other data)"
        )
    saved_val = state["config"].get("val_fingerprint")
    if saved_val is not None and val_fingerprint is not None and saved_val != val_fingerprint:
        raise CheckpointError(
            f"{path} was validated on other data ({saved_val.split(':')[0]} validation images, now "
            f"{val_fingerprint.split(':')[0]}, or other names or labels): --val-data may not change on resume, or "
            f"metrics.jsonl would mix two validation sets"
        )


def restore(state: dict, model, optimizer, scheduler, scaler, *, steps_per_epoch: int):
    """Load the weights, optimizer and scaler state (:func:`check_data` says whether they fit);
    return the lr schedule built from this run's flags (``scheduler``: its total, warmup and lr
    scaling) as a new ``LambdaLR`` at the checkpoint's step, which sets the optimizer's lr.
    ``steps_per_epoch``: the steps an epoch runs (the loader's, or ``--max-steps`` when fewer)."""
    import torch

    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    done = state["epoch"] * steps_per_epoch + state["step"]  # >= 1: no checkpoint is written at step 0
    for group, base in zip(optimizer.param_groups, scheduler.base_lrs):
        group["initial_lr"] = base
    # Built at last_epoch = done - 1, the constructor's own first step lands on `done`.
    resumed = torch.optim.lr_scheduler.LambdaLR(optimizer, scheduler.lr_lambdas, last_epoch=done - 1)
    if scaler is not None and state["scaler"] is not None:
        scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["torch_rng"])
    return resumed
