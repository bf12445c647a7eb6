"""The CutMix loss: per-sample lambda, optional label smoothing, in one place.

``lam * CE(logits, a) + (1 - lam) * CE(logits, b)`` per sample equals the soft-target cross
entropy against ``lam * onehot(a) + (1 - lam) * onehot(b)``, smoothed as in timm's
``mixup_target`` (smoothing is linear in the target, so it commutes with the mix).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _flat_labels(labels: torch.Tensor) -> torch.Tensor:
    return labels.reshape(-1).long()  # DALI gives (B, 1) int32


def _check_smoothing(label_smoothing: float) -> None:
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")


def mixed_cross_entropy(
    logits: torch.Tensor,
    labels_a: torch.Tensor,
    labels_b: torch.Tensor,
    lam: torch.Tensor | float,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Mean over the batch of ``lam * CE(logits, a) + (1 - lam) * CE(logits, b)``, a scalar tensor.

    logits: (B, K) float (any float dtype, e.g. float16 under autocast).
    labels_a, labels_b: (B,) or (B, 1) integer class indices, on the logits' device.
    lam: (B,) float tensor, or one number for the batch.
    label_smoothing: in [0, 1), as in ``F.cross_entropy``.
    """
    _check_smoothing(label_smoothing)
    lam = torch.as_tensor(lam, dtype=torch.float32, device=logits.device).reshape(-1)
    ce_a = F.cross_entropy(logits, _flat_labels(labels_a), reduction="none", label_smoothing=label_smoothing)
    ce_b = F.cross_entropy(logits, _flat_labels(labels_b), reduction="none", label_smoothing=label_smoothing)
    return (lam * ce_a + (1.0 - lam) * ce_b).mean()


def mixed_targets(
    labels_a: torch.Tensor,
    labels_b: torch.Tensor,
    lam: torch.Tensor | float,
    num_classes: int,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Soft targets ``lam * onehot(a) + (1 - lam) * onehot(b)``, smoothed: (B, num_classes) float32
    on the labels' device.

    labels_a, labels_b: (B,) or (B, 1) integer class indices, on one device.
    lam: (B,) float tensor, or one number for the batch.
    num_classes: K.
    label_smoothing: in [0, 1): each target spreads that much over all K classes.
    """
    _check_smoothing(label_smoothing)
    a, b = _flat_labels(labels_a), _flat_labels(labels_b)
    off = label_smoothing / num_classes
    on = 1.0 - label_smoothing + off
    lam = torch.as_tensor(lam, dtype=torch.float32, device=a.device).reshape(-1, 1)

    def one_hot(y: torch.Tensor) -> torch.Tensor:
        return torch.full((len(y), num_classes), off, device=y.device).scatter_(1, y[:, None], on)

    return lam * one_hot(a) + (1.0 - lam) * one_hot(b)
