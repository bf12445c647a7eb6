"""One training step, shared by train.py and the profiler, with NVTX ranges for Nsight Systems.

On a GPU each phase (``data``, ``forward``, ``backward``, ``optimizer``) is an NVTX range, so
``nsys profile python train.py ...`` shows where a step's time goes next to DALI's own ranges.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch

from .loss import mixed_cross_entropy


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
