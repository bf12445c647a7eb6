"""The profiler and its benchmark data builder, on a tiny real-photo dataset."""

import pytest

pytest.importorskip("nvidia.dali", exc_type=ImportError)  # `pytest -m gpu` collects without DALI

import json
from pathlib import Path

import numpy as np
from PIL import Image

from dali_cutmix_bench import bench, benchdata
from pipelines.folders import load_imagenet


@pytest.fixture(scope="module")
def photo_data(tmp_path_factory):
    return benchdata.build(tmp_path_factory.mktemp("bench") / "data", images=32, classes=4, short_side=96)


def test_benchdata_is_imagenet_like(photo_data, tmp_path):
    train, val = load_imagenet(photo_data)
    assert len(train) == 32 and len(val) == 4 and len(train.classes) == 4
    for path in train.files[:8]:
        with Image.open(path) as image:
            assert image.format == "JPEG" and image.mode == "RGB" and abs(min(image.size) - 96) <= 1
    with pytest.raises(FileNotFoundError, match="apt-get install mate-backgrounds"):
        benchdata.find_photos([tmp_path / "none"])


def test_profiler_runs_every_section_and_reports(photo_data, tmp_path, capsys):
    out = tmp_path / "bench"
    bench.main(["--data", str(photo_data), "--batch-size", "8", "--image-size", "32", "--workers", "1",
                "--reps", "2", "--steps", "1", "--trainer-steps", "1", "--warmup", "1", "--output", str(out),
                "--device", "cpu", "--sections", "op,stages,pipeline,trainer,e2e,peers"])  # fmt: skip
    report = json.loads((out / "bench.json").read_text())
    groups = {row["group"] for row in report["rows"]}
    assert groups == {"cutmix op", "stages", "pipeline", "peers", "trainer", "end to end"}
    assert all(len(row["images_per_s"]) == 2 and row["median"] > 0 for row in report["rows"])
    names = {row["name"] for row in report["rows"]}
    assert {"torchvision DataLoader + v2.CutMix", "timm transforms + DataLoader + Mixup(cutmix)"} <= names
    assert any(line.startswith("verdict: ") for line in report["findings"])
    counts = {row["name"]: row["note"] for row in report["rows"] if row["group"] == "cutmix op"}
    # The native backend fuses into the normalisation: one draw and one operator replace one operator.
    assert int(counts["native backend + normalise"].split()[0]) == int(counts["normalise, no CutMix"].split()[0]) + 2
    assert int(counts["ops backend + normalise"].split()[0]) > 30
    # The python backend's floor: its pixel operator alone, one more operator than normalising.
    assert int(counts["Python operator returning its input + normalise"].split()[0]) == 5
    assert (out / "bench.png").stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "pipeline/DALI + CutMix (native): costs " in printed and "% CPU time per image" in printed
    assert "cutmix op/python backend + normalise: " in printed and " ms of CPU time) over normalising" in printed
    assert "peers: pipeline/DALI + CutMix (native) is " in printed and "target" not in printed


@pytest.mark.slow
def test_epochs_section_runs_each_configuration_alone_for_whole_epochs(photo_data, tmp_path, capsys):
    out = tmp_path / "bench"
    configs = ["DALI, no CutMix", "DALI + CutMix (python)", "DALI + CutMix (native)"]
    bench.main(["--data", str(photo_data), "--batch-size", "8", "--image-size", "32", "--workers", "1",
                "--reps", "1", "--epochs", "1", "--sections", "epochs,isa", "--output", str(out),
                "--device", "cpu", "--configs", ";".join(configs), "--steps", "1"])  # fmt: skip
    rows = json.loads((out / "bench.json").read_text())["rows"]
    epochs = [r["name"] for r in rows if r["group"] == "epochs"]
    isas = bench.cpu_isas()
    assert epochs == configs and len(rows) == len(configs) + 2 * len(isas)
    assert [r["name"] for r in rows if r["group"] == "isa op"][: len(isas)] == [
        f"operator alone, {'portable' if isa == 'portable' else isa.upper().replace('AVX512', 'AVX-512')} copy"
        for isa in isas
    ]
    assert all(r["median"] > 0 and r["cpu_ms"][0] > 0 for r in rows)
    printed = capsys.readouterr().out
    assert "epochs/DALI + CutMix (python): timings only (one repetition" in printed
    assert "costs" not in printed  # one repetition gives no paired finding


