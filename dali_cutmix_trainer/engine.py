"""The training engine: one step (shared by train.py and the profiler, with NVTX ranges for
Nsight Systems), one epoch of steps, evaluation, the lr schedule, and the stop signal that ranks
agree on.

The epoch's books (loss sum, non-finite flag) stay on the device and are read once every
``EpochBooks.every`` steps, folded into the ranks' stop agreement. On a GPU each phase (``data``,
``forward``, ``backward``, ``optimizer``) is an NVTX range, so ``nsys profile python train.py ...``
shows where a step's time goes next to DALI's own ranges.
"""

from __future__ import annotations

import math
import signal
import sys
import time
from contextlib import contextmanager, nullcontext

import torch
import torch.distributed as dist

from dali_cutmix.loss import mixed_cross_entropy


@contextmanager
def nvtx(name: str, enabled: bool):
    """An NVTX range on CUDA builds with a GPU in use; nothing otherwise."""
    if not enabled:
        yield
        return
    torch.cuda.nvtx.range_push(name)
    try:
        yield
    finally:
        torch.cuda.nvtx.range_pop()


AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Autocast to ``dtype`` (float16 or bfloat16) on CUDA; a no-op elsewhere or with None."""
    return torch.autocast("cuda", dtype=dtype) if dtype is not None and device.type == "cuda" else nullcontext()


def grad_scaler(device: torch.device, dtype: torch.dtype | None):
    """A GradScaler for float16 on CUDA; None otherwise (bfloat16 keeps float32's range: no scaling,
    no inf check, no skipped steps)."""
    return torch.amp.GradScaler("cuda") if device.type == "cuda" and dtype == torch.float16 else None


def train_step(model, optimizer, scaler, batch, *, smoothing: float = 0.0, amp: torch.dtype | None = None,
               keep_grads: bool = False):  # fmt: skip
    """Forward, mixed loss, backward and optimizer step on ``(images, labels_a, labels_b, lam)``.

    ``amp``: the autocast dtype on CUDA (float16 with ``scaler``, a ``torch.amp.GradScaler``;
    bfloat16 without), or None for float32; without ``amp``, float16 when ``scaler`` is given.
    The images come channels_last from the pipeline (``contiguous`` below copies nothing then).
    ``keep_grads``: zero the gradients in place rather than dropping them (under DDP with
    ``gradient_as_bucket_view``, dropping them would undo the views each step).
    Returns the detached loss; nothing here waits for the device.
    """
    images, labels_a, labels_b, lam = batch
    on_gpu = images.is_cuda
    if amp is None and scaler is not None:
        amp = torch.float16
    if on_gpu:
        images = images.contiguous(memory_format=torch.channels_last)
    with nvtx("forward", on_gpu), autocast(images.device, amp):
        loss = mixed_cross_entropy(model(images), labels_a, labels_b, lam, smoothing)
    optimizer.zero_grad(set_to_none=not keep_grads)
    with nvtx("backward", on_gpu):
        (scaler.scale(loss) if scaler is not None else loss).backward()
    with nvtx("optimizer", on_gpu):
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
    return loss.detach()


def sgd(model: torch.nn.Module, *, lr: float, momentum: float, weight_decay: float) -> torch.optim.SGD:
    """SGD with nesterov momentum and no decay on BN and biases; fused on CUDA, where it also lets
    ``GradScaler.step`` skip its per-step read of the inf check back to the host."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = next(model.parameters()).is_cuda
    optimizer = torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=True, fused=fused or None)
    # Momentum starts at zero, as it would be made on the first step (buf = 0.9 * 0 + grad = grad):
    # the fused kernel fills fresh buffers with torch.empty_like and skips writing them when
    # GradScaler finds an inf, so an overflowing first step would leave garbage momentum behind.
    for group in optimizer.param_groups:
        for p in group["params"]:
            optimizer.state[p]["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    return optimizer


def train_epoch(
    model,
    loader,
    optimizer,
    scheduler,
    scaler,
    *,
    epoch: int,
    device: torch.device,
    stop: Stop,
    books: EpochBooks,
    world: int = 1,
    start_step: int = 0,
    max_steps: int | None = None,
    smoothing: float = 0.0,
    amp: torch.dtype | None = None,
    mixer=None,
    show: bool = True,
) -> dict:
    """Steps ``start_step..`` of one epoch (at most ``max_steps``), kept in ``books`` (which a
    step checkpoint saves, so a resumed epoch's row is the uninterrupted one's); returns the
    epoch's row so far (:meth:`EpochBooks.row`) and whether every rank agreed to stop before its
    end (``"stopped"``). ``mixer``: a :class:`dali_cutmix.loop.LoopMixer` that mixes the plain
    batches on their device, with the recipe's chance of mixing in ``epoch``. A non-finite loss on
    any rank raises ``FloatingPointError`` on every rank at the same step."""
    from tqdm import tqdm

    model.train()
    on_gpu = device.type == "cuda"
    total = len(loader) if max_steps is None else min(len(loader), max_steps)
    step = start_step
    bar = tqdm(total=total, initial=start_step, desc=f"epoch {epoch}", disable=not show, unit="batch", mininterval=1.0)
    batches = iter(loader)
    start = time.perf_counter()
    stopped = False
    try:  # an error ends the bar first, so that its message starts on a line of its own
        while step < total:
            if step > start_step and step % books.every == 0:  # the interval's one read and the ranks' agreement
                stopped = books.agree(stop, epoch)
                bar.set_postfix(loss=f"{books.last_loss:.3f}", img_s=f"{books.rate(start):.0f}")
            elif world == 1:
                stopped = bool(stop.signal)  # alone: the host flag, every step, for free
            if stopped:
                break
            tick = time.perf_counter()
            with nvtx("data", on_gpu):
                batch = next(batches, None)
            books.waited += time.perf_counter() - tick
            if batch is None:
                break
            if mixer is not None:
                batch = mixer(batch[0], batch[1], epoch=epoch)
            loss = train_step(model, optimizer, scaler, batch, smoothing=smoothing, amp=amp, keep_grads=world > 1)
            scheduler.step()
            books.add(loss, step, len(batch[0]))
            step += 1
            bar.update(1)
    finally:
        bar.close()
    stopped = books.agree(stop, epoch) or stopped  # every rank leaves the epoch knowing the same
    books.seconds += time.perf_counter() - start
    if not stopped:
        loader.finish_epoch()  # cut short by max_steps: the state saved next is at the epoch's end
    return books.row() | {"steps": step, "stopped": stopped}


class EpochBooks:
    """One epoch's running figures, for its metrics row and its stop: the loss sum and the first
    non-finite step live on the device (each step adds to them with no host sync: constant work
    whatever the epoch's length); the steps, images and times on the host. Every ``every`` steps
    they are read once (one non-blocking copy into pinned memory on CUDA), folded into the ranks'
    stop agreement (:meth:`agree`). :meth:`state` is what a step checkpoint saves of them.

    device: where the losses are. every: steps between reads. rank, world: this process's place.
    state: a saved :meth:`state` (a resumed epoch), or None. lr: the epoch's first lr (its row's).
    """

    def __init__(self, device: torch.device, *, every: int = 20, rank: int = 0, world: int = 1,
                 state: dict | None = None, lr: float | None = None):  # fmt: skip
        s = state or {}
        self.device, self.every, self.rank, self.world = device, every, rank, world
        self.loss_sum = torch.tensor(float(s.get("loss_sum", 0.0)), dtype=torch.float64, device=device)
        self.first_bad = torch.tensor(-1, dtype=torch.int64, device=device)  # step of the first non-finite loss
        self._last = torch.zeros((), dtype=torch.float32, device=device)
        self.last_loss = float("nan")
        self.steps, self.images = int(s.get("steps", 0)), int(s.get("images", 0))
        self.seconds, self.waited = float(s.get("seconds", 0.0)), float(s.get("data_wait_s", 0.0))
        self.lr = s.get("lr", lr)
        self.sum = float(s.get("loss_sum", 0.0))  # the device sum as last read
        pinned = device.type == "cuda"
        self._host = torch.empty(world + 3, dtype=torch.float64, pin_memory=pinned)

    def add(self, loss: torch.Tensor, step: int, images: int) -> None:
        """One step's loss (a device scalar): added on the device, nothing read back."""
        loss = loss.detach().float()
        self.loss_sum += loss
        self.first_bad = torch.where((self.first_bad < 0) & ~torch.isfinite(loss), step, self.first_bad)
        self._last = loss
        self.steps += 1
        self.images += images

    def agree(self, stop: Stop, epoch: int) -> bool:
        """Read the books (one copy to the host) and agree with the other ranks (one all-reduce
        under DDP, every rank calling at the same step): whether any rank was told to stop. A
        non-finite loss on any rank raises ``FloatingPointError`` naming the step (and rank) on
        every rank alike."""
        world = self.world
        flags = torch.full((world + 1,), -1.0, dtype=torch.float64, device=self.device)
        flags[0] = float(bool(stop.signal))
        flags[1 + self.rank] = self.first_bad.double()
        if world > 1:
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        packed = torch.cat([flags, self.loss_sum.view(1), self._last.double().view(1)])
        self._host.copy_(packed, non_blocking=True)
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()  # the interval's one wait for the device
        values = self._host.tolist()
        self.sum, self.last_loss = values[-2], values[-1]
        bad = [(rank, int(step)) for rank, step in enumerate(values[1 : world + 1]) if step >= 0]
        if bad:
            rank, step = min(bad, key=lambda b: b[1])
            where = f" on rank {rank}" if world > 1 else ""
            raise FloatingPointError(f"non-finite loss at epoch {epoch}, step {step}{where}")
        return values[0] > 0

    def rate(self, start: float) -> float:
        return self.images / max(1e-9, self.seconds + time.perf_counter() - start)

    def row(self) -> dict:
        """The epoch's metrics so far (as last read): mean loss, speed, time, data wait, images, lr."""
        return {
            "train_loss": self.sum / self.steps if self.steps else float("nan"),
            "images_per_s": self.images / self.seconds if self.seconds else 0.0,
            "epoch_seconds": self.seconds,
            "data_wait_s": self.waited,
            "train_images": self.images,
            "lr": self.lr,
        }

    def state(self) -> dict:
        """Plain data for a step checkpoint (as last read by :meth:`agree`)."""
        return {"loss_sum": self.sum, "steps": self.steps, "images": self.images, "seconds": self.seconds,
                "data_wait_s": self.waited, "lr": self.lr}  # fmt: skip


def gather_states(loader, mixer, world: int) -> list[dict]:
    """Every rank's loader (and loop mixer) state, in rank order (a collective: all ranks call it
    together)."""
    mine = loader.state() | ({"mixer": mixer.state()} if mixer is not None else {})
    states = [None] * world
    if world > 1:
        dist.all_gather_object(states, mine)
    else:
        states[0] = mine
    return states


class LRSchedule:
    """Per-step lr factor: linear warmup, then cosine to zero or x0.1 every ``lr_step`` epochs."""

    def __init__(self, kind: str, warmup_epochs: float, epochs: int, lr_step: int, steps_per_epoch: int):
        self.kind, self.lr_step, self.steps = kind, lr_step, steps_per_epoch
        self.warmup, self.total = warmup_epochs * steps_per_epoch, epochs * steps_per_epoch

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        if self.kind == "step":
            return 0.1 ** (step // (self.lr_step * self.steps))
        progress = (step - self.warmup) / max(1, self.total - self.warmup)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


class Stop:
    """Set by SIGINT/SIGTERM; the ranks agree on it (:meth:`EpochBooks.agree`), so they all stop
    after the same step. A second signal stops at once (``KeyboardInterrupt``)."""

    def __init__(self):
        self.signal = 0

    def __call__(self, signum, frame) -> None:
        if self.signal:  # a second signal: stop at once
            raise KeyboardInterrupt
        self.signal = signum
        print(f"\n{signal.Signals(signum).name}: finishing this step, saving, exiting", file=sys.stderr, flush=True)


@torch.no_grad()
def evaluate(model, loader, device: torch.device, world: int, *, amp: torch.dtype | None, occlude: float = 0.0) -> dict:
    """Loss, top-1 and top-5 accuracy (%) over the whole validation set, summed across ranks;
    ``amp``: the autocast dtype on CUDA, as in training (None: float32). ``occlude``: the share of the image area
    hidden by a centred box of the image's aspect, set to the mean colour (0 after normalising),
    as in the CutMix paper's occlusion test."""
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, top-1, top-5
    count = 0  # on the host: a tensor made from it each batch would be a blocking copy
    for images, labels in loader:
        if occlude:
            images = occluded(images, occlude)
        if device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp):
            logits = model(images).float()
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices == labels[:, None]
        totals += torch.stack(
            [
                torch.nn.functional.cross_entropy(logits, labels, reduction="sum").double(),
                top[:, :1].sum().double(),
                top.sum().double(),
            ]
        )
        count += len(labels)
    if world > 1:
        totals = torch.cat([totals, torch.tensor([count], dtype=torch.float64, device=device)])
        dist.all_reduce(totals)
        loss, top1, top5, n = totals.tolist()
    else:
        (loss, top1, top5), n = totals.tolist(), count
    return {"val_loss": loss / n, "val_top1": 100 * top1 / n, "val_top5": 100 * top5 / n, "val_images": int(n)}


def occluded(images: torch.Tensor, share: float) -> torch.Tensor:
    """A copy of normalised (B, C, H, W) images with a centred box of ``share`` of the area zeroed."""
    H, W = images.shape[-2:]
    h, w = round(H * math.sqrt(share)), round(W * math.sqrt(share))
    y, x = (H - h) // 2, (W - w) // 2
    out = images.clone()
    out[..., y : y + h, x : x + w] = 0
    return out
