"""The instruction counter: its driven runs, its arithmetic and its flags (valgrind itself is
too slow for the suite: a run takes minutes)."""

import pytest

pytest.importorskip("nvidia.dali", exc_type=ImportError)  # `pytest -m gpu` collects without DALI

import subprocess
from types import SimpleNamespace

from dali_cutmix_bench import instructions


@pytest.mark.parametrize("config", instructions.CONFIGS)
def test_driven_runs_work_in_memory_and_on_files(config, jpeg_tree):
    for batches, data in ((2, None), (1, str(jpeg_tree / "train"))):
        images = instructions.drive(config, batches, data, batch_size=4, image_size=16)[0]
        assert len(images) == 4 and images.as_array().shape == (4, 3, 16, 16), (config, data)


def test_per_batch_counts_are_differences(monkeypatch, capsys):
    per_batch = {"none": 100e6, "native": 90e6, "python": 91e6, "ops": 170e6}

    def fake_run(command, **kwargs):
        config, batches = command[command.index("--drive") + 1 :][:2]
        total = int(5e9 + int(batches) * per_batch[config])
        return SimpleNamespace(returncode=0, stderr=f"==1== Collected : {total}\n==1== I   refs: {total}\n")

    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.setattr(instructions.shutil, "which", lambda name: "/usr/bin/" + name)
    instructions.main(["--in-memory", "--batches", "2,6"])
    out = capsys.readouterr().out
    assert "native        90.0 M   -10.00% against none" in out
    assert "ops          170.0 M   +70.00% against none" in out


def test_a_failed_valgrind_run_is_one_line(monkeypatch):
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: SimpleNamespace(returncode=1, stderr="x\nboom: no\n"))
    args = SimpleNamespace(batch_size=4, image_size=16, data=None)
    with pytest.raises(RuntimeError, match=r"valgrind run of 'native' \(3 batches\) failed: boom: no"):
        instructions.count("native", 3, args)


@pytest.mark.parametrize(
    "argv, match",
    [
        ([], "give --data DIR"),
        (["--in-memory", "--batches", "5,2"], "--batches must be A,B with 0 <= A < B, got '5,2'"),
        (["--in-memory", "--configs", "native,none"], "--configs must start with none"),
    ],
)
def test_bad_flags_are_named(argv, match, capsys, monkeypatch):
    monkeypatch.setattr(instructions.shutil, "which", lambda name: "/usr/bin/" + name)
    with pytest.raises(SystemExit):
        instructions.main(argv)
    assert match in capsys.readouterr().err
