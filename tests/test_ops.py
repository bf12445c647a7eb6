"""The DALI CutMix operator, on real pipeline output, against the pure reference."""

import numpy as np
import pytest
from conftest import BACKEND_LAYOUTS, BACKENDS, REPLAY_CONFIGS, random_batch, run_cutmix
from nvidia.dali import fn, pipeline_def, types

import dali_cutmix
from dali_cutmix.mix import NUMPY_OPS, CutMixParams, apply_cutmix, cutmix_box
from dali_cutmix.ops import DALI_OPS, paste_native, paste_python, sample_params

H, W = 40, 72


def params_of(out):
    _, _, _, _, lam, perm, boxes = out
    return CutMixParams(perm=perm.astype(np.int64), boxes=boxes, lam=lam)


@pytest.mark.parametrize("backend, layout", BACKEND_LAYOUTS)
@pytest.mark.parametrize("dtype", [np.uint8, np.float32], ids=["uint8", "float32"])
@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_backend_matches_reference(backend, layout, dtype, mode):
    rng = np.random.default_rng(0)
    shape = (H, W, 3) if layout == "HWC" else (3, H, W)
    batches = [random_batch(rng, 8, shape, dtype) for _ in range(3)]
    for out in run_cutmix(batches, backend=backend, layout=layout, mode=mode):
        images, mixed, la, lb, lam = out[:5]
        assert mixed.dtype == images.dtype and mixed.shape == images.shape
        ref_images, ref_la, ref_lb, ref_lam = apply_cutmix(images, la, params_of(out), layout)
        np.testing.assert_array_equal(mixed, ref_images)
        np.testing.assert_array_equal(lb, ref_lb)
        assert lam.dtype == np.float32 and lam.shape == (8,)


@pytest.mark.parametrize("config", REPLAY_CONFIGS, ids=["cutmix", "mixup-minmax"])
def test_backends_identical_on_shared_params(config):
    """One pipeline, one sampling, both pastes: their outputs must be equal byte for byte."""
    rng = np.random.default_rng(1)
    batches = [random_batch(rng, 16, (H, W, 3)) for _ in range(4)]
    feed = iter(batches * 2)

    @pipeline_def(batch_size=16, num_threads=1, device_id=None, seed=7)
    def pipe():
        images = fn.external_source(source=lambda: next(feed), layout="HWC")
        sampled = sample_params(images, config, layout="HWC")
        return paste_native(images, sampled, layout="HWC"), paste_python(images, sampled, layout="HWC")

    p = pipe(prefetch_queue_depth=1)
    p.build()
    for _ in range(4):
        native, python = (o.as_array() for o in p.run())
        np.testing.assert_array_equal(native, python)


@pytest.mark.parametrize("backend", BACKENDS)
def test_pipeline_output_invariants(backend):
    rng = np.random.default_rng(2)
    batches = [random_batch(rng, 16, (H, W, 3)) for _ in range(4)]
    for images, mixed, la, lb, lam, perm, boxes in run_cutmix(batches, backend=backend, mode="elem"):
        np.testing.assert_array_equal(lb, la[perm])  # labels_b follows the permutation
        for i in range(16):
            own = (mixed[i] == images[i]).all(-1)
            partner = (mixed[i] == images[perm[i]]).all(-1)
            assert (own | partner).all()
            if perm[i] == i:
                continue
            # The partner's pixels form one rectangle, and lam is the own-pixel fraction.
            rows, cols = np.nonzero(~own)
            if len(rows):
                y1, y2, x1, x2 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
                assert (~own[y1:y2, x1:x2]).all() and len(rows) == (y2 - y1) * (x2 - x1)
                assert (y1, x1, y2, x2) == tuple(boxes[i])
            assert lam[i] == pytest.approx(own.mean(), rel=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_prob_zero_is_identity(backend):
    rng = np.random.default_rng(3)
    batches = [random_batch(rng, 8, (H, W, 3)) for _ in range(2)]
    for images, mixed, _la, _lb, lam, *_ in run_cutmix(batches, backend=backend, prob=0.0):
        np.testing.assert_array_equal(mixed, images)
        assert (lam == 1.0).all()


def test_box_formula_bit_identical_in_dali_and_numpy():
    rng = np.random.default_rng(4)
    n = 512
    lam0 = rng.beta(0.5, 0.5, n).astype(np.float32)
    lam0[:4] = [0.0, 1.0, 0.5, 1e-7]
    u = rng.random((n, 2), dtype=np.float32)
    u[:2, 0] = [0.0, np.nextafter(np.float32(1), np.float32(0))]
    mixed = (rng.random(n) < 0.9).astype(np.float32)
    hw = np.array([H, W], dtype=np.float32)

    @pipeline_def(batch_size=n, num_threads=1, device_id=None)
    def pipe():
        nodes = [fn.external_source(source=[list(d)], cycle=True, dtype=types.FLOAT) for d in (lam0, u, mixed)]
        return cutmix_box(*nodes, types.Constant(hw), ops=DALI_OPS)

    p = pipe()
    p.build()
    got = [o.as_array() for o in p.run()]
    want = cutmix_box(lam0, u, mixed, hw, ops=NUMPY_OPS)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g.reshape(w.shape), w)


