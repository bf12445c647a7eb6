"""The compiled operator ``fn.dali_cutmix.mix``: replaying given parameters, fused normalisation,
the python backend's fallback, and what a failed build says."""

import pytest

pytest.importorskip("nvidia.dali", exc_type=ImportError)  # `pytest -m gpu` collects without DALI

import numpy as np
from conftest import random_batch
from nvidia.dali import fn, pipeline_def, types

from dali_cutmix import plugin

H, W = 40, 72
MEAN, STD = [123.7, 116.3, 103.5], [58.4, 57.1, 57.4]


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


def _mix_with(inputs, **args):
    """Run ``fn.dali_cutmix.mix`` once on fed inputs (lists of arrays, in input order)."""
    plugin.load()
    n = len(inputs[0])

    @pipeline_def(batch_size=n, num_threads=1, device_id=None)
    def pipe():
        nodes = [fn.external_source(source=[list(x)], cycle=True) for x in inputs]
        return tuple(fn.dali_cutmix.mix(*nodes, **args))

    p = pipe()
    p.build()
    return p.run()


IMAGES = [np.zeros((H, W, 3), np.uint8)] * 4
LABELS = [np.array([i], np.int32) for i in range(4)]
ENTROPY = [np.array([0.25, 0.5], np.float32)] * 4


@pytest.mark.parametrize(
    "inputs, match",
    [
        ([IMAGES, LABELS, [np.zeros(1, np.float32)] * 4], "entropy must be float32 with at least 2 values"),
        (
            [IMAGES, LABELS, ENTROPY, [np.zeros(2, np.float32)] * 4],
            r"prob must be a float32 scalar per sample, sample 0",
        ),
        ([IMAGES, LABELS, ENTROPY, [np.float32(1.5)] * 4], r"prob\[0\] = 1.5 is not in \[0, 1\]"),
        ([IMAGES, LABELS, ENTROPY, [np.float32(np.nan)] * 4], r"prob\[0\] = nan is not in \[0, 1\]"),
        ([IMAGES, LABELS, ENTROPY, [np.int32(1)] * 4], "prob must be a float32 scalar per sample, got int32"),
    ],
    ids=["short-entropy", "prob-shape", "prob-range", "prob-nan", "prob-dtype"],
)
def test_the_operator_checks_every_input_and_names_it(inputs, match):
    with pytest.raises(RuntimeError, match=match):
        _mix_with([[np.asarray(v) for v in x] for x in inputs])


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
