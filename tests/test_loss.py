"""The mixed loss and soft targets, with timm as the oracle."""

import pytest
import torch
import torch.nn.functional as F
from timm.data.mixup import mixup_target
from timm.loss import SoftTargetCrossEntropy

from dali_cutmix import mixed_cross_entropy, mixed_targets

K = 10


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(16, K, generator=g)
    a = torch.randint(0, K, (16, 1), generator=g, dtype=torch.int32)  # DALI's (B, 1) int32
    b = torch.randint(0, K, (16, 1), generator=g, dtype=torch.int32)
    lam = torch.rand(16, generator=g)
    return logits, a, b, lam


@pytest.mark.parametrize("smoothing", [0.0, 0.1], ids=["plain", "smoothed"])
def test_equals_soft_target_cross_entropy(batch, smoothing):
    logits, a, b, lam = batch
    targets = mixed_targets(a, b, lam, K, label_smoothing=smoothing)
    soft = -(targets * F.log_softmax(logits, dim=1)).sum(1).mean()
    torch.testing.assert_close(mixed_cross_entropy(logits, a, b, lam, label_smoothing=smoothing), soft)


@pytest.mark.parametrize("smoothing", [0.0, 0.1], ids=["plain", "smoothed"])
def test_matches_timm_for_a_batch_lambda(batch, smoothing):
    logits, a, _, _ = batch
    lam = 0.3
    flipped = a.reshape(-1).flip(0)  # timm pairs sample i with B - 1 - i
    ours = mixed_targets(a, flipped, lam, K, label_smoothing=smoothing)
    theirs = mixup_target(a.reshape(-1).long(), K, lam=lam, smoothing=smoothing)
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(
        mixed_cross_entropy(logits, a, flipped, lam, label_smoothing=smoothing),
        SoftTargetCrossEntropy()(logits, theirs),
    )


def test_lam_one_is_plain_cross_entropy(batch):
    logits, a, b, _ = batch
    torch.testing.assert_close(
        mixed_cross_entropy(logits, a, b, torch.ones(16)), F.cross_entropy(logits, a.reshape(-1).long())
    )


def test_targets_are_distributions(batch):
    _, a, b, lam = batch
    t = mixed_targets(a, b, lam, K, label_smoothing=0.1)
    torch.testing.assert_close(t.sum(1), torch.ones(16))
    assert (t > 0).all()


@pytest.mark.parametrize("smoothing", [-0.1, 1.0])
def test_bad_smoothing(batch, smoothing):
    logits, a, b, lam = batch
    with pytest.raises(ValueError, match=f"label_smoothing must be in \\[0, 1\\), got {smoothing}"):
        mixed_cross_entropy(logits, a, b, lam, label_smoothing=smoothing)
