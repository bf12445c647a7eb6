"""The pure CutMix math: sampling, applying, and its invariants (NumPy and torch)."""

import numpy as np
import pytest
import torch

import dali_cutmix
from dali_cutmix.paste import apply_cutmix, box_rows_cols
from dali_cutmix.recipe import MixConfig
from dali_cutmix.sampling import CutMixParams, cutmix_box, sample_mix

H, W = 40, 72  # non-square on purpose: H and W must never be swapped


def reference_rand_bbox(rng, H, W, lam):
    """clovaai/CutMix-PyTorch's rand_bbox, with the names made honest (rows are H)."""
    cut_rat = np.sqrt(1.0 - lam)
    cut_h, cut_w = int(H * cut_rat), int(W * cut_rat)
    cy, cx = rng.integers(H), rng.integers(W)
    y1, y2 = np.clip(cy - cut_h // 2, 0, H), np.clip(cy + cut_h // 2, 0, H)
    x1, x2 = np.clip(cx - cut_w // 2, 0, W), np.clip(cx + cut_w // 2, 0, W)
    return y1, x1, y2, x2


def box_mask(boxes, height: int, width: int):
    """(B, H, W) bool mask, True inside each sample's box."""
    in_rows, in_cols = box_rows_cols(boxes, height, width)
    return in_rows[:, :, None] & in_cols[:, None, :]


def test_box_matches_reference_code_on_the_same_draws():
    rng = np.random.default_rng(0)
    lam0 = rng.beta(1.0, 1.0, 2000).astype(np.float32)
    u = rng.random((2000, 2), dtype=np.float32)
    lo, hi, _, lam = cutmix_box(lam0, u, np.float32(1.0), np.array([H, W], np.float32))
    (y1, x1), (y2, x2) = lo.T, hi.T
    for i in range(2000):
        cy, cx = int(u[i, 0] * H), int(u[i, 1] * W)
        cut_h, cut_w = int(H * np.sqrt(1.0 - lam0[i])), int(W * np.sqrt(1.0 - lam0[i]))
        expected = (max(cy - cut_h // 2, 0), max(cx - cut_w // 2, 0), min(cy + cut_h // 2, H), min(cx + cut_w // 2, W))
        assert (y1[i], x1[i], y2[i], x2[i]) == expected
        area = (expected[2] - expected[0]) * (expected[3] - expected[1])
        assert lam[i] == pytest.approx(1 - area / (H * W), rel=1e-6)


@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_sample_shapes_and_modes(mode):
    p = sample_mix(16, H, W, MixConfig(alpha=1.0, mode=mode), 1)
    assert p.perm.shape == (16,) and sorted(p.perm) == list(range(16))
    assert p.boxes.shape == (16, 4) and p.boxes.dtype == np.int32
    assert p.lam.dtype == np.float32
    distinct_boxes = len({tuple(b) for b in p.boxes})
    assert distinct_boxes == 1 if mode == "batch" else distinct_boxes > 1
    area = (p.boxes[:, 2] - p.boxes[:, 0]) * (p.boxes[:, 3] - p.boxes[:, 1])
    np.testing.assert_allclose(p.lam, 1 - area / (H * W), rtol=1e-6)
    assert (p.boxes[:, :2] >= 0).all() and (p.boxes[:, 2] <= H).all() and (p.boxes[:, 3] <= W).all()


def test_prob_zero_mixes_nothing():
    p = sample_mix(8, H, W, MixConfig(prob=0.0, mode="elem"), 2)
    assert (p.lam == 1.0).all()
    images = np.random.default_rng(0).integers(0, 256, (8, H, W, 3), dtype=np.uint8)
    out, *_ = apply_cutmix(images, np.arange(8), p)
    np.testing.assert_array_equal(out, images)


def test_elem_prob_mixes_about_that_fraction():
    p = sample_mix(4000, H, W, MixConfig(prob=0.3, mode="elem"), 3)
    mixed = (p.lam < 1.0).mean()
    assert 0.26 < mixed < 0.33  # a few of the 30% draw lam0 ~ 1 (an empty box)


def test_same_rng_same_params_other_rng_other_params():
    a, b, c = (sample_mix(32, H, W, MixConfig(mode="elem"), s) for s in (5, 5, 6))
    np.testing.assert_array_equal(a.boxes, b.boxes)
    assert not np.array_equal(a.boxes, c.boxes)


@pytest.mark.parametrize("layout", ["HWC", "CHW"])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32], ids=["uint8", "float32"])
def test_apply_invariants(layout, dtype):
    rng = np.random.default_rng(4)
    shape = (16, H, W, 3) if layout == "HWC" else (16, 3, H, W)
    images = (rng.random(shape) * 255).astype(dtype)
    before = images.copy()
    labels = np.arange(16) * 10
    p = sample_mix(16, H, W, MixConfig(mode="elem"), 5)
    out, la, lb, lam = apply_cutmix(images, labels, p, layout)
    np.testing.assert_array_equal(images, before)  # inputs untouched
    np.testing.assert_array_equal(lb, labels[p.perm])
    hwc = lambda x: x if layout == "HWC" else np.moveaxis(x, -3, -1)  # noqa: E731
    own = (hwc(out) == hwc(images)).all(-1)  # (B, H, W)
    partner = (hwc(out) == hwc(images[p.perm])).all(-1)
    assert (own | partner).all()
    # A sample paired with itself keeps its pixels; its loss is unchanged since labels_b == labels_a.
    moved = p.perm != np.arange(16)
    assert (lb[~moved] == la[~moved]).all()
    np.testing.assert_allclose(own.mean((1, 2))[moved], lam[moved], rtol=1e-6)
    np.testing.assert_array_equal(~own, box_mask(p.boxes, H, W) & moved[:, None, None])


def test_torch_and_numpy_agree():
    rng = np.random.default_rng(6)
    images = rng.integers(0, 256, (8, 3, H, W), dtype=np.uint8)
    p = sample_mix(8, H, W, MixConfig(mode="elem"), 7)
    out_np, _, lb_np, lam_np = apply_cutmix(images, np.arange(8), p, "CHW")
    out_t, _, lb_t, lam_t = apply_cutmix(torch.from_numpy(images), torch.arange(8), p, "CHW")
    np.testing.assert_array_equal(out_t.numpy(), out_np)
    np.testing.assert_array_equal(lb_t.numpy(), lb_np)
    np.testing.assert_array_equal(lam_t.numpy(), lam_np)


def test_layouts_agree():
    rng = np.random.default_rng(8)
    hwc = rng.integers(0, 256, (8, H, W, 3), dtype=np.uint8)
    p = sample_mix(8, H, W, MixConfig(mode="elem"), 9)
    out_hwc = apply_cutmix(hwc, np.arange(8), p, "HWC")[0]
    out_chw = apply_cutmix(np.ascontiguousarray(hwc.transpose(0, 3, 1, 2)), np.arange(8), p, "CHW")[0]
    np.testing.assert_array_equal(out_chw.transpose(0, 2, 3, 1), out_hwc)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"alpha": 0.0}, "nothing to mix: alpha and mixup_alpha are both 0"),
        ({"alpha": -1}, "alpha must be a finite number >= 0, got -1"),
        ({"prob": 1.5}, r"prob must be a number in \[0, 1\], got 1.5"),
        ({"prob": -0.1}, r"prob must be a number in \[0, 1\], got -0.1"),
        ({"mode": "pair"}, "mode must be one of .*, got 'pair'"),
        ({"height": 1}, "at least 2x2 .* got 1x72"),
        ({"batch_size": 0}, "batch_size must be an int >= 1, got 0"),
    ],
    ids=["alpha0", "alpha-neg", "prob-high", "prob-neg", "mode", "tiny", "batch0"],
)
def test_sample_errors(kwargs, match):
    args = {"batch_size": 4, "height": H, "width": W, **kwargs}
    with pytest.raises(ValueError, match=match):
        sample_mix(args.pop("batch_size"), args.pop("height"), args.pop("width"), MixConfig(**args))


