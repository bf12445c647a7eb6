"""``train.py``'s command line: the flags, their checks (one-line errors, exit code 2), and the
end of every failure in one line (:func:`main`). The run itself is :mod:`dali_cutmix_trainer.run`, imported
once the flags are good: a bad flag or ``--help`` answers without loading torch, torchvision or
DALI."""

from __future__ import annotations

import argparse
import errno
import math
import os
import re
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

from dali_cutmix.errors import UserError
from pipelines.cli_flags import add_recipe_args, recipe_from_args, setting_flag
from pipelines.settings import SettingError, SizeSchedule
from pipelines.sources import SHARDS_NEED_VAL, kind_of

from .flags import loader_settings
from .model import ARCHS
from .run_folder import OS_ADVICE, StopRun

DESCRIPTION = "Train a torchvision ResNet with CutMix applied inside the DALI input pipeline."

# Flags whose default differs between the demo (no --data) and real data.
DEMO_DEFAULTS = {"epochs": 10, "batch_size": 128, "image_size": 32, "arch": "resnet18", "warmup_epochs": 0}
DATA_DEFAULTS = {"epochs": 90, "batch_size": 256, "image_size": 224, "arch": "resnet50", "warmup_epochs": 5}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    p.add_argument("--workers", type=int, default=None,
                   help="DALI CPU threads, training and validation (default: the cores per local rank)")  # fmt: skip
    add_recipe_args(p)  # the mixing flags, timm's names among them (pipelines.cli_flags)
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
    p.add_argument("--no-amp", action="store_true", help="GPU: train in float32 instead of autocast")
    p.add_argument("--amp-dtype", choices=("fp16", "bf16"), default="fp16",
                   help="GPU: autocast to float16 (GradScaler) or bfloat16 (Ampere and later, no scaler)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--demo-per-class", type=int, default=1000, help="demo: training images per class")
    p.add_argument("--scan", choices=("quick", "full", "off"), default="quick", help="check files before training")
    p.add_argument("--strict", action="store_true", help="stop on undecodable files instead of leaving them out")
    p.add_argument("--max-steps", type=int, default=None, help="stop each epoch after N steps (smoke tests)")
    args = p.parse_args(_values_that_look_like_flags(argv if argv is not None else sys.argv[1:]))
    # Each setting's flag as the user types it (``mixup_alpha``: ``--mixup``), for messages.
    args.flags = {a.dest: a.option_strings[0] for a in p._actions if a.option_strings}
    # The default folder is a scratch place: a fresh run there moves the earlier one aside.
    args.default_output = args.output is None
    args.output = args.output or "runs/latest"
    defaults = DEMO_DEFAULTS if args.data is None else DATA_DEFAULTS
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    check_args(p, args)
    return args


# Flags whose value may start with "-" (an epoch below 0, said by the flag's own check, not
# argparse's "expected one argument").
VALUE_FLAGS = ("--size-schedule", "--prob-schedule")


