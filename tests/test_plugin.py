"""The compiled operator ``fn.dali_cutmix.mix``: replaying given parameters, fused normalisation,
the python backend's fallback, and what a failed build says."""

from types import SimpleNamespace

import numpy as np
import pytest
from conftest import REPLAY_CONFIGS, random_batch, run_cutmix
from nvidia.dali import fn, pipeline_def, types

from dali_cutmix import plugin
from dali_cutmix.mix import MixConfig, mix_from_draws
from dali_cutmix.ops import paste_native, sample_params

H, W = 40, 72
MEAN, STD = [123.7, 116.3, 103.5], [58.4, 57.1, 57.4]


@pytest.mark.parametrize("config", REPLAY_CONFIGS, ids=["cutmix", "mixup-minmax"])
def test_given_parameters_paste_like_the_ops_graph(config):
    """The ops graph draws and pastes; the compiled operator replays its draws: same bytes."""
    rng = np.random.default_rng(1)
    batches = [random_batch(rng, 16, (H, W, 3)) for _ in range(3)]
    labels = [np.array([i], np.int32) for i in range(16)]
    feed = iter(batches)

    @pipeline_def(batch_size=16, num_threads=1, device_id=None, seed=7)
    def drawn():
        images = fn.external_source(source=lambda: next(feed), layout="HWC")
        s = sample_params(images, config, layout="HWC")
        blend = s.blend if s.blend is not None else s.lam * 0.0
        return images, paste_native(images, s, layout="HWC"), s.perm, s.boxes, s.lam, blend

    p = drawn(prefetch_queue_depth=1)
    p.build()
    runs = [[o.as_array() for o in p.run()] for _ in batches]
    packed = [np.concatenate([perm[:, None], boxes, lam[:, None], blend[:, None]], 1).astype(np.float32)
              for _, _, perm, boxes, lam, blend in runs]  # fmt: skip
    feed_images, feed_params = iter([r[0] for r in runs]), iter(packed)

    @pipeline_def(batch_size=16, num_threads=2, device_id=None)
    def replayed():
        images = fn.external_source(source=lambda: list(next(feed_images)), layout="HWC")
        params = fn.external_source(source=lambda: list(next(feed_params)))
        lab = fn.external_source(source=lambda: labels)
        return tuple(fn.dali_cutmix.mix(images, lab, params=params))

    plugin.load()
    q = replayed(prefetch_queue_depth=1)
    q.build()
    for _, want, perm, *_ in runs:
        mixed, labels_b, *_ = (o.as_array() for o in q.run())
        np.testing.assert_array_equal(mixed, want)
        np.testing.assert_array_equal(labels_b[:, 0], perm)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32], ids=["uint8", "float32"])
@pytest.mark.parametrize("output_layout", ["CHW", "HWC"])
@pytest.mark.parametrize("recipe", [{}, {"mixup_alpha": 0.4, "mode": "elem"}], ids=["cutmix", "with-mixup"])
def test_fused_normalisation_is_crop_mirror_normalize_of_the_mix(dtype, output_layout, recipe):
    """One draw (one entropy node), two operators: mix-and-normalise equals mix, then DALI's own
    crop_mirror_normalize with the same per-sample flips, bit for bit."""
    rng = np.random.default_rng(2)
    batches = [random_batch(rng, 12, (H, W, 3), dtype) for _ in range(3)]
    feed = iter(batches)
    plugin.load()

    @pipeline_def(batch_size=12, num_threads=2, device_id=None, seed=3)
    def pipe():
        images = fn.external_source(source=lambda: next(feed), layout="HWC")
        labels = images.shape()[0:1]
        entropy = fn.random.uniform(range=[0.0, 1.0], shape=[2])
        mirror = fn.random.coin_flip()
        norm = {"mean": MEAN, "std": STD, "mirror": mirror, "output_layout": output_layout}
        fused = fn.dali_cutmix.mix(images, labels, entropy, dtype=types.FLOAT, **norm, **recipe)[0]
        mixed = fn.dali_cutmix.mix(images, labels, entropy, **recipe)[0]
        return fused, fn.crop_mirror_normalize(mixed, dtype=types.FLOAT, **norm), mirror

    p = pipe(prefetch_queue_depth=1)
    p.build()
    flips = []
    for _ in batches:
        fused, reference, mirror = (o.as_array() for o in p.run())
        assert fused.dtype == np.float32 and fused.shape == reference.shape
        np.testing.assert_array_equal(fused, reference)
        flips.append(mirror)
    assert 0 < np.concatenate(flips).mean() < 1  # both flipped and unflipped samples were seen


