"""The DALI CutMix operator, on real pipeline output, against the pure reference."""

import pytest

pytest.importorskip("nvidia.dali", exc_type=ImportError)  # `pytest -m gpu` collects without DALI

import numpy as np
from conftest import REPLAY_CONFIGS, backends, box_lam, random_batch, reference_mix
from dali_helpers import mix_arrays, packed_node
from nvidia.dali import fn, pipeline_def, types

import dali_cutmix
from dali_cutmix.backends.graph import DALI_OPS
from dali_cutmix.backends.python import TorchMix, torch_mix
from dali_cutmix.backends.stock_ops import ops_params, paste_ops
from dali_cutmix.backends.torch_mix import pack
from dali_cutmix.ops import DEFAULT_BACKEND, REFUSED
from dali_cutmix.sampling import NUMPY_OPS, CutMixParams, cutmix_box

BACKENDS, BACKEND_LAYOUTS = backends()

H, W = 40, 72


def params_of(out, mixup=False):
    lam, perm, boxes = out[4], out[5], out[6]
    blend = out[7] > 0 if mixup else None
    return CutMixParams(perm=perm.astype(np.int64), boxes=boxes, lam=lam, blend=blend)


@pytest.mark.parametrize("backend, layout", BACKEND_LAYOUTS)
@pytest.mark.parametrize("dtype", [np.uint8, np.float32], ids=["uint8", "float32"])
@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_backend_pixels_follow_its_own_params_and_lam_its_boxes(backend, layout, dtype, mode):
    """Pixels: the independent loop oracle fed the backend's own parameters; lam: from the boxes."""
    rng = np.random.default_rng(0)
    shape = (H, W, 3) if layout == "HWC" else (3, H, W)
    batches = [random_batch(rng, 8, shape, dtype) for _ in range(3)]
    for out in mix_arrays(batches, backend=backend, layout=layout, mode=mode):
        images, mixed, la, lb, lam, perm, boxes = out
        assert mixed.dtype == images.dtype and mixed.shape == images.shape
        np.testing.assert_array_equal(mixed, reference_mix(images, params_of(out), layout))
        np.testing.assert_array_equal(lb, la[perm])
        assert lam.dtype == np.float32 and lam.shape == (8,)
        np.testing.assert_array_equal(lam, box_lam(boxes, H, W))


RECIPES = {
    "cutmix": {},
    "prob-0.5": {"prob": 0.5},
    "mixup-switch": {"mixup_alpha": 0.4, "switch_prob": 0.5},
    "mixup-only": {"alpha": 0.0, "mixup_alpha": 0.4},
    "minmax": {"minmax": (0.2, 0.8)},
    "no-self": {"no_self": True},
}


def test_the_gpu_callback_keeps_no_stale_pixels_or_torch_threads_between_batches():
    """On a CPU TorchMix writes into buffers kept from batch to batch: batches of another size or
    shape, and batches after them, still equal the oracle; torch's thread count comes back."""
    import torch
    from torch.utils.dlpack import to_dlpack

    rng = np.random.default_rng(5)
    mix, threads = TorchMix("HWC", mixup=False), torch.get_num_threads()
    for batch_size, shape in [(6, (H, W, 3)), (6, (H, W, 3)), (4, (W, H, 3)), (6, (H, W, 3))]:
        images = random_batch(rng, batch_size, shape)
        boxes = np.sort(rng.integers(0, [[shape[0], shape[1]]] * 2, (batch_size, 2, 2)), axis=1).reshape(-1, 4)
        params = CutMixParams(perm=rng.permutation(batch_size), boxes=boxes, lam=box_lam(boxes, *shape[:2]))
        packed = pack(params.perm, params.boxes, params.lam)
        out = mix([to_dlpack(torch.from_numpy(x)) for x in images], [to_dlpack(torch.from_numpy(r)) for r in packed])
        mixed = np.stack([torch.from_dlpack(o).numpy() for o in out])
        np.testing.assert_array_equal(mixed, reference_mix(np.stack(images), params, "HWC"))
        assert torch.get_num_threads() == threads