@pytest.mark.parametrize("backend", ["native", "ops"])  # python draws with sample_mix, tested in test_mix
def test_statistics_over_many_batches(backend):
    """Lambda and boxes on a non-square image, against the reference code's distribution."""
    rng = np.random.default_rng(5)
    batches = [random_batch(rng, 256, (H, W, 1)) for _ in range(1)] * 40
    lams, boxes = [], []
    for out in run_cutmix(batches, backend=backend, mode="elem", alpha=1.0):
        lams.append(out[4])
        boxes.append(out[6])
    lam, boxes = np.concatenate(lams), np.concatenate(boxes)
    ref = np.random.default_rng(6)
    ref_lam = []
    for _ in range(len(lam)):
        l0 = ref.beta(1.0, 1.0)
        cut_h, cut_w = int(H * np.sqrt(1 - l0)), int(W * np.sqrt(1 - l0))
        cy, cx = ref.integers(H), ref.integers(W)
        h = min(cy + cut_h // 2, H) - max(cy - cut_h // 2, 0)
        w = min(cx + cut_w // 2, W) - max(cx - cut_w // 2, 0)
        ref_lam.append(1 - h * w / (H * W))
    # 10240 samples: the standard error of the mean is ~0.003.
    assert abs(lam.mean() - np.mean(ref_lam)) < 0.015
    assert 0.55 < lam.mean() < 0.70  # clipping pushes E[lam] above Beta(1, 1)'s 0.5
    heights, widths = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert boxes[:, 0].min() == 0 and boxes[:, 1].min() == 0  # top and left edges reached
    assert boxes[:, 2].max() == H and boxes[:, 3].max() == W  # bottom and right edges reached
    # Sides are 2 * (cut // 2); cut == H needs lam0 == 0 exactly, so H - 2 is the practical top.
    assert heights.min() == 0 and H - 2 <= heights.max() <= H  # heights span 0..38 of 40
    assert widths.min() == 0 and W - 2 <= widths.max() <= W  # widths span 0..70 of 72, not 0..40


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_seed_same_batches_other_seed_other_batches(backend):
    rng = np.random.default_rng(7)
    batches = [random_batch(rng, 8, (H, W, 3)) for _ in range(3)]

    def lam_and_images(seed):
        outs = list(run_cutmix(batches, backend=backend, mode="elem", seed=seed))
        return np.concatenate([o[4] for o in outs]), np.concatenate([o[1] for o in outs])

    (la, ia), (lb, ib), (lc, ic) = (lam_and_images(s) for s in (11, 11, 12))
    np.testing.assert_array_equal(la, lb)
    np.testing.assert_array_equal(ia, ib)
    assert not np.array_equal(la, lc) and not np.array_equal(ia, ic)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"alpha": 0}, "nothing to mix: alpha and mixup_alpha are both 0"),
        ({"alpha": -2}, "alpha must be a number >= 0, got -2"),
        ({"mixup_alpha": 0.2, "switch_prob": 2}, r"switch_prob must be a number in \[0, 1\], got 2"),
        ({"minmax": (0.5, 0.2)}, r"minmax must be \(min, max\) with 0 < min < max <= 1, got \(0.5, 0.2\)"),
        ({"prob": 2.0}, r"prob must be a number in \[0, 1\], got 2.0"),
        ({"mode": "pair"}, "mode must be one of .*, got 'pair'"),
        ({"backend": "cupy"}, "backend must be one of .*, got 'cupy'"),
        ({"layout": "NHWC"}, "layout must be one of .*, got 'NHWC'"),
    ],
    ids=["alpha", "alpha-neg", "switch", "minmax", "prob", "mode", "backend", "layout"],
)
def test_bad_arguments_fail_at_build_time(kwargs, match):
    with pytest.raises(ValueError, match=match):
        next(run_cutmix([random_batch(np.random.default_rng(0), 2, (H, W, 3))], **kwargs))


