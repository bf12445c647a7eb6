"""scripts/gpu_check.sh, the one GPU check, runs here with --cpu so that it cannot rot: with DALI, and
with DALI made unimportable (a bare CUDA machine), where its torch half still runs and passes."""

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TORCH_HALF = {"torch-mix", "loop-mixer", "loss", "train-step", "device-normalize"}
DALI_HALF = {"pixels", "throughput", "training"}
# A module finder that makes `import nvidia.dali` fail, in every process that inherits PYTHONPATH.
BLOCK_DALI = """import sys
class _NoDali:
    def find_spec(self, name, path=None, target=None):
        if name == "nvidia.dali" or name.startswith("nvidia.dali."):
            raise ModuleNotFoundError(f"No module named {name!r} (made unimportable by the test)")
sys.meta_path.insert(0, _NoDali())
"""


def gpu_check(out: Path, **env) -> list[dict]:
    env = {**os.environ, "OUT": str(out), **env}
    done = subprocess.run(["bash", "scripts/gpu_check.sh", "--cpu"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "0 failed" in (out / "report.md").read_text()
    return json.loads((out / "report.json").read_text())["results"]


@pytest.mark.slow
def test_gpu_check_runs_every_cpu_check_and_reports(tmp_path):
    pytest.importorskip("nvidia.dali", exc_type=ImportError)
    results = gpu_check(tmp_path / "report")
    assert {r["check"] for r in results if r["ok"]} == TORCH_HALF | DALI_HALF
    not_run = {r["check"]: r["detail"] for r in results if r["ok"] is None}
    assert not_run == {"gpu-tests": "not run: needs a GPU", "cross-device": "not run: needs a GPU"}
    cases = {f"{r['check']} {r['case']}" for r in results}
    assert {"pixels native elem mixup-switch", "pixels python batch minmax", "pixels ops elem no-self",
            "torch-mix CHW float", "torch-mix HWC uint8", "loss mixed_cross_entropy float16"} <= cases  # fmt: skip


@pytest.mark.slow
def test_gpu_check_without_dali_runs_its_torch_half_and_says_what_did_not_run(tmp_path):
    (tmp_path / "block").mkdir()
    (tmp_path / "block" / "sitecustomize.py").write_text(BLOCK_DALI)
    results = gpu_check(tmp_path / "report", PYTHONPATH=str(tmp_path / "block"))
    assert {r["check"] for r in results if r["ok"]} - {"install"} == TORCH_HALF  # install: where .whl/ is
    not_run = {r["check"]: r["detail"] for r in results if r["ok"] is None}
    assert not_run == {part: "not run: DALI not importable" for part in DALI_HALF | {"cross-device"}} | {
        "gpu-tests": "not run: needs a GPU"
    }