@pytest.mark.parametrize("recipe", RECIPES.values(), ids=RECIPES.keys())
@pytest.mark.parametrize("mode", ["batch", "elem"])
@pytest.mark.parametrize("layout", ["HWC", "CHW"])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32], ids=["uint8", "float32"])
def test_the_gpu_callback_on_cpu_tensors_is_the_oracle(recipe, mode, layout, dtype):
    """The python backend's pixels are TorchMix, one callback for both devices: run here on CPU
    tensors, it must equal the loop oracle byte for byte for every recipe and mode."""
    rng = np.random.default_rng(9)
    shape = (H, W, 3) if layout == "HWC" else (3, H, W)
    batches = [random_batch(rng, 12, shape, dtype) for _ in range(3)]
    mixup = "mixup_alpha" in recipe
    for out in mix_arrays(batches, backend="python", layout=layout, mode=mode, seed=3, **recipe):
        images, mixed, la, lb = out[:4]
        np.testing.assert_array_equal(mixed, reference_mix(images, params_of(out, mixup), layout))
        np.testing.assert_array_equal(lb, la[out[5]])


@pytest.mark.parametrize("config", REPLAY_CONFIGS, ids=["cutmix", "mixup-minmax"])
def test_torch_and_stock_pastes_identical_on_shared_params(config):
    """One pipeline, one sampling (DALI's draws), two pastes: equal byte for byte."""
    rng = np.random.default_rng(1)
    batches = [random_batch(rng, 16, (H, W, 3)) for _ in range(4)]
    feed = iter(batches * 2)

    @pipeline_def(batch_size=16, num_threads=1, device_id=None, seed=7)
    def pipe():
        images = fn.external_source(source=lambda: next(feed), layout="HWC")
        sampled = ops_params(images, config, layout="HWC")
        params = sampled.params._replace(packed=packed_node(sampled.params))  # as the python sampler packs them
        return paste_ops(images, sampled, layout="HWC"), torch_mix(images, params, layout="HWC")[0]

    p = pipe(prefetch_queue_depth=1)
    p.build()
    for _ in range(4):
        stock, torch_ = (o.as_array() for o in p.run())
        np.testing.assert_array_equal(stock, torch_)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_a_per_sample_prob_means_the_same_on_every_backend(backend, mode):
    """elem: sample i is mixed with probability prob[i]; batch: the batch with prob[0]."""
    batch_size = 8
    rng = np.random.default_rng(10)
    batches = [random_batch(rng, batch_size, (H, W, 3)) for _ in range(12)]
    if mode == "elem":
        prob = np.array([1, 0] * (batch_size // 2), np.float32)
    else:
        prob = np.array([0] + [1] * (batch_size - 1), np.float32)  # only sample 0's value counts
    mixed_count = np.zeros(batch_size)
    for out in mix_arrays(batches, backend=backend, mode=mode, prob=prob, minmax=(0.3, 0.6)):
        mixed_count += out[4] < 1.0
    if mode == "elem":
        assert (mixed_count[1::2] == 0).all() and (mixed_count[0::2] == len(batches)).all()
    else:
        assert (mixed_count == 0).all()


@pytest.mark.parametrize(
    "backend, match",
    [("native", "backend 'native' is a CPU operator"), ("ops", "backend 'ops' does not run on the GPU: .*paste_gpu.h")],
)
def test_backends_that_cannot_run_on_the_gpu_refuse_with_the_reason(backend, match):
    @pipeline_def(batch_size=2, num_threads=1, device_id=0)
    def pipe():
        images = fn.external_source(name="images", device="gpu", layout="HWC")
        return tuple(dali_cutmix.cutmix(images, fn.external_source(name="labels"), backend=backend))

    with pytest.raises(ValueError, match=match):
        pipe()


def test_the_default_backend_follows_the_device():
    assert DEFAULT_BACKEND == {"cpu": "native", "gpu": "python"}
    assert all((DEFAULT_BACKEND[d], d) not in REFUSED for d in DEFAULT_BACKEND)


@pytest.mark.parametrize("backend", BACKENDS)
def test_pipeline_output_invariants(backend):
    rng = np.random.default_rng(2)
    batches = [random_batch(rng, 16, (H, W, 3)) for _ in range(4)]
    for images, mixed, la, lb, lam, perm, boxes in mix_arrays(batches, backend=backend, mode="elem"):
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
    for images, mixed, _la, _lb, lam, *_ in mix_arrays(batches, backend=backend, prob=0.0):
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
    for out in mix_arrays(batches, backend=backend, mode="elem", alpha=1.0):
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
        outs = list(mix_arrays(batches, backend=backend, mode="elem", seed=seed))
        return np.concatenate([o[4] for o in outs]), np.concatenate([o[1] for o in outs])

    (la, ia), (lb, ib), (lc, ic) = (lam_and_images(s) for s in (11, 11, 12))
    np.testing.assert_array_equal(la, lb)
    np.testing.assert_array_equal(ia, ib)
    assert not np.array_equal(la, lc) and not np.array_equal(ia, ic)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"alpha": 0}, "nothing to mix: alpha and mixup_alpha are both 0"),
        ({"alpha": -2}, "alpha must be a finite number >= 0, got -2"),
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
        next(mix_arrays([random_batch(np.random.default_rng(0), 2, (H, W, 3))], **kwargs))


