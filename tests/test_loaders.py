"""The loaders (``pipelines/loaders.py``) under Hugging Face Accelerate: one process, and two started
by ``accelerate launch``, each reading its own share."""

import pytest

pytest.importorskip("nvidia.dali", exc_type=ImportError)  # `pytest -m gpu` collects without DALI

import json
import subprocess
import sys
from pathlib import Path

from client_fit import fit_accelerate
from conftest import assert_each_epoch_covers

ROOT = Path(__file__).resolve().parents[1]


def test_accelerate_one_process(unique_labels, tmp_path):
    pytest.importorskip("accelerate")
    fit_accelerate(*unique_labels, tmp_path)
    log = json.loads((tmp_path / "rank0.json").read_text())
    assert_each_epoch_covers([log], 24, 6)
    assert log["after"] != log["before"]


def test_accelerate_launch_two_processes_read_their_own_shares(unique_labels, tmp_path):
    pytest.importorskip("accelerate")
    # --multi_gpu picks accelerate's torchrun launcher; on a machine without GPUs the processes
    # train on the CPU with gloo (``Accelerator(cpu=True)`` in the script).
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]
    cmd = [*launch, "tests/client_fit.py", "accelerate", *unique_labels, str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    logs = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert_each_epoch_covers(logs, 24, 6)
    assert all(len(log["train"][0]) == 12 for log in logs)
    assert logs[0]["after"] == logs[1]["after"] != logs[0]["before"]
