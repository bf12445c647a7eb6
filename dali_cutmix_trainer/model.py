"""The model: a torchvision ResNet by name, on its device (channels_last on CUDA)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


def build_model(arch: str, num_classes: int, device: torch.device) -> torch.nn.Module:
    import torch
    import torchvision  # here: the command line names the architectures without loading it

    model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model