@pytest.mark.parametrize(
    "shapes, match",
    [([(H, W, 3), (H, W - 2, 3)], "one image shape"), ([(1, 5, 3), (1, 5, 3)], "at least 2x2")],
    ids=["mixed-shapes", "tiny"],
)
@pytest.mark.parametrize("backend, layout", [("python", "HWC"), ("python", "CHW"), ("native", "HWC")])
def test_bad_batches_fail_with_a_clear_message(shapes, match, backend, layout):
    """Checked by the compiled operator (HWC) or by the Python one (CHW): the same words."""
    batch = [np.zeros(s if layout == "HWC" else s[::-1], np.uint8) for s in shapes]
    with pytest.raises(RuntimeError, match=match):
        list(run_cutmix([batch], backend=backend, layout=layout))


def test_native_backend_on_the_cpu_is_hwc_and_uint8_or_float32():
    with pytest.raises(ValueError, match="backend 'native' on the CPU takes HWC images; use backend 'ops'"):
        next(run_cutmix([random_batch(np.random.default_rng(0), 2, (3, H, W))], backend="native", layout="CHW"))
    with pytest.raises(RuntimeError, match="takes uint8 or float32 images, got int16"):
        list(run_cutmix([[np.zeros((H, W, 3), np.int16)] * 2], backend="native"))


def test_ops_backend_rejects_mixed_shapes():
    batch = [np.zeros((H, W, 3), np.uint8), np.zeros((H, W - 2, 3), np.uint8)]
    with pytest.raises(RuntimeError, match="multi_paste"):
        list(run_cutmix([batch], backend="ops"))


@pytest.mark.gpu
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["HWC", "CHW"])
@pytest.mark.parametrize("recipe", [{}, {"mixup_alpha": 0.4}], ids=["cutmix", "with-mixup"])
def test_gpu_backend_matches_reference(backend, layout, recipe):
    rng = np.random.default_rng(8)
    shape = (H, W, 3) if layout == "HWC" else (3, H, W)
    batches = [random_batch(rng, 8, shape) for _ in range(3)]
    for out in run_cutmix(batches, device="gpu", backend=backend, layout=layout, mode="elem", **recipe):
        images, mixed, la, lb, lam, perm, boxes = out[:7]
        blend = out[7] > 0 if recipe else None
        params = CutMixParams(perm=perm.astype(np.int64), boxes=boxes, lam=lam, blend=blend)
        ref = apply_cutmix(images, la, params, layout)
        np.testing.assert_array_equal(mixed, ref[0])
        np.testing.assert_array_equal(lb, ref[2])


def test_public_name():
    assert dali_cutmix.cutmix is not None and callable(dali_cutmix.cutmix)


def test_python_backend_on_the_cpu_is_one_python_operator():
    """Its speed rests on this: one Python operator and one DALI draw, not ~40 DALI operators."""
    batch = [np.zeros((H, W, 3), np.uint8)] * 4

    @pipeline_def(batch_size=4, num_threads=1, device_id=None, seed=0)
    def pipe():
        images = fn.external_source(source=[batch], cycle=True, layout="HWC")
        labels = fn.external_source(source=[[np.array([0], np.int32)] * 4], cycle=True)
        return tuple(dali_cutmix.cutmix(images, labels, backend="python", mixup_alpha=0.2))

    p = pipe()
    p.build()
    # two external sources, the draw, the Python operator (draws), the compiled one (pixels)
    assert len(p._ops) == 5
