"""scripts/gpu_check.sh, the one GPU check, runs here with --cpu so that it cannot rot."""

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_runs_every_cpu_check_and_reports(tmp_path):
    out = tmp_path / "report"
    env = {**os.environ, "OUT": str(out)}
    done = subprocess.run(["bash", "scripts/gpu_check.sh", "--cpu"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((out / "report.json").read_text())["results"]
    checks = {r["check"] for r in results if r["ok"]}
    assert checks == {"pixels", "throughput", "training"}
    assert [r["check"] for r in results if r["ok"] is None] == ["cross-device"]  # needs a GPU, said so
    pixels = [r["case"] for r in results if r["check"] == "pixels"]
    assert {"native elem mixup-switch", "python batch minmax", "ops elem no-self", "python normalize=fp32"} <= set(
        pixels
    )
    assert "0 failed" in (out / "report.md").read_text()
