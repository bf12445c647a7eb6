"""ResizeMix (``paste="resize"``) and SaliencyMix (``centre="saliency"``) on the backends: the
native operator against the oracles (its own parameters, its peaks against the library's and the
float64 oracle's), its fused resize against the operator on its own resized batch (every compiled
copy), and what each backend and flag says about them, one test for both recipes."""

import pytest

pytest.importorskip("nvidia.dali", exc_type=ImportError)  # `pytest -m gpu` collects without DALI

import numpy as np
from conftest import (
    compiled_copies,
    objects,
    random_batch,
    reference_mix,
    reference_peak,
    reference_resize_mix,
    train_args,
)
from dali_helpers import mix_arrays
from nvidia.dali import fn, pipeline_def, types

import train
from dali_cutmix.ops import default_backend
from dali_cutmix.recipe import MixConfig
from dali_cutmix.saliency import peaks
from dali_cutmix.sampling import CutMixParams

H, W = 70, 96
RECIPES = {"resizemix": {"paste": "resize"}, "saliencymix": {"centre": "saliency"}}
NAMES = {"resizemix": "ResizeMix", "saliencymix": "SaliencyMix"}
FLAGS = {"resizemix": ["--cutmix-paste", "resize"], "saliencymix": ["--cutmix-centre", "saliency"]}


def batches_of(dtype, count=3, batch_size=8, height=H, width=W, seed=0):
    """Images with an object each (a saliency peak to find); float32 ones in steps of 1/256, which
    the map reads exactly, so the uint8 oracle holds for them too."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        images = objects(rng, batch_size, height, width)
        out.append(list(images if dtype == np.uint8 else images.astype(np.float32) / 256))
    return out


def oracle(images, out, recipe):
    """The mix the oracles make with the operator's own parameters."""
    _, _, _, _, lam, perm, boxes, blend = out
    params = CutMixParams(perm=perm.astype(np.int64), boxes=boxes, lam=lam, blend=blend > 0,
                          resized="paste" in recipe)  # fmt: skip
    return (reference_resize_mix if "paste" in recipe else reference_mix)(images, params)


@pytest.mark.parametrize("recipe", RECIPES, ids=RECIPES)
@pytest.mark.parametrize("dtype", [np.uint8, np.float32], ids=["uint8", "float32"])
@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_the_native_operator_mixes_as_the_oracle(recipe, dtype, mode):
    """Pixels: the oracle fed the operator's parameters; lam: the pasted share; SaliencyMix's boxes
    hold the partner's oracle peak, centred on it unless clipped; ResizeMix's keep the aspect."""
    boxed = 0
    for out in mix_arrays(batches_of(dtype), backend="native", mode=mode, mixup_alpha=0.5, seed=4, **RECIPES[recipe]):
        images, mixed, la, lb, lam, perm, boxes, blend = out
        np.testing.assert_array_equal(mixed, oracle(images, out, RECIPES[recipe]))
        np.testing.assert_array_equal(lb, la[perm])
        for i, (y1, x1, y2, x2) in enumerate(boxes):
            if blend[i] or y2 <= y1:
                continue
            boxed += 1
            assert lam[i] == np.float32(1) - np.float32((y2 - y1) * (x2 - x1)) / np.float32(H * W)
            if recipe == "saliencymix":
                y, x = reference_peak((images[perm[i]] * (256 if dtype == np.float32 else 1)).astype(np.uint8))
                assert y1 <= y < y2 and x1 <= x < x2
                assert (y - y1 == y2 - y or y1 == 0 or y2 == H) and (x - x1 == x2 - x or x1 == 0 or x2 == W)
            else:  # one tau in [0.1, 0.8) for both sides
                low = max((y2 - y1) / H, (x2 - x1) / W, 0.1)
                assert low < min((y2 - y1 + 1) / H, (x2 - x1 + 1) / W, 0.8) + 1e-6
    assert boxed > 0