@pytest.mark.parametrize(
    "recipe",
    [{"mode": "elem", "mixup_alpha": 0.4, "prob": 0.9}, {"mode": "batch"}, {"mode": "elem", "minmax": (0.2, 0.8)}],
    ids=["elem-mixup", "batch", "minmax"],
)
def test_python_backend_gives_the_same_bytes_without_the_plugin(monkeypatch, recipe):
    """NumPy draws either way; then the compiled operator (its box formula, its pixels) or NumPy
    (mix_from_draws, mix_samples) does the rest: no difference at all."""
    rng = np.random.default_rng(3)
    batches = [random_batch(rng, 16, (H, W, 3)) for _ in range(3)]
    recipe = {"backend": "python", "seed": 5, **recipe}
    fused = list(run_cutmix(batches, **recipe))
    monkeypatch.setattr(plugin, "available", lambda: False)
    numpy = list(run_cutmix(batches, **recipe))
    for a, b in zip(fused, numpy):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("minmax", [None, (0.2, 0.8)], ids=["cutmix", "minmax"])
def test_the_box_formula_is_numpys_bit_for_bit(minmax):
    """Given draws, edge cases included, the operator's boxes and lambdas are mix_from_draws's."""
    rng = np.random.default_rng(4)
    n = 256
    config = MixConfig(mode="elem", mixup_alpha=0.5, minmax=minmax)
    draws = np.zeros((n, 9), np.float32)
    draws[:, 0] = rng.permutation(n)
    draws[:, 1] = rng.random(n) < 0.9  # mix
    draws[:, 2] = rng.random(n) < 0.5  # cut
    draws[:, 3] = rng.beta(0.5, 0.5, n)  # lam_cut
    draws[:4, 3] = [0.0, 1.0, 0.5, 1e-7]
    draws[:, 4] = rng.random(n)  # lam_mix
    draws[:, 5:9] = rng.random((n, 4), dtype=np.float32)
    draws[:2, 5] = [0.0, np.nextafter(np.float32(1), np.float32(0))]
    batch = [np.zeros((H, W, 3), np.uint8)] * n
    plugin.load()

    @pipeline_def(batch_size=n, num_threads=1, device_id=None)
    def pipe():
        images = fn.external_source(source=[batch], cycle=True, layout="HWC")
        given = fn.external_source(source=[list(draws)], cycle=True)
        extra = {"minmax": list(minmax)} if minmax else {}
        return tuple(fn.dali_cutmix.mix(images, images.shape(), draws=given, mixup_alpha=0.5, **extra))

    p = pipe()
    p.build()
    _, _, lam, perm, boxes, blend = (o.as_array() for o in p.run())
    d = SimpleNamespace(mix=draws[:, 1], cut=draws[:, 2], lam_cut=draws[:, 3], lam_mix=draws[:, 4],
                        u=draws[:, 5:9] if minmax else draws[:, 5:7])  # fmt: skip
    lo, hi, _, want_lam, want_blend = mix_from_draws(d, np.array([H, W], np.float32), config)
    np.testing.assert_array_equal(boxes, np.concatenate([lo, hi], 1).astype(np.int32))
    np.testing.assert_array_equal(lam, want_lam)
    np.testing.assert_array_equal(blend, want_blend)
    np.testing.assert_array_equal(perm, draws[:, 0].astype(np.int32))


def test_without_a_compiler_the_python_backend_says_why_and_falls_back(monkeypatch, tmp_path):
    monkeypatch.setattr(plugin, "_loaded", None)
    monkeypatch.setenv("DALI_CUTMIX_BUILD_DIR", str(tmp_path))
    monkeypatch.setenv("CXX", "/nonexistent/g++")
    batches = [random_batch(np.random.default_rng(5), 4, (H, W, 3))]
    with pytest.warns(UserWarning, match="no C\\+\\+ compiler .* the python backend mixes with NumPy instead"):
        (out,) = run_cutmix(batches, backend="python")
    assert out[1].shape == (4, H, W, 3)
    with pytest.raises(plugin.PluginError, match="no C\\+\\+ compiler"):
        next(run_cutmix(batches, backend="native"))


def test_a_build_replaces_older_builds(monkeypatch, tmp_path):
    monkeypatch.setenv("DALI_CUTMIX_BUILD_DIR", str(tmp_path))
    (tmp_path / "libdali_cutmix_0000000000000000.so").write_bytes(b"old")
    built = plugin.build()
    assert [p.name for p in tmp_path.glob("*.so")] == [built.name] and built.stat().st_size > 10000


def test_a_missing_compiler_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv("DALI_CUTMIX_BUILD_DIR", str(tmp_path))
    monkeypatch.setenv("CXX", "/nonexistent/g++")
    with pytest.raises(plugin.PluginError, match=r"no C\+\+ compiler .*CXX='/nonexistent/g\+\+' is not a program"):
        plugin.build()


def test_a_failed_build_says_the_file_and_the_first_error(monkeypatch, tmp_path):
    broken = tmp_path / "broken.cc"
    broken.write_text("int main( {\n")
    monkeypatch.setenv("DALI_CUTMIX_BUILD_DIR", str(tmp_path))
    monkeypatch.setattr(plugin, "SOURCE", broken)
    with pytest.raises(plugin.PluginError) as info:
        plugin.build()
    message = str(info.value)
    assert message.startswith(f"building {broken} failed: ") and "error" in message and "\n" not in message
    assert not list(tmp_path.glob("*.so"))  # nothing half-written is left to load