def _values_that_look_like_flags(argv: list[str]) -> list[str]:
    """``--size-schedule -1:32`` as ``--size-schedule=-1:32``, which argparse takes as a value."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] in VALUE_FLAGS and i + 1 < len(argv) and argv[i + 1].startswith("-"):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
            continue
        out.append(argv[i])
        i += 1
    return out


# Bounds of the numeric flags: (low, high, whether low itself is allowed); every one must be finite.
FLOAT_RANGES = {"lr": (0, None, False), "momentum": (0, 1, True), "weight_decay": (0, None, True),
                "warmup_epochs": (0, None, True), "smoothing": (0, 1, True)}  # fmt: skip


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """One-line errors (exit code 2) for input we can judge before any work starts."""
    for name, (low, high, closed) in FLOAT_RANGES.items():
        value, flag = getattr(args, name), "--" + name.replace("_", "-")
        below = value < low if closed else value <= low
        if not math.isfinite(value) or below or (high is not None and value >= high):
            bounds = f"{'>=' if closed else '>'} {low}" + (f" and < {high}" if high is not None else "")
            p.error(f"{flag} must be a finite number {bounds}, got {value}")
    if args.batch_size == 1:
        p.error("--batch-size 1: BatchNorm trains on each batch's statistics, which one image a process cannot "
                "give (and CutMix mixes within the batch): give --batch-size 2 or more")  # fmt: skip
    if not math.isfinite(args.lr * args.batch_size * 1024 / 256):  # the lr scaled by the global batch
        p.error(f"--lr {args.lr} overflows once scaled by the global batch: give a learning rate below 1e300")
    if args.demo_per_class < 1 or args.demo_per_class > 6000:
        p.error(f"--demo-per-class must be in [1, 6000] (Fashion-MNIST has 6,000 training images a class), got "
                f"{args.demo_per_class}")  # fmt: skip
    positive = {
        "--epochs": args.epochs,
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
    try:
        sizes = SizeSchedule.parse(args.size_schedule) if args.size_schedule is not None else None
    except SettingError as e:
        p.error(f"--size-schedule {e.reason}")
    if sizes is not None:
        if sizes.steps[-1][0] >= args.epochs:
            p.error(f"--size-schedule epoch {sizes.steps[-1][0]} is past the last epoch ({args.epochs - 1}) "
                    f"of --epochs {args.epochs}")  # fmt: skip
        args.size_schedule = sizes.text()  # one spelling: a resume compares the schedule, not its text
    if args.val_image_size is None:
        args.val_image_size = sizes.sizes()[-1] if sizes else args.image_size
    for side, flag in ((args.image_size, "--image-size"), (args.val_image_size, "--val-image-size")):
        try:  # the loader's own checks (pipelines.settings), said with the flags' names
            loader_settings(args, "demo", image_size=side)
        except SettingError as e:
            p.error(f"{flag if e.name == 'image_size' else setting_flag(e.name)} {e.reason}")
    if args.arch not in ARCHS:
        p.error(f"--arch must be one of {', '.join(ARCHS)}, got {args.arch!r}")
    args.recipe = recipe_from_args(p, args)
    kinds = {}
    for flag, spec in (("--data", args.data), ("--val-data", args.val_data)):
        if spec is not None:
            try:
                kinds[flag] = kind_of(spec)
            except UserError as e:
                p.error(f"{flag} {e}")
    if "--data" in kinds and kinds["--data"].needs_val and args.val_data is None:
        p.error(f"--data {args.data!r} {SHARDS_NEED_VAL.format(flag='--val-data')}")
    if args.device == "gpu" and not _cuda_available():
        p.error("--device gpu: CUDA is not available on this machine")
    if args.resume is not None and args.overwrite:
        p.error("--resume and --overwrite exclude each other: --resume continues the run in --output, --overwrite "
                "moves it aside and starts afresh")  # fmt: skip
    if args.amp_dtype == "bf16" and not args.no_amp and args.device != "cpu" and _cuda_available():
        if not _bf16_supported():
            p.error("--amp-dtype bf16: this GPU has no bfloat16 (it takes Ampere or later): use --amp-dtype fp16")
    if args.resume not in (None, "latest") and not Path(args.resume).is_file():
        p.error(f"--resume {args.resume!r}: no such checkpoint file")


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _bf16_supported() -> bool:
    import torch

    return torch.cuda.is_bf16_supported()


def main(argv=None) -> int:
    """Run, and end any failure in one line on stderr: what the user can fix says what to do; a
    bug says so and names the file holding its traceback (``DALI_CUTMIX_DEBUG=1`` prints it too);
    under torchrun each rank keeps its own traceback file, and a rank stopped by a peer's failure
    says so and names the peer's file."""
    args = parse_args(argv)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return _main(args)
    finally:
        # A failing run ignores SIGTERM until its line is out, an interrupted one a third SIGINT:
        # the caller's handlers come back (train.main called in a notebook keeps its Ctrl-C).
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def _main(args) -> int:
    report = Report(Path(args.output), rank=int(os.environ.get("RANK", "0") or 0))
    try:
        from .run import run  # the heavy part (torch, torchvision, DALI), once the flags are good

        return run(args, report)
    except StopRun as e:  # bad data, flags or checkpoints, a non-finite loss: the message says what to do
        debug_traceback()
        print(f"{prog()}: error: {e}", file=sys.stderr)
        return e.code
    except UserError as e:  # found once the run had started (a damaged metrics file, ...)
        debug_traceback()
        print(f"{prog()}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C before training started, or a second one during it
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a third one, during the exit (DALI's atexit): no traceback
        kept = "the checkpoints already written are kept (--resume continues from the last)" if report.checkpoints() \
            else "no checkpoint had been written yet"  # fmt: skip
        print(f"{prog()}: interrupted; {kept}", file=sys.stderr)
        return 130
    except OSError as e:  # the disk, the folder, the storage
        debug_traceback()
        if not e.strerror:
            return report.bug(e)
        advice = OS_ADVICE.get(e.errno, "fix that, then run again (--resume continues a run that had started)")
        if e.filename and not _under(e.filename, args.output):  # the data's, not the run folder's
            advice = DATA_ADVICE.get(e.errno, advice)
        print(f"{prog()}: error: {e.filename or args.output}: {e.strerror}: {advice}", file=sys.stderr)
        return 1
    except Exception as e:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # failed before training: torchrun's SIGTERM waits too
        return report.bug(e)


# What to do about an OSError on a path outside --output: it is the user's data.
DATA_ADVICE = {
    errno.EACCES: "it is your data, not the run folder: fix its permissions, then run again (--resume continues)",
    errno.EPERM: "it is your data, not the run folder: fix its permissions, then run again (--resume continues)",
    errno.ENOENT: "the data changed under the run: restore it (or run the bad-file check again), then --resume",
}


def _under(path: str, folder: str) -> bool:
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(folder))


def prog() -> str:
    """The command's name for its messages: ``train.py``, or ``dali-cutmix-train`` when installed."""
    name = Path(sys.argv[0]).name
    return name if name in ("train.py", "dali-cutmix-train") else "train.py"


def debug_traceback() -> None:
    """With ``DALI_CUTMIX_DEBUG`` set (to anything but 0 or empty), the traceback of the exception
    being handled, on stderr."""
    if os.environ.get("DALI_CUTMIX_DEBUG", "") not in ("", "0"):
        traceback.print_exc()


# What a collective raises on a rank whose peer failed or died (gloo, NCCL, the store).
PEER_FAILED = re.compile(r"Connection closed by peer|Connection reset by peer|Broken pipe|remote process exit|"
                         r"NCCL communicator was aborted|ProcessGroupNCCL.*(?:abort|timeout)|Socket Timeout|"
                         r"failed to recv|Connection refused", re.I)  # fmt: skip


class Report:
    """Where this process's failure is told: ``out/error.log`` (rank 0) or ``out/error.rankN.log``
    (rank N), once this job holds the run folder (:meth:`own`; a job refused by a live run's lock
    writes nothing there), else a temporary file."""

    def __init__(self, out: Path, rank: int = 0):
        self.out, self.rank, self.owned, self.since = out, rank, False, time.time()

    def own(self) -> None:
        """This job holds ``out`` (rank 0's lock, known to every rank)."""
        self.owned = True

    def log_name(self, rank: int) -> str:
        return "error.log" if rank == 0 else f"error.rank{rank}.log"

    def checkpoints(self) -> bool:
        from .checkpoint import latest

        return self.out.is_dir() and latest(self.out) is not None

    def bug(self, error: BaseException) -> int:
        """A bug, or a peer's failure seen here: one line that says which and names the file holding
        the traceback (this rank's, written now, and for a peer's failure the peer's). Returns 1."""
        debug_traceback()
        log = self.write("".join(traceback.format_exception(error)))
        first = (str(error).strip().splitlines() or [""])[0][:300]
        if self.peer_failed(error):
            peers = self.peer_logs()
            cause = f"its traceback is in {', '.join(map(str, peers))}" if peers else (
                "it left no traceback file: its own error line says why, else it was killed (a signal, the "
                "out-of-memory killer) or lost its node, which torchrun's report names")  # fmt: skip
            print(f"{prog()}: rank {self.rank} stopped because another rank failed first ({type(error).__name__}: "
                  f"{first[:120]}): {cause}; this rank's traceback is in {log}", file=sys.stderr)  # fmt: skip
            return 1
        print(f"{prog()}: internal error (a bug, not your input): {type(error).__name__}: {first}; the traceback is "
              f"in {log}: please report it with the command you ran", file=sys.stderr)  # fmt: skip
        return 1

    def write(self, text: str) -> Path:
        """``text`` in this rank's traceback file; the file's path."""
        try:
            if not self.owned or not self.out.is_dir():
                raise FileNotFoundError(self.out)
            log = self.out / self.log_name(self.rank)
            log.write_text(text)
            return log
        except OSError:
            fd, name = tempfile.mkstemp(prefix=f"dali-cutmix-error-rank{self.rank}-", suffix=".log")
            with os.fdopen(fd, "w") as f:
                f.write(text)
            return Path(name)

    def peer_failed(self, error: BaseException) -> bool:
        """Whether ``error`` is a collective's failure because another rank failed or died."""
        if int(os.environ.get("WORLD_SIZE", "1") or 1) < 2:
            return False
        dist = sys.modules.get("torch.distributed")
        if dist is not None and isinstance(error, getattr(dist, "DistError", ())):
            return True
        return bool(PEER_FAILED.search(str(error)))

    def peer_logs(self) -> list[Path]:
        """Other ranks' traceback files written during this run (theirs are the cause)."""
        if not self.out.is_dir():
            return []
        own = self.log_name(self.rank)
        found = [p for p in self.out.glob("error*.log") if p.name != own and p.stat().st_mtime >= self.since - 1]
        return sorted(found)
