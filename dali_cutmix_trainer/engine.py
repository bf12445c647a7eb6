"""The training engine: one step (shared by train.py and the profiler, with NVTX ranges for
Nsight Systems), one epoch of steps, evaluation, the lr schedule, and the stop signal that ranks
agree on.

On a GPU each phase (``data``, ``forward``, ``backward``, ``optimizer``) is an NVTX range, so
``nsys profile python train.py ...`` shows where a step's time goes next to DALI's own ranges.
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


def autocast(device: torch.device, enabled: bool):
    """float16 autocast on CUDA (with a GradScaler), a no-op elsewhere."""
    return torch.autocast("cuda", dtype=torch.float16) if enabled and device.type == "cuda" else nullcontext()


def train_step(model, optimizer, scaler, batch, *, smoothing: float = 0.0) -> torch.Tensor:
    """Forward, mixed loss, backward and optimizer step on ``(images, labels_a, labels_b, lam)``.

    ``scaler`` is a ``torch.amp.GradScaler`` for float16 autocast on CUDA, or None for float32.
    Returns the detached loss; nothing here waits for the device.
    """
    images, labels_a, labels_b, lam = batch
    on_gpu = images.is_cuda
    if on_gpu:
        images = images.contiguous(memory_format=torch.channels_last)
    with nvtx("forward", on_gpu), autocast(images.device, scaler is not None):
        loss = mixed_cross_entropy(model(images), labels_a, labels_b, lam, smoothing)
    optimizer.zero_grad(set_to_none=True)
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
    world: int = 1,
    start_step: int = 0,
    max_steps: int | None = None,
    smoothing: float = 0.0,
    mixer=None,
    show: bool = True,
) -> dict:
    """Steps ``start_step..`` of one epoch (at most ``max_steps``); returns the mean loss, speed,
    data-wait time and the number of steps done, which is short of the epoch only when ``stop``
    was set (``"stopped"``). ``mixer``: a :class:`dali_cutmix.loop.LoopMixer` that mixes the plain
    batches on their device, with the recipe's chance of mixing in ``epoch``."""
    from tqdm import tqdm

    model.train()
    on_gpu = device.type == "cuda"
    total = len(loader) if max_steps is None else min(len(loader), max_steps)
    losses, seen, waited, step = [], 0, 0.0, start_step
    bar = tqdm(total=total, initial=start_step, desc=f"epoch {epoch}", disable=not show, unit="batch", mininterval=1.0)
    batches = iter(loader)
    start = time.perf_counter()
    try:  # an error ends the bar first, so that its message starts on a line of its own
        while step < total and not stop.agreed(world, device, step):
            tick = time.perf_counter()
            with nvtx("data", on_gpu):
                batch = next(batches, None)
            waited += time.perf_counter() - tick
            if batch is None:
                break
            if mixer is not None:
                batch = mixer(batch[0], batch[1], epoch=epoch)
            losses.append(train_step(model, optimizer, scaler, batch, smoothing=smoothing))
            scheduler.step()
            seen += len(batch[0])
            step += 1
            bar.update(1)
            if step % 20 == 0:
                check_finite(losses, epoch, start_step)
                bar.set_postfix(loss=f"{losses[-1].item():.3f}", img_s=f"{seen / (time.perf_counter() - start):.0f}")
    finally:
        bar.close()
    stopped = stop.agreed(world, device, 0)  # every rank leaves the epoch knowing the same
    check_finite(losses, epoch, start_step)
    if not stopped:
        loader.finish_epoch()  # cut short by max_steps: the state saved next is at the epoch's end
    seconds = time.perf_counter() - start
    mean = torch.stack(losses).mean().item() if losses else float("nan")
    return {
        "train_loss": mean,
        "images_per_s": seen / seconds,
        "epoch_seconds": seconds,
        "data_wait_s": waited,
        "train_images": seen,
        "steps": step,
        "stopped": stopped,
    }


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
    """Set by SIGINT/SIGTERM; ranks agree on it, so they all stop after the same step.

    Alone, a process reads its own flag every step (free). Under DDP agreeing takes an all-reduce
    and reading its result back, which on CUDA waits for the device: ranks agree every ``every``
    steps only, so the queue of kernels stays full in between.
    """

    def __init__(self, every: int = 20):
        self.signal = 0
        self.every = every

    def __call__(self, signum, frame) -> None:
        if self.signal:  # a second signal: stop at once
            raise KeyboardInterrupt
        self.signal = signum
        print(f"\n{signal.Signals(signum).name}: finishing this step, saving, exiting", file=sys.stderr, flush=True)

    def agreed(self, world: int, device: torch.device, step: int) -> bool:
        """Whether every rank stops before ``step`` (all ranks call it with the same steps)."""
        if world == 1:
            return bool(self.signal)
        if step % self.every:
            return False
        flag = torch.tensor([float(bool(self.signal))], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


def check_finite(losses: list[torch.Tensor], epoch: int, start_step: int) -> None:
    """Raise ``FloatingPointError`` naming the first step whose loss is NaN or infinite."""
    if not losses:
        return
    bad = torch.nonzero(~torch.isfinite(torch.stack(losses))).flatten()
    if len(bad):
        first = bad[0].item()
        raise FloatingPointError(f"non-finite loss {losses[first].item()} at epoch {epoch}, step {start_step + first}")


@torch.no_grad()
def evaluate(model, loader, device: torch.device, world: int, *, amp: bool, occlude: float = 0.0) -> dict:
    """Loss, top-1 and top-5 accuracy (%) over the whole validation set, summed across ranks;
    ``amp``: float16 autocast on CUDA, as in training. ``occlude``: the share of the image area
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
        with autocast(device, enabled=amp):
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
