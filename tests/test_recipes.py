"""The mixing recipes on every backend: MixUp, switching, box limits, no-self partners; timm as oracle."""

import pytest

pytest.importorskip("nvidia.dali", exc_type=ImportError)  # `pytest -m gpu` collects without DALI

import numpy as np
import torch
from conftest import backends, random_batch
from dali_helpers import mix_arrays
from timm.data import mixup as timm_mixup

from dali_cutmix import mixed_targets
from dali_cutmix.paste import apply_cutmix
from dali_cutmix.recipe import MixConfig
from dali_cutmix.sampling import CutMixParams, sample_mix

BACKENDS, BACKEND_LAYOUTS = backends()

H, W, K = 40, 72, 10


def flipped(params: CutMixParams) -> CutMixParams:
    """The same draws with timm's pairing: sample i mixes with sample B - 1 - i."""
    B = len(params.perm)
    return CutMixParams(perm=np.arange(B)[::-1].copy(), boxes=params.boxes, lam=params.lam, blend=params.blend)


@pytest.mark.parametrize("kind", ["cutmix", "mixup"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1], ids=["plain", "smoothed"])
def test_timm_given_our_draws_mixes_like_us_in_batch_mode(monkeypatch, kind, smoothing):
    """timm draws its own numbers; we hand it ours and compare images, targets and lambda (the
    draws come from our sampler: test_our_draws_follow_timms_own_distribution checks those)."""
    B = 8
    x = torch.rand(B, 3, H, W)
    target = torch.arange(B) % K
    config = {"alpha": 1.0, "mixup_alpha": 0.4, "switch_prob": 1.0 if kind == "cutmix" else 0.0}
    params = None
    for seed in range(100):  # a batch that is mixed (prob 1) with a non-empty box or a blend
        params = flipped(sample_mix(B, H, W, MixConfig(mode="batch", **config), seed))
        if params.lam[0] < 1:
            break
    y1, x1, y2, x2 = (int(v) for v in params.boxes[0])
    use_cutmix = kind == "cutmix"
    monkeypatch.setattr(timm_mixup.Mixup, "_params_per_batch", lambda self: (float(params.lam[0]), use_cutmix))
    monkeypatch.setattr(timm_mixup, "cutmix_bbox_and_lam", lambda *a, **k: ((y1, y2, x1, x2), float(params.lam[0])))
    timm = timm_mixup.Mixup(mixup_alpha=0.4, cutmix_alpha=1.0, mode="batch", label_smoothing=smoothing, num_classes=K)
    theirs_x, theirs_y = timm(x.clone(), target)
    ours_x, la, lb, lam = apply_cutmix(x, target, params, "CHW")
    torch.testing.assert_close(ours_x, theirs_x, rtol=0, atol=1e-6)  # timm multiplies by a float64 lam
    if use_cutmix:
        torch.testing.assert_close(ours_x, theirs_x, rtol=0, atol=0)
    torch.testing.assert_close(mixed_targets(la, lb, lam, K, label_smoothing=smoothing), theirs_y)


def test_timm_given_our_draws_mixes_like_us_in_elem_mode(monkeypatch):
    B = 8
    x = torch.rand(B, 3, H, W)
    target = torch.arange(B)
    params = flipped(sample_mix(B, H, W, MixConfig(mode="elem", alpha=1.0, mixup_alpha=0.4, switch_prob=0.5), 3))
    use_cutmix = ~params.blend
    monkeypatch.setattr(timm_mixup.Mixup, "_params_per_elem", lambda self, n: (params.lam.copy(), use_cutmix))
    boxes = iter(
        [
            ((b[0], b[2], b[1], b[3]), lam)
            for b, lam, cut in zip(params.boxes, params.lam, use_cutmix)
            if cut and lam != 1
        ]
    )
    monkeypatch.setattr(timm_mixup, "cutmix_bbox_and_lam", lambda *a, **k: next(boxes))
    timm = timm_mixup.Mixup(mixup_alpha=0.4, cutmix_alpha=1.0, mode="elem", label_smoothing=0.0, num_classes=K)
    theirs_x, theirs_y = timm(x.clone(), target)
    ours_x, la, lb, lam = apply_cutmix(x, target, params, "CHW")
    torch.testing.assert_close(ours_x, theirs_x, rtol=0, atol=1e-6)
    torch.testing.assert_close(mixed_targets(la, lb, lam, K), theirs_y)


@pytest.mark.parametrize("backend, layout", BACKEND_LAYOUTS)
@pytest.mark.parametrize("dtype", [np.uint8, np.float32], ids=["uint8", "float32"])
def test_mixup_and_cutmix_switching_matches_the_reference(backend, layout, dtype):
    rng = np.random.default_rng(0)
    shape = (H, W, 3) if layout == "HWC" else (3, H, W)
    batches = [random_batch(rng, 16, shape, dtype) for _ in range(3)]
    kinds = set()
    for out in mix_arrays(batches, backend=backend, layout=layout, mode="elem", mixup_alpha=0.4, switch_prob=0.5):
        images, mixed, la, lb, lam, perm, boxes, blend = out
        blend = blend > 0
        params = CutMixParams(perm=perm.astype(np.int64), boxes=boxes, lam=lam, blend=blend)
        np.testing.assert_array_equal(mixed, apply_cutmix(images, la, params, layout)[0])
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        assert (area[blend] == 0).all()  # a blended sample has no box
        np.testing.assert_allclose(lam[~blend], 1 - area[~blend] / (H * W), rtol=1e-6)
        assert ((lam[blend] > 0) & (lam[blend] < 1)).all()
        kinds |= {"mixup"} if blend.any() else set()
        kinds |= {"cutmix"} if (area > 0).any() else set()
    assert kinds == {"mixup", "cutmix"}