def test_the_gil_benchmark_times_both_python_operators_and_the_loop_mixer(capsys):
    from dali_cutmix_bench import gil

    assert gil.main(["--batch-size", "16", "--batches", "8"]) == 0
    printed = capsys.readouterr().out
    for name in ("sampler", "callback", "loop mixer"):
        ms = float(printed.split(f"\n{name}: ")[1].split(" ms")[0])
        assert ms > 0, name
    assert "pipeline mixing holds the GIL" in printed


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--sections", "op,warp"], "--sections: unknown section 'warp', expected some of"),
        (["--configs", "DALI, no CutMix;warp"], "--configs: unknown configuration 'warp', expected some of"),
    ],
    ids=["section", "config"],
)
def test_profiler_rejects_bad_flags(photo_data, capsys, flags, message):
    with pytest.raises(SystemExit) as info:
        bench.main(["--data", str(photo_data), *flags])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_scale_benchmark_measures_both_trees(tmp_path, capsys):
    from dali_cutmix_bench import scale

    scale.main(["--out", str(tmp_path), "--small", "1", "--large", "2"])
    figures = json.loads((tmp_path / "scale.json").read_text())
    assert [f["files"] for f in figures.values()] == [1000, 2000]
    for f in figures.values():
        assert f["scan_cached_files_per_s"] > 0 and 0 < f["build_s"] <= f["first_batch_s"]
    assert "extrapolated to 1,281,167" in capsys.readouterr().out


def test_stand_in_data_where_the_debian_packages_are_missing(tmp_path):
    """The GPU check's stand-ins: photo-like JPEGs for the profiler, learnable classes for training."""
    root = benchdata.build(tmp_path / "photos", images=8, classes=2, photos="synthetic")
    files = sorted((root / "train").rglob("*.JPEG"))
    assert len(files) == 8 and all(min(Image.open(f).size) == 375 for f in files)
    classes = benchdata.synthetic_classes(tmp_path / "classes", classes=4, per_class=5, size=24)
    assert [len(list((classes / "train" / f"class{k}").iterdir())) for k in range(4)] == [5] * 4
    assert Image.open(classes / "val" / "class3" / "00000.JPEG").size == (24, 24)


def test_the_ffcv_section_says_when_ffcv_is_missing_and_measures_nothing(photo_data, tmp_path, capsys, monkeypatch):
    from dali_cutmix_bench import ffcv_peers

    monkeypatch.setattr(ffcv_peers, "available", lambda: False)  # as on a machine without scripts/peers.sh
    bench.main(["--data", str(photo_data), "--sections", "ffcv", "--reps", "1", "--output", str(tmp_path / "b"),
                "--device", "cpu"])  # fmt: skip
    printed = capsys.readouterr().out
    assert "ffcv: not importable here, nothing measured (bash scripts/peers.sh" in printed
    assert json.loads((tmp_path / "b" / "bench.json").read_text())["rows"] == []


def test_the_ffcv_findings_compare_paired_rounds_against_the_targets():
    from dali_cutmix_bench import ffcv_peers as fp

    rows = {("ffcv", fp.OURS): bench.Row("ffcv", fp.OURS, [300.0, 330.0, 310.0]),
            ("ffcv", fp.OURS_PREPARED): bench.Row("ffcv", fp.OURS_PREPARED, [500.0, 480.0, 520.0]),
            ("ffcv", fp.FFCV_JPEG): bench.Row("ffcv", fp.FFCV_JPEG, [100.0, 100.0, 100.0]),
            ("ffcv", fp.FFCV_RECIPE): bench.Row("ffcv", fp.FFCV_RECIPE, [260.0, 250.0, 270.0])}  # fmt: skip
    found = fp.ffcv_findings(rows)
    assert found[0].startswith("ffcv: prepared data against the originals: x1.67") and found[0].endswith("met")
    assert "against FFCV's recipe: x1.92 (1.92..1.93, 3 rounds); target x2.0: NOT met" in found[1]
    assert "x3.10 (3.00..3.30, 3 rounds); target x2.5: met" in found[2]