@pytest.mark.parametrize("size", [(40, 72), (70, 96), (131, 100), (50, 230)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("dtype", [np.uint8, np.float32], ids=["uint8", "float32"])
def test_the_native_peaks_are_the_librarys_on_every_grid(size, dtype):
    """At prob 0 every SaliencyMix box is empty and sits on its partner's peak: the operator's peaks,
    on grids of 1, 2, 3 and 1 pixels a cell, equal the library's (NumPy) and the float64 oracle's.
    float32 images reach past the clip and hold a NaN (read as 0, as the library reads it)."""
    rng = np.random.default_rng(size[0])
    images = objects(rng, 6, *size)
    if dtype == np.float32:
        images = images.astype(np.float32) / 256
        images[0, 5, 5, 0], images[1, 3, 3, 1], images[2, 0, 0, 2] = np.nan, 1e9, -1e9
    out = next(mix_arrays([list(images)], backend="native", centre="saliency", prob=0.0, mode="elem"))
    perm, boxes = out[5], out[6]
    library = peaks(images, "HWC")
    np.testing.assert_array_equal(boxes[:, :2], library[perm])
    np.testing.assert_array_equal(boxes[:, 2:], library[perm])
    if dtype == np.uint8:
        assert [tuple(p) for p in library] == [reference_peak(image) for image in images]


def test_the_native_resize_scale_is_the_librarys_where_its_float32_width_rounds():
    """resize_scale (0.1, 0.9): float32(0.9) - float32(0.1) is not float32(0.9 - 0.1), and at this
    entropy the operator's first box draw u (libstdc++'s generator, found by replaying Mix::Sample)
    lands where the two widths give boxes a pixel apart: the library's box is the operator's."""
    from types import SimpleNamespace

    from dali_cutmix.sampling import mix_from_draws

    scale, size, u = (0.1, 0.9), 224, np.array([[0.248883903, 0.795510411, 0.174518347]], np.float32)
    tau = np.float32(np.float32(u[0, 0]) * np.float32(scale[1] - scale[0]) + np.float32(scale[0]))
    assert np.floor(np.float32(size) * tau) == 67  # the float64 width's side: the draw tells the widths apart

    @pipeline_def(batch_size=2, num_threads=1, device_id=None, seed=0)
    def pipe():
        images = fn.external_source(source=lambda: [np.zeros((size, size, 3), np.uint8)] * 2, layout="HWC")
        labels = fn.external_source(source=lambda: [np.array([i], np.int32) for i in range(2)])
        entropy = fn.external_source(source=lambda: [np.array([0.000439584255, 0.5], np.float32)] * 2)
        return tuple(fn.dali_cutmix.mix(images, labels, entropy, paste="resize", resize_scale=list(scale)))

    p = pipe()
    p.build()
    _, _, lam, _, boxes, _ = (o.as_array() for o in p.run())
    one = np.ones(1, np.float32)
    draws = SimpleNamespace(mix=one, cut=1.0, lam_cut=one, lam_mix=one, u=u)
    config = MixConfig(paste="resize", resize_scale=scale)
    lo, hi, _, library_lam, _ = mix_from_draws(draws, np.float32([size, size]), config)
    np.testing.assert_array_equal(boxes[0], np.concatenate([lo, hi], 1)[0].astype(np.int32))
    assert hi[0, 0] - lo[0, 0] == 66 and lam[0] == library_lam[0]


def fused_pipeline(batch, recipe, *, fused, layout, mixup, isa="auto"):
    """The operator with size=, a per-sample flip and normalisation (fused), or the same operator
    on the batch it resizes itself (at prob 0, uint8 HWC: its own resized pixels), fed the same draws."""
    labels = [np.array([i], dtype=np.int32) for i in range(len(batch))]
    entropy = [np.array([0.25, 0.75], np.float32)] * len(batch)
    flips = [np.array(i % 3 == 0, dtype=np.int32) for i in range(len(batch))]
    args = dict(mean=[123.7, 116.3, 103.5], std=[58.4, 57.1, 57.4], output_layout=layout, dtype=types.FLOAT,
                mode="elem", mixup_alpha=0.4 if mixup else 0.0, isa=isa, **RECIPES[recipe])  # fmt: skip

    @pipeline_def(batch_size=len(batch), num_threads=2, device_id=None, seed=7)
    def pipe():
        images = fn.external_source(source=lambda: batch, layout="HWC")
        mirror = fn.external_source(source=lambda: flips)
        inputs = (fn.external_source(source=lambda: labels), fn.external_source(source=lambda: entropy))
        if fused:
            return tuple(fn.dali_cutmix.mix(images, *inputs, size=[60, 88], mirror=mirror, **args))
        resized = fn.dali_cutmix.mix(images, *inputs, size=[60, 88], prob=0.0)[0]
        return tuple(fn.dali_cutmix.mix(resized, *inputs, mirror=mirror, **args))

    p = pipe()
    p.build()
    return [o.as_array() for o in p.run()]


@pytest.mark.parametrize("recipe", RECIPES, ids=RECIPES)
@pytest.mark.parametrize("layout", ["CHW", "HWC"])
@pytest.mark.parametrize("mixup", [False, True], ids=["alone", "mixup"])
def test_the_fused_resize_mixes_as_the_operator_on_its_own_resized_batch(recipe, layout, mixup):
    """Byte for byte, parameters and pixels, through the flip folded into the taps and each copy of
    the pixel work: ResizeMix's box resamples the partner's resized image without writing it out,
    and SaliencyMix finds its peaks on the resized pixels."""
    from dali_cutmix import plugin

    plugin.load()
    rng = np.random.default_rng(3)
    shapes = [(40, 72), (17, 9), (64, 64), (33, 100), (15, 80), (120, 30), (24, 24), (50, 17)]
    batch = [objects(rng, 1, *s)[0] if min(s) > 12 else rng.integers(0, 256, (*s, 3), dtype=np.uint8) for s in shapes]
    reference = fused_pipeline(batch, recipe, fused=False, layout=layout, mixup=mixup)
    lam, boxes, blend = reference[2], reference[4], reference[5]
    assert ((lam < 1) & (blend == 0)).any() and (blend.any() == mixup)
    assert len({tuple(b) for b in boxes}) > 1
    for isa in compiled_copies():
        fused = fused_pipeline(batch, recipe, fused=True, layout=layout, mixup=mixup, isa=isa)
        for got, want in zip(fused, reference):
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("recipe", RECIPES, ids=RECIPES)
def test_the_ops_backend_refuses_them_in_one_line_and_native_chw_points_at_python(recipe):
    rng = np.random.default_rng(0)
    name = NAMES[recipe]
    with pytest.raises(ValueError, match=f"backend 'ops' does not run {name}.*runs on backend 'native' or 'python'"):
        list(mix_arrays([random_batch(rng, 2, (H, W, 3))], backend="ops", **RECIPES[recipe]))
    with pytest.raises(ValueError, match="backend 'native' takes HWC images; use backend 'python' for CHW"):
        list(mix_arrays([random_batch(rng, 2, (3, H, W))], backend="native", layout="CHW", **RECIPES[recipe]))


@pytest.mark.parametrize("recipe", RECIPES, ids=RECIPES)
def test_the_cpu_default_backend_for_them_is_native_for_hwc_and_python_for_chw(recipe):
    config = MixConfig(**RECIPES[recipe])
    assert default_backend("cpu", "HWC", config) == "native"
    assert default_backend("cpu", "CHW", config) == "python"
    assert default_backend("gpu", "HWC", config) == "python"


@pytest.mark.parametrize("recipe", RECIPES, ids=RECIPES)
def test_the_ops_backend_flag_with_them_is_a_usage_error_naming_it(recipe, jpeg_tree, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        train.main(train_args(jpeg_tree, tmp_path / "run", *FLAGS[recipe], "--cutmix-backend", "ops"))
    assert stop.value.code == 2
    assert f"--cutmix-backend ops: backend 'ops' does not run {NAMES[recipe]}" in capsys.readouterr().err