@pytest.mark.parametrize(
    "shapes, match",
    [([(H, W, 3), (H, W - 2, 3)], "one image shape"), ([(1, 5, 3), (1, 5, 3)], "at least 2x2")],
    ids=["mixed-shapes", "tiny"],
)
@pytest.mark.parametrize("backend, layout", BACKEND_LAYOUTS)
def test_bad_batches_fail_with_a_clear_message(shapes, match, backend, layout):
    """Checked by the compiled operator or by the Python sampler: the same words on every backend."""
    batch = [np.zeros(s if layout == "HWC" else s[::-1], np.uint8) for s in shapes]
    with pytest.raises(RuntimeError, match=match):
        list(mix_arrays([batch], backend=backend, layout=layout))


def test_native_backend_is_hwc_and_uint8_or_float32():
    with pytest.raises(ValueError, match="backend 'native' takes HWC images; use backend 'python' or 'ops'"):
        next(mix_arrays([random_batch(np.random.default_rng(0), 2, (3, H, W))], backend="native", layout="CHW"))
    with pytest.raises(RuntimeError, match="takes uint8 or float32 images, got int16"):
        list(mix_arrays([[np.zeros((H, W, 3), np.int16)] * 2], backend="native"))


@pytest.mark.gpu
@pytest.mark.parametrize("recipe", RECIPES.values(), ids=RECIPES.keys())
@pytest.mark.parametrize("mode", ["batch", "elem"])
@pytest.mark.parametrize("layout", ["HWC", "CHW"])
def test_gpu_python_backend_is_the_oracle(recipe, mode, layout):
    rng = np.random.default_rng(8)
    shape = (H, W, 3) if layout == "HWC" else (3, H, W)
    batches = [random_batch(rng, 8, shape) for _ in range(3)]
    mixup = "mixup_alpha" in recipe
    for out in mix_arrays(batches, device="gpu", backend="python", layout=layout, mode=mode, **recipe):
        images, mixed, la, lb = out[:4]
        np.testing.assert_array_equal(mixed, reference_mix(images, params_of(out, mixup), layout))
        np.testing.assert_array_equal(lb, la[out[5]])


def bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """An independent oracle of the resize: pixel centres aligned, the border repeated, float64."""

    def taps(out, n):
        s = (np.arange(out) + 0.5) * (n / out) - 0.5
        i = np.floor(s).astype(int)
        return np.clip(i, 0, n - 1), np.clip(i + 1, 0, n - 1), (s - i)

    y0, y1, wy = taps(height, image.shape[0])
    x0, x1, wx = taps(width, image.shape[1])
    img = image.astype(np.float64)
    rows = img[y0] + (img[y1] - img[y0]) * wy[:, None, None]
    return rows[:, x0] + (rows[:, x1] - rows[:, x0]) * wx[None, :, None]


