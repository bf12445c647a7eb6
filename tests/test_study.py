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
