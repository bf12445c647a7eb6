"""DALI ``@pipeline_def`` builders, and the PyTorch loaders over them."""

from .imagenet import train_pipeline, val_pipeline
from .loaders import train_loader, val_loader

__all__ = ["train_loader", "train_pipeline", "val_loader", "val_pipeline"]