def test_apply_errors():
    p = sample_mix(4, H, W, MixConfig(), 0)
    with pytest.raises(ValueError, match="layout must be one of .*, got 'NHWC'"):
        apply_cutmix(np.zeros((4, H, W, 3)), np.arange(4), p, "NHWC")
    with pytest.raises(ValueError, match=r"batch of 4 HWC images, got shape \(3, 40, 72, 3\)"):
        apply_cutmix(np.zeros((3, H, W, 3)), np.arange(3), p)
    with pytest.raises(ValueError, match="expected perm"):
        CutMixParams(perm=np.arange(4), boxes=np.zeros((3, 4), np.int32), lam=np.ones(4, np.float32))


@pytest.mark.parametrize(
    "kwargs, field, rule",
    [
        ({"alpha": -1}, "alpha", "must be a finite number >= 0"),
        ({"switch_prob": 2}, "switch_prob", "must be a number in [0, 1]"),
        ({"minmax": (0.5, 0.2)}, "minmax", "must be (min, max) with 0 < min < max <= 1"),
        ({"alpha": 0}, None, "nothing to mix: alpha and mixup_alpha are both 0 and minmax is not set"),
    ],
)
def test_recipe_errors_name_their_field_for_the_caller(kwargs, field, rule):
    """A trainer names its own flag from ``field`` (train.py does), never by parsing the message."""
    with pytest.raises(dali_cutmix.RecipeError) as info:
        MixConfig(**kwargs)
    assert (info.value.field, info.value.rule) == (field, rule)
    assert isinstance(info.value, ValueError)


def test_the_loop_mixer_keeps_a_channels_last_batch_channels_last_and_mixes_it_alike():
    """A GPU loader's batch is the NCHW view of HWC memory: mixed as that HWC block, it comes back
    the same kind of view (the step copies nothing), with the same values as a contiguous batch."""
    import torch

    from dali_cutmix.loop import LoopMixer
    from dali_cutmix.recipe import MixConfig

    hwc = torch.randint(0, 256, (8, 12, 20, 3), dtype=torch.uint8)
    view = hwc.permute(0, 3, 1, 2)  # channels_last
    labels = torch.arange(8)
    for recipe in (MixConfig(mode="elem"), MixConfig(mixup_alpha=0.4, mode="elem")):
        a = LoopMixer(recipe, seed=3)(view, labels)
        b = LoopMixer(recipe, seed=3)(view.contiguous(), labels)
        assert a[0].is_contiguous(memory_format=torch.channels_last) and not a[0].is_contiguous()
        for x, y in zip(a, b):
            assert torch.equal(x, y)


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_bool_images_with_mixup_are_refused_in_one_line(kind):
    images = np.zeros((4, H, W, 3), bool)
    params = sample_mix(4, H, W, MixConfig(alpha=0.0, mixup_alpha=0.5), 0)
    if kind == "torch":
        images = torch.from_numpy(images)
    with pytest.raises(ValueError, match="bool images have none between False and True: give uint8 or float images"):
        apply_cutmix(images, np.arange(4), params)