@pytest.mark.parametrize("backend", BACKENDS)
def test_mixup_pixels_are_the_rounded_blend(backend):
    rng = np.random.default_rng(1)
    batches = [random_batch(rng, 8, (H, W, 3)) for _ in range(2)]
    for images, mixed, _la, _lb, lam, perm, boxes, blend in mix_arrays(
        batches, backend=backend, alpha=0, mixup_alpha=1.0, mode="elem"
    ):
        assert (blend == 1).all() and (boxes[:, 2] == boxes[:, 0]).all()
        for i in range(8):
            exact = lam[i] * images[i].astype(np.float64) + (1 - lam[i]) * images[perm[i]].astype(np.float64)
            assert np.abs(mixed[i] - exact).max() <= 0.5 + 1e-3


def test_our_draws_follow_timms_own_distribution():
    """Independent of our parameters: timm's own sampler (unpatched) against ours, 20,000 draws."""
    n = 20000
    np.random.seed(0)
    timm = timm_mixup.Mixup(mixup_alpha=0.4, cutmix_alpha=1.0, mode="elem", switch_prob=0.5, num_classes=K)
    lam_raw, use_cutmix = timm._params_per_elem(n)
    theirs_cut = [timm_mixup.cutmix_bbox_and_lam((3, H, W), float(lam), correct_lam=True)[1]
                  for lam in lam_raw[use_cutmix]]  # fmt: skip
    ours = sample_mix(n, H, W, MixConfig(mode="elem", alpha=1.0, mixup_alpha=0.4, switch_prob=0.5), 0)
    assert abs(ours.blend.mean() - (~use_cutmix).mean()) < 0.02  # the share of MixUp samples
    assert abs(ours.lam[~ours.blend].mean() - np.mean(theirs_cut)) < 0.01  # CutMix lam after clipping
    assert abs(ours.lam[ours.blend].std() - lam_raw[~use_cutmix].std()) < 0.01  # Beta(0.4, 0.4)


def test_switch_prob_sets_the_share_of_cutmix():
    p = sample_mix(20000, H, W, MixConfig(mode="elem", mixup_alpha=0.4, switch_prob=0.3, prob=0.5), 4)
    mixed = (p.lam < 1) | p.blend
    assert abs(mixed.mean() - 0.5) < 0.02
    assert abs(p.blend[mixed].mean() - 0.7) < 0.02


@pytest.mark.parametrize("backend", BACKENDS)
def test_minmax_boxes_have_random_sides_within_limits(backend):
    rng = np.random.default_rng(5)
    batches = [random_batch(rng, 256, (H, W, 1))] * 20
    boxes = np.concatenate([o[6] for o in mix_arrays(batches, backend=backend, mode="elem", minmax=(0.2, 0.8))])
    lams = np.concatenate([o[4] for o in mix_arrays(batches, backend=backend, mode="elem", minmax=(0.2, 0.8))])
    h, w = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    # timm's rand_bbox_minmax: randint(int(S * 0.2), int(S * 0.8)), i.e. 8..31 of 40 and 14..56 of 72
    assert h.min() == 8 and h.max() == 31 and w.min() == 14 and w.max() == 56
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= H).all() and (boxes[:, 3] <= W).all()
    assert boxes[:, 0].min() == 0 and boxes[:, 2].max() == H and boxes[:, 1].min() == 0 and boxes[:, 3].max() == W
    assert abs(np.corrcoef(h, w)[0, 1]) < 0.05  # independent sides: a random aspect
    assert len(np.unique(lams)) > 100


def test_minmax_matches_timm_sampler_distribution():
    ours = sample_mix(20000, H, W, MixConfig(mode="elem", minmax=(0.3, 0.9)), 6)
    np.random.seed(0)
    yl, yu, xl, xu = timm_mixup.rand_bbox_minmax((3, H, W), (0.3, 0.9), count=20000)
    h, w = ours.boxes[:, 2] - ours.boxes[:, 0], ours.boxes[:, 3] - ours.boxes[:, 1]
    assert abs(h.mean() - (yu - yl).mean()) < 0.2 and abs(w.mean() - (xu - xl).mean()) < 0.4
    assert abs(ours.boxes[:, 0].mean() - yl.mean()) < 0.3


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_self_partners(backend):
    rng = np.random.default_rng(7)
    batches = [random_batch(rng, 4, (H, W, 3))] * 50
    for out in mix_arrays(batches, backend=backend, mode="elem", no_self=True):
        assert (out[5] != np.arange(4)).all()
    for seed in range(50):
        assert (sample_mix(4, H, W, MixConfig(no_self=True), seed).perm != np.arange(4)).all()
