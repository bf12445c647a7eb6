"""scripts/gpu_check.sh, the one GPU check, runs here with --cpu so that it cannot rot: with DALI, and
with DALI made unimportable (a bare CUDA machine), where its torch half still runs and passes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TORCH_HALF = {"torch-mix", "loop-mixer", "loss", "train-step", "train-epoch", "device-normalize"}
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
    first = (tmp_path / "report" / "report.md").read_text().splitlines()[2:7]
    assert first[0].startswith("- GPU, driver, memory: ") and first[1].startswith("- torch ")
    assert "CUDA runtime" in first[1]
    assert first[2].startswith("- DALI ") and ", built for CUDA 12." in first[2]
    assert first[4].startswith("- stream hand-off: torch side stream not run")  # no GPU here
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


def _gpu_check_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_part_that_hangs_is_killed_with_its_children_and_its_log_kept(tmp_path):
    """A part past its limit is stopped with its whole process group (the child it started does not
    outlive it), its row says so, and its log keeps what it printed."""
    import time

    out = tmp_path / "report"
    done = subprocess.run([sys.executable, "scripts/gpu_check.py", "--cpu", "--only", "selftest-hang", "--limit", "4",
                           "--output", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 1
    rows = json.loads((out / "report.json").read_text())["results"]
    assert [(r["check"], r["case"], r["ok"]) for r in rows] == [("selftest-hang", "timed out", False)]
    log = (out / "selftest-hang.log").read_text()
    assert "selftest: started a child and hangs" in log and "process group was killed" in log
    child = int((out / "selftest-child.pid").read_text())
    for _ in range(50):
        if not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"the part's child {child} outlived it")


def test_inner_timeouts_stay_inside_the_parts_limit():
    import time

    check = _gpu_check_module()
    deadline = time.time() + 80
    assert check.left(deadline, 150) <= 75 and check.left(deadline, 40) == 40
    assert check.left(None, 150) == 150 and check.left(time.time() - 5, 150) == 1.0
    # On a CPU an inner step has the part's slack too (a slow host finishes; only a hang is stopped)
    assert check.left(None, 150, cpu=True) == 150 * check.CPU_SLACK and check.left(deadline, 40, cpu=True) <= 75
