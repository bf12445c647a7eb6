"""The compiled operator ``fn.dali_cutmix.mix``: replaying given parameters, fused normalisation,
the python backend's fallback, and what a failed build says."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("nvidia.dali", exc_type=ImportError)  # `pytest -m gpu` collects without DALI

import numpy as np
from conftest import compiled_copies, random_batch
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


def test_a_build_replaces_older_builds_of_its_compiler_only(monkeypatch, tmp_path):
    monkeypatch.setenv("DALI_CUTMIX_BUILD_DIR", str(tmp_path / "build"))
    monkeypatch.setenv("CXX", _fake_compiler(tmp_path, "g++ (Debian 12.2.0-14+deb12u1) 12.2.0"))
    (tmp_path / "build").mkdir()
    old = tmp_path / "build" / "libdali_cutmix_gcc12_0000000000000000.so"
    old.write_bytes(b"old")
    other = tmp_path / "build" / "libdali_cutmix_gcc11_0000000000000000.so"  # another compiler's build stays
    other.write_bytes(b"other")
    built = plugin.build()
    assert sorted(p.name for p in (tmp_path / "build").glob("*.so")) == sorted([built.name, other.name])
    assert built.name.startswith("libdali_cutmix_gcc12_") and built.read_bytes() == b"built"


def _fake_compiler(tmp_path, version_line: str) -> str:
    """A compiler that says ``version_line`` and writes b"built" to its ``-o`` file."""
    fake = tmp_path / "fake-g++"
    fake.write_text(f"""#!/bin/sh
[ "$1" = --version ] && {{ echo '{version_line}'; exit 0; }}
while [ $# -gt 0 ]; do [ "$1" = -o ] && printf built > "$2"; shift; done
""")
    fake.chmod(0o755)
    return str(fake)


@pytest.mark.parametrize(
    "version_line, refused",
    [
        ("g++ (Ubuntu 9.4.0-1ubuntu1~20.04.2) 9.4.0", "GCC 9.4.0"),
        ("gcc (GCC) 8.5.0 20210514 (Red Hat 8.5.0-4)", "GCC 8.5"),
        ("g++ (Ubuntu 11.4.0-1ubuntu1~22.04) 11.4.0", None),
    ],
    ids=["ubuntu-20.04", "rhel-8", "ubuntu-22.04"],
)
def test_a_gcc_older_than_11_is_refused_naming_it_and_what_to_install(monkeypatch, tmp_path, version_line, refused):
    monkeypatch.setenv("CXX", _fake_compiler(tmp_path, version_line))
    if refused is None:
        assert plugin.compiler()[1] == version_line
        return
    with pytest.raises(plugin.PluginError, match=rf"is {refused}.*needs GCC 11 or later: install g\+\+ 11"):
        plugin.compiler()


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
    assert message.startswith(f"building {broken} with ") and "error" in message and "\n" not in message
    assert not list(tmp_path.glob("*.so"))  # nothing half-written is left to load


def test_every_compiled_copy_writes_the_same_bytes():
    """The pixel work compiled for the portable baseline, AVX2 and AVX-512 (those this CPU runs):
    one batch of fused resizes, CutMix and MixUp per sample, flips, CHW float and HWC uint8."""
    from plugin_batch import batch

    isas = compiled_copies()
    reference = batch("portable")
    assert reference["boxes"].shape == (32, 4) and 0 < reference["mirror"].mean() < 1
    for isa in isas[1:]:
        for name, array in batch(isa).items():
            np.testing.assert_array_equal(array, reference[name], err_msg=f"{isa}: {name}")
    with pytest.raises(RuntimeError, match='isa must be "auto", "portable", "avx2" or "avx512", got "sse9"'):
        batch("sse9")


def test_gcc_11_builds_the_operator_and_it_writes_the_default_compilers_bytes(tmp_path):
    """Ubuntu 22.04's compiler generation (Debian's g++-11, which scripts/setup.sh installs where
    apt runs) builds the operator; its batch equals the default compiler's byte for byte."""
    gcc11 = shutil.which("g++-11")
    if gcc11 is None:
        pytest.skip("g++-11 is not installed (scripts/setup.sh installs it where apt runs)")
    script = Path(__file__).parent / "plugin_batch.py"
    outputs = {}
    for name, cxx in (("default", None), ("gcc11", gcc11)):
        env = {k: v for k, v in os.environ.items() if k != "CXX"} | ({"CXX": cxx} if cxx else {})
        outputs[name] = tmp_path / f"{name}.npz"
        done = subprocess.run([sys.executable, str(script), str(outputs[name])], env=env, capture_output=True,
                              text=True)  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
    default, gcc11_batch = np.load(outputs["default"]), np.load(outputs["gcc11"])
    for name in default.files:
        np.testing.assert_array_equal(gcc11_batch[name], default[name], err_msg=name)
