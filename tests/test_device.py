"""What runs on the trainer's device, torch only (no DALI: collected and run on a bare CUDA machine):
the host -> device staging, the device-side normalisation and the python backend's torch callback.
On CUDA, the GPU check's torch half (``scripts/gpu_check.py``) compares them with the NumPy oracle."""

import numpy as np
import pytest
import torch

from dali_cutmix.backends.torch_mix import TorchMix
from dali_cutmix.device import DeviceNormalize, to_device

MEAN, STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)


def cmn_oracle(images: np.ndarray) -> np.ndarray:
    """(B, H, W, C) uint8 -> (B, C, H, W): crop_mirror_normalize's (x - mean) * float32(1 / std)."""
    inv = (1.0 / np.array(STD, np.float64)).astype(np.float32)
    return ((images.astype(np.float32) - np.array(MEAN, np.float32)) * inv).transpose(0, 3, 1, 2)


def test_device_normalize_is_crop_mirror_normalize_and_channels_last():
    images = np.random.default_rng(0).integers(0, 256, (4, 6, 10, 3), np.uint8)
    out = DeviceNormalize(MEAN, STD)(torch.from_numpy(images))
    assert out.shape == (4, 3, 6, 10) and out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)  # the HWC bytes, no transpose pass
    assert np.array_equal(out.numpy(), cmn_oracle(images))
    half = DeviceNormalize(MEAN, STD, dtype=torch.float16)(torch.from_numpy(images))
    assert half.dtype == torch.float16 and np.allclose(half.float().numpy(), cmn_oracle(images), atol=4e-3)


def test_device_normalize_refuses_what_is_not_a_uint8_hwc_batch():
    with pytest.raises(ValueError, match=r"\(B, H, W, 3\) uint8 images, got torch.float32 \(2, 3, 8, 8\)"):
        DeviceNormalize(MEAN, STD)(torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match="one value per channel, got 3 and 2"):
        DeviceNormalize(MEAN, STD[:2])


def test_to_device_leaves_a_tensor_on_its_device_untouched():
    t = torch.arange(4)
    assert to_device(t, torch.device("cpu")) is t


def test_the_callback_checks_the_size_the_boxes_were_drawn_for():
    from torch.utils.dlpack import to_dlpack

    images = [to_dlpack(torch.zeros(8, 8, 3, dtype=torch.uint8)) for _ in range(2)]
    packed = [to_dlpack(torch.zeros(7)) for _ in range(2)]
    with pytest.raises(ValueError, match=r"cutmix\(size=\(16, 16\)\) got sample 0 of shape \(8, 8, 3\)"):
        TorchMix("HWC", size=(16, 16))(images, packed)


def gpu_check():
    """scripts/gpu_check.py, whose torch half holds the CUDA comparisons (run by CI with --cpu)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.gpu
@pytest.mark.parametrize("check", ["torch-mix", "loop-mixer", "loss", "train-step", "train-epoch", "device-normalize"])
def test_the_torch_half_of_the_gpu_check_passes_on_cuda(check):
    """mix_images and TorchMix on a side stream against the NumPy oracle, LoopMixer against NumPy,
    the loss in fp16/fp32, train_step with AMP (fp16 and bf16), fused SGD and channels_last,
    train_epoch over 25 steps, the device normalisation: all under set_sync_debug_mode("error"),
    the AMP steps included (train_epoch's books read every 20 steps allowed)."""
    rows = gpu_check().TORCH_CHECKS[check](torch.device("cuda"))
    assert rows and all(r["ok"] for r in rows), [r for r in rows if not r["ok"]]
