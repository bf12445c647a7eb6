"""What happens on the trainer's device after DALI: the host -> device copy and the normalisation
of uint8 batches. torch only (no DALI), so the GPU check's first half runs it on a bare CUDA machine.

A CPU pipeline feeding a GPU trainer ships uint8 images and normalises them on the device (as
timm's ``PrefetchLoader`` and FFCV do): a quarter of the bytes to copy and no float pass on the CPU.
"""

from __future__ import annotations

import numpy as np
import torch


def to_device(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``t`` on ``device`` (a torch device or its name). A host tensor bound for CUDA is first copied
    into pinned memory that torch owns, then copied without blocking (docs/DESIGN.md, "Host memory
    handed to torch")."""
    device = torch.device(device)
    if t.device.type == device.type and (device.index is None or t.device.index == device.index):
        return t
    if t.device.type == "cpu" and device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def from_numpy(a, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor | None:
    """A NumPy array as a tensor on ``device``, staged as :func:`to_device` does (no host sync);
    ``dtype`` None keeps the array's; None for None."""
    if a is None:
        return None
    return to_device(torch.as_tensor(np.ascontiguousarray(a), dtype=dtype), device)


class DeviceNormalize:
    """``(B, H, W, C)`` uint8 -> ``(B, C, H, W)`` float ``(x - mean) * (1 / std)`` on the images'
    device, channels_last in memory (the HWC bytes as they came). ``1 / std`` is rounded to float32
    once, as ``crop_mirror_normalize`` does, so both give the same values to float32 rounding.

    mean, std: one value a channel, in pixel levels (0-255).
    dtype: float32, or float16 for AMP.
    """

    def __init__(self, mean, std, dtype: torch.dtype = torch.float32):
        if len(mean) != len(std):
            raise ValueError(f"mean and std need one value per channel, got {len(mean)} and {len(std)}")
        self.mean = torch.tensor(np.asarray(mean, np.float32))
        self.inv_std = torch.tensor((1.0 / np.asarray(std, np.float64)).astype(np.float32))
        self.dtype = dtype
        self._on: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[3] != len(self.mean):
            raise ValueError(
                f"DeviceNormalize takes (B, H, W, {len(self.mean)}) uint8 images, got {images.dtype} "
                f"{tuple(images.shape)}"
            )
        if images.device not in self._on:  # the constants copied once per device, not every batch
            self._on[images.device] = (to_device(self.mean, images.device), to_device(self.inv_std, images.device))
        mean, inv_std = self._on[images.device]
        x = images.permute(0, 3, 1, 2).float()  # (B, C, H, W) view of the HWC bytes: channels_last
        return ((x - mean[:, None, None]) * inv_std[:, None, None]).to(self.dtype)