def test_the_label_noise_summary_counts_the_flaw_exactly():
    from dali_cutmix_bench.label_noise import summarise

    label = np.array([0.4, 0.4, 0.1, 0.2, 0.5])
    visible = np.array([0.0, 0.5, 0.1, 0.99, 0.10])
    r = summarise(label, visible)
    assert r["partner_flaw"] == 0.2 and r["partner_flaw_15"] == 0.4  # 0.4/0.0; and 0.5/0.10
    assert r["receiver_flaw"] == 0.2 and r["receiver_flaw_15"] == 0.2  # 0.8 of the label, 0.01 of what shows


@pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="needs Debian's dataset-fashion-mnist"
)
def test_the_label_noise_measurement_runs_every_recipe(tmp_path, capsys):
    from dali_cutmix_bench import label_noise

    assert label_noise.main(["--images", "256", "--output", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "label_noise.json").read_text())
    for recipe in label_noise.RECIPES:
        r = report[recipe]
        assert r["samples"] == 256 and 0 <= r["partner_flaw"] <= r["partner_flaw_15"] <= 1
        assert 0.5 < r["correlation"] <= 1  # the label follows what shows, more or less
    assert (tmp_path / "worst.png").stat().st_size > 1000


def test_the_saliency_map_comparison_runs_and_finds_the_object(tmp_path, capsys):
    from PIL import Image

    from dali_cutmix_bench import saliency_maps

    rng = np.random.default_rng(0)
    for k, (y, x) in enumerate([(40, 150), (170, 30)]):  # a bright square on dim noise, 300 x 260
        photo = rng.integers(0, 50, (260, 300, 3), dtype=np.uint8)
        photo[y : y + 40, x + 20 : x + 60] = 230
        Image.fromarray(photo).save(tmp_path / f"photo{k}.jpg", quality=95)
    out = tmp_path / "out"
    assert saliency_maps.main(["--photos", str(tmp_path / "*.jpg"), "--output", str(out)]) == 0
    report = json.loads((out / "saliency_maps.json").read_text())
    assert report["photos"] == ["photo0.jpg", "photo1.jpg"]
    # centre-cropped to 260 x 260 (columns 20..280), then 224 / 260: the squares at rows 40..80 / 170..210
    for (py, px), (y, x) in zip(report["methods"]["grid centre-surround"]["peaks"], [(40, 150), (170, 30)]):
        assert (
            y * 224 / 260 - 4 <= py <= (y + 40) * 224 / 260 + 4 and x * 224 / 260 - 4 <= px <= (x + 40) * 224 / 260 + 4
        )
    assert {"grid frequency-tuned", "spectral residual (NumPy)"} <= set(report["methods"])
    assert (out / "peaks.png").stat().st_size > 1000


def test_the_operator_recipe_costs_print_each_recipe_against_cutmix(tmp_path, capsys):
    from dali_cutmix_bench import operator_recipes

    out = tmp_path / "out"
    assert operator_recipes.main(["--batch-size", "4", "--size", "40", "--runs", "2", "--rounds", "2",
                                  "--output", str(out)]) == 0  # fmt: skip
    rows = json.loads((out / "operator_recipes.json").read_text())["rows"]
    assert set(rows) == set(operator_recipes.RECIPES) and rows["CutMix"]["ratio"] == 1.0
    assert all(len(r["rounds"]) == 2 and r["ms"] > 0 for r in rows.values())
    printed = capsys.readouterr().out
    assert "SaliencyMix" in printed and "ResizeMix" in printed
    with pytest.raises(SystemExit):
        operator_recipes.main(["--runs", "0"])