def resized_mix(backend, batch, size, **kwargs):
    labels = [np.array([i], dtype=np.int32) for i in range(len(batch))]

    @pipeline_def(batch_size=len(batch), num_threads=2, device_id=None, seed=7)
    def pipe():
        images = fn.external_source(source=lambda: batch, layout="HWC")
        out = dali_cutmix.cutmix(images, fn.external_source(source=lambda: labels), backend=backend, resize=size,
                                 return_params=True, **kwargs)  # fmt: skip
        return (*out, out.params.perm, out.params.boxes)

    p = pipe()
    p.build()
    return tuple(o.as_array() for o in p.run())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("size", [(32, 48), (90, 20)], ids=["down-and-up", "tall"])
@pytest.mark.parametrize("prob", [1.0, 0.0], ids=["mixed", "prob-0"])  # prob 0: the no-CutMix CPU pipeline's path
def test_resize_takes_crops_of_any_shape_and_resizes_them_bilinearly(backend, size, prob):
    """The native backend's fused resize and fn.resize (the others) against a NumPy bilinear
    resize then the loop oracle: within one level where float32 rounds a value near .5 the other
    way (1-2% of the values of this noise)."""
    rng = np.random.default_rng(1)
    shapes = [(40, 72, 3), (17, 9, 3), (64, 64, 3), (33, 100, 3), (5, 80, 3), (120, 30, 3)]
    batch = [rng.integers(0, 256, s, dtype=np.uint8) for s in shapes]
    mixed, la, lb, lam, perm, boxes = resized_mix(backend, batch, size, prob=prob)
    assert (lam < 1).any() == (prob == 1.0)
    assert mixed.shape == (len(batch), *size, 3) and mixed.dtype == np.uint8
    resized = np.stack([np.floor(bilinear(b, *size) + 0.5).astype(np.uint8) for b in batch])
    params = CutMixParams(perm=perm.astype(np.int64), boxes=boxes, lam=lam, blend=None)
    diff = np.abs(mixed.astype(int) - reference_mix(resized, params).astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.03, (diff > 0).mean()
    np.testing.assert_array_equal(lb, la[perm])
    np.testing.assert_array_equal(lam, box_lam(boxes, *size))


def test_resize_takes_its_target_and_uint8_images_on_the_native_backend():
    with pytest.raises(ValueError, match=r"resize takes the \(H, W\) to resize the images to \(or None\), not a bool"):
        resized_mix("native", [np.zeros((8, 8, 3), np.uint8)] * 2, True)
    with pytest.raises(RuntimeError, match=r"size \(the fused resize\) takes uint8 images"):
        resized_mix("native", [np.zeros((8, 8, 3), np.float32)] * 2, (4, 4))


@pytest.mark.parametrize("mixup", [False, True], ids=["cutmix", "mixup"])
@pytest.mark.parametrize("return_params", [False, True], ids=["plain", "params"])
def test_cutmix_returns_one_named_type_every_time(mixup, return_params):
    """Mixed: four DataNodes that unpack and return from a pipeline as they are; params or None."""
    seen = {}

    @pipeline_def(batch_size=2, num_threads=1, device_id=None)
    def pipe():
        images = fn.external_source(source=lambda: [np.zeros((8, 8, 3), np.uint8)] * 2)
        labels = fn.external_source(source=lambda: [np.array([0], np.int32)] * 2)
        out = dali_cutmix.cutmix(images, labels, mixup_alpha=0.4 if mixup else 0.0, return_params=return_params)
        seen["out"] = out
        images, labels_a, labels_b, lam = out
        assert (images, labels_a, labels_b, lam) == (out.images, out.labels_a, out.labels_b, out.lam)
        return out

    p = pipe()
    p.build()
    out = seen["out"]
    assert type(out) is dali_cutmix.Mixed and len(p.run()) == 4
    if not return_params:
        assert out.params is None
    else:
        assert out.params.perm is not None and out.params.boxes is not None
        assert (out.params.blend is not None) == mixup


def test_a_per_sample_chance_has_its_own_argument():
    @pipeline_def(batch_size=2, num_threads=1, device_id=None)
    def pipe(node_as_prob):
        images = fn.external_source(source=lambda: [np.zeros((8, 8, 3), np.uint8)] * 2)
        labels = fn.external_source(source=lambda: [np.array([0])] * 2)
        if node_as_prob:
            return tuple(dali_cutmix.cutmix(images, labels, prob=fn.random.uniform(range=[0.0, 1.0])))
        return tuple(dali_cutmix.cutmix(images, labels, sample_prob=0.5))

    with pytest.raises(ValueError, match="a per-sample DataNode of chances goes in sample_prob="):
        pipe(True).build()
    with pytest.raises(ValueError, match=r"sample_prob must be a DataNode \(a number is the recipe's prob=\), got 0.5"):
        pipe(False).build()


@pytest.mark.parametrize("layout", ["CHW", "HWC"])
@pytest.mark.parametrize("recipe", [dict(alpha=1.0), dict(alpha=1.0, mixup_alpha=0.4, switch_prob=0.5)],
                         ids=["cutmix", "cutmix-mixup"])  # fmt: skip
def test_the_fused_resize_writes_what_fn_resize_then_the_operator_would(layout, recipe):
    """The operator given size, with a per-sample flip, normalisation and MixUp, against fn.resize
    (linear, no antialias) then the same operator on the resized batch, fed the same draws: the
    same parameters, and values within one level (1 / std after normalising) on a few values."""
    from dali_cutmix import plugin

    plugin.load()
    rng = np.random.default_rng(3)
    shapes = [(40, 72, 3), (17, 9, 3), (64, 64, 3), (33, 100, 3), (5, 80, 3), (120, 30, 3), (24, 24, 3), (50, 7, 3)]
    batch = [rng.integers(0, 256, s, dtype=np.uint8) for s in shapes]
    labels = [np.array([i], dtype=np.int32) for i in range(len(batch))]
    entropy = [np.array([0.25, 0.75], np.float32)] * len(batch)
    flips = [np.array(i % 3 == 0, dtype=np.int32) for i in range(len(batch))]
    std = [58.4, 57.1, 57.4]
    args = dict(mean=[123.7, 116.3, 103.5], std=std, output_layout=layout, dtype=types.FLOAT, mode="elem", **recipe)

    @pipeline_def(batch_size=len(batch), num_threads=2, device_id=None, seed=7)
    def pipe(fused):
        images = fn.external_source(source=lambda: batch, layout="HWC")
        mirror = fn.external_source(source=lambda: flips)
        inputs = (fn.external_source(source=lambda: labels), fn.external_source(source=lambda: entropy))
        if fused:
            return tuple(fn.dali_cutmix.mix(images, *inputs, size=[30, 44], mirror=mirror, **args))
        resized = fn.resize(images, size=[30, 44], interp_type=types.INTERP_LINEAR, antialias=False)
        return tuple(fn.dali_cutmix.mix(resized, *inputs, mirror=mirror, **args))

    outs = []
    for fused in (True, False):
        p = pipe(fused)
        p.build()
        outs.append([o.as_array() for o in p.run()])
    (fused, *fused_params), (reference, *reference_params) = outs
    for a, b in zip(fused_params, reference_params):
        np.testing.assert_array_equal(a, b)
    blend = fused_params[4].astype(bool)
    assert (fused_params[1] < 1).all() and (blend.any() and not blend.all()) == ("mixup_alpha" in recipe)
    levels = np.abs(fused - reference) * np.array(std, np.float32).reshape((3, 1, 1) if layout == "CHW" else (3,))
    assert levels.max() <= 1.001 and (levels > 0.01).mean() < 0.03, (levels > 0.01).mean()


def test_the_operator_passes_an_empty_batch_through():
    """A batch of no samples (an external source's last, empty one) gives six empty outputs."""
    from dali_cutmix import plugin

    plugin.load()
    batches = iter([[np.zeros((8, 8, 3), np.uint8)] * 2, []])

    @pipeline_def(batch_size=2, num_threads=1, device_id=None, seed=1)
    def pipe():
        images = fn.external_source(source=lambda: next(batches), layout="HWC")
        labels = fn.cast(images.shape()[0:1], dtype=types.INT32)
        entropy = fn.random.uniform(range=[0.0, 1.0], shape=[2])
        return tuple(fn.dali_cutmix.mix(images, labels, entropy, size=[4, 4], alpha=1.0))

    p = pipe()
    p.build()
    assert [len(o) for o in p.run()] == [2] * 6
    assert [len(o) for o in p.run()] == [0] * 6
