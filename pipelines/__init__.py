"""DALI ``@pipeline_def`` builders."""

from .imagenet import train_pipeline, val_pipeline

__all__ = ["train_pipeline", "val_pipeline"]
