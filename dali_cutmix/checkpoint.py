"""Checkpoints and run records that survive crashes: atomic writes, safe loads.

Every file is written to a temporary name in the same folder and renamed over the target, so a
reader sees the old file or the new one, never half of one. Checkpoints load with
``torch.load(weights_only=True)``: no pickled code runs.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

import torch

# checkpoint_0003.pt: 3 epochs done; checkpoint_0003_step000120.pt: interrupted 120 steps into
# epoch index 3. Sorting by (epoch, step) puts the newest last.
CHECKPOINT = re.compile(r"^checkpoint_(\d+)(?:_step(\d+))?\.pt$")


def atomic_write(path: Path, write) -> None:
    """Call ``write(file)`` on a temporary file, fsync it, then rename it to ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2, sort_keys=True).encode()))


def write_metrics(path: Path, rows: list[dict]) -> None:
    atomic_write(path, lambda f: f.write("".join(json.dumps(r) + "\n" for r in rows).encode()))


def read_metrics(path: Path, before_epoch: int) -> list[dict]:
    """The rows of epochs before ``before_epoch`` (a resumed run drops what it will redo)."""
    if not Path(path).is_file():
        return []
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
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
) -> Path:
    """Write the state after ``epoch`` complete epochs and ``step`` more steps; prune old ones.

    Epoch checkpoints beyond the newest ``keep`` go, and so do interrupt checkpoints that a later
    one has superseded.
    """
    state = {
        "epoch": epoch,
        "step": step,
        "arch": config["arch"],
        "num_classes": config["num_classes"],
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "torch_rng": torch.get_rng_state(),
        "config": config,
        "loaders": loaders,  # each rank's DALILoader.state(): resumes the data stream exactly
    }
    name = f"checkpoint_{epoch:04d}.pt" if step == 0 else f"checkpoint_{epoch:04d}_step{step:06d}.pt"
    path = Path(out) / name
    atomic_write(path, lambda f: torch.save(state, f))
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


def load(path: Path, arch: str) -> dict:
    """Load safely and check the architecture; raises ``ValueError`` naming the file."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file
        raise ValueError(f"checkpoint {path} cannot be loaded: {type(e).__name__}: {e}") from e
    if not isinstance(state, dict) or "model" not in state or "epoch" not in state:
        raise ValueError(f"checkpoint {path} is not a dali-cutmix training checkpoint")
    state.setdefault("step", 0)
    state.setdefault("loaders", None)
    if state["arch"] != arch:
        raise ValueError(f"checkpoint {path} is a {state['arch']}, but --arch is {arch}")
    return state


def restore(state: dict, model, optimizer, scheduler, scaler, *, num_classes: int) -> None:
    if state["num_classes"] != num_classes:
        raise ValueError(f"checkpoint has {state['num_classes']} classes, but the data has {num_classes}")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state["scaler"] is not None:
        scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["torch_rng"])
