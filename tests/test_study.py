"""study.py, the payoff study, in its --quick form: the command cannot rot."""

import pytest

pytest.importorskip("nvidia.dali", exc_type=ImportError)  # `pytest -m gpu` collects without DALI

import json

import study


@pytest.mark.slow
def test_quick_study_trains_every_configuration_and_writes_the_report(tmp_path):
    assert study.main(["--quick", "--output", str(tmp_path / "report"), "--runs", str(tmp_path / "runs")]) == 0
    report = (tmp_path / "report" / "RESULTS.md").read_text()
    for config in study.QUICK_CONFIGS:
        assert f"| {config} |" in report
        record = json.loads((tmp_path / "runs" / f"{config}-seed0" / "study.json").read_text())
        assert len(record["rows"]) == 2 and 0 <= record["occluded_top1"] <= 100 and 0 <= record["train_top1"] <= 100
    assert "CutMix (native, in the pipeline) against no mixing, final val top-1" in report
    assert (tmp_path / "report" / "results.png").stat().st_size > 5000


def test_a_study_flag_error_is_one_line(capsys):
    with pytest.raises(SystemExit) as info:
        study.main(["--configs", "none,cutmix-everywhere"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "--configs: unknown configuration 'cutmix-everywhere', expected some of" in err[-1]


def test_the_calibration_error_is_the_weighted_gap_between_accuracy_and_confidence():
    import torch

    confidence = torch.tensor([0.95, 0.95, 0.55, 0.55, 0.55, 0.55])
    correct = torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    # bin (0.9, 0.96]: accuracy 0.5, confidence 0.95, 2 of 6; bin (0.53, 0.6]: 1.0 against 0.55, 4 of 6
    expected = 2 / 6 * 0.45 + 4 / 6 * 0.45
    assert abs(study.expected_calibration_error(confidence, correct) - expected) < 1e-6
    assert study.expected_calibration_error(torch.tensor([1.0, 0.5]), torch.tensor([1.0, 0.0])) == 0.25


def test_the_report_keeps_what_follows_its_marker(tmp_path):
    args = study.parse_args(["--output", str(tmp_path), "--seeds", "1"])
    (tmp_path / "RESULTS.md").write_text(f"old table\n{study.KEEP}\n## Kept by hand\ntext\n")
    record = {"rows": [{"val_top1": 50.0, "val_loss": 1.0}], "train_top1": 60.0, "occluded_top1": 40.0,
              "val_ece": 3.0, "seconds": 60.0}  # fmt: skip
    path = study.write_report(args, {"none": [record]}, "python study.py")
    text = path.read_text()
    assert "old table" not in text and "| none | 50.0 |" in text and "| 3.0 | 1.0 |" in text
    assert text.endswith(f"{study.KEEP}\n## Kept by hand\ntext\n") and text.count(study.KEEP) == 1
