"""Runs that survive a cluster: one command that starts and restarts, an elastic restart after a
rank dies, every rank's error kept and named right, no orphans. Two CPU ranks (gloo) under torchrun,
faults placed by ``tests/cluster_driver.py``."""

import pytest

pytest.importorskip("nvidia.dali", exc_type=ImportError)  # `pytest -m gpu` collects without DALI

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch
from conftest import train_args, write_jpeg_tree

import train
from dali_cutmix_trainer import checkpoint as ckpt

ROOT = Path(__file__).resolve().parents[1]
DRIVER = str(ROOT / "tests" / "cluster_driver.py")


def free_port() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def torchrun(*extra: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", free_port(),
            *extra]  # fmt: skip


def rows_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def assert_rows_equal(rows: list[dict], reference_rows: list[dict]) -> None:
    """Both epochs' rows, as the uninterrupted run wrote them (to float32's noise)."""
    assert [r["epoch"] for r in rows] == [0, 1]
    for row, ref in zip(rows, reference_rows):
        assert row["train_images"] == ref["train_images"] and row["lr"] == ref["lr"]
        for key in ("train_loss", "val_loss", "val_top1"):
            assert row[key] == pytest.approx(ref[key], rel=1e-4, abs=1e-5), key


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """48 training images: 2 ranks x 24, 6 steps of 4 an epoch each; 9 validation images."""
    return write_jpeg_tree(tmp_path_factory.mktemp("cluster") / "data", train_per_class=16)


def flags(data: Path, out: Path, *extra: str) -> list[str]:
    return train_args(data, out, "--epochs", "2", "--device", "cpu", "--workers", "1", *extra, batch_size=4)


def run(cmd: list[str], fault: dict | None = None, timeout: int = 600, **kwargs) -> subprocess.CompletedProcess:
    env = os.environ | {"DALI_CUTMIX_TEST_FAULT": json.dumps(fault or {})}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, **kwargs)


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory):
    """The rows and final weights of a 2-rank run that nothing interrupted."""
    out = tmp_path_factory.mktemp("whole") / "run"
    done = run(torchrun(DRIVER, *flags(data, out)))
    assert done.returncode == 0, done.stderr[-3000:]
    return rows_of(out), torch.load(out / "checkpoint_0002.pt", weights_only=True)["model"]


def test_resume_into_a_folder_without_a_checkpoint_starts_the_run(jpeg_tree, tmp_path, capsys):
    """One command for the first start and every restart: --resume with nothing to resume starts
    afresh, in one notice line, after clearing what a start killed before its first checkpoint
    left (here its epoch-0 row, written just before the kill)."""
    out = tmp_path / "run"
    args = train_args(jpeg_tree, out, "--epochs", "1", "--resume")
    assert train.main(args) == 0
    assert f"--resume: {out} holds no checkpoint yet: starting the run afresh" in capsys.readouterr().out
    assert [r["epoch"] for r in rows_of(out)] == [0] and ckpt.latest(out) == out / "checkpoint_0001.pt"
    killed = tmp_path / "killed"
    killed.mkdir()
    (killed / "metrics.jsonl").write_text(json.dumps({"epoch": 0, "train_loss": 9.9}) + "\n")
    (killed / "config.json").write_text("{}")
    assert train.main(train_args(jpeg_tree, killed, "--epochs", "1", "--resume")) == 0
    printed = capsys.readouterr().out
    assert f"removed {killed / 'metrics.jsonl'}, left by a start that wrote no checkpoint" in printed
    assert rows_of(killed)[0]["train_loss"] != 9.9 and len(rows_of(killed)) == 1


def test_the_checkpoint_follows_its_row_at_once_and_the_plot_after_both(jpeg_tree, tmp_path, monkeypatch):
    from dali_cutmix_trainer import run as run_module

    order = []
    real_rows, real_save, real_plot = ckpt.write_metrics, ckpt.save, run_module.plot_metrics
    monkeypatch.setattr(ckpt, "write_metrics", lambda *a, **k: order.append("row") or real_rows(*a, **k))
    monkeypatch.setattr(ckpt, "save", lambda *a, **k: order.append("checkpoint") or real_save(*a, **k))
    monkeypatch.setattr(run_module, "plot_metrics", lambda *a, **k: order.append("plot") or real_plot(*a, **k))
    assert train.main(train_args(jpeg_tree, tmp_path / "run", "--epochs", "2")) == 0
    assert order == ["row", "checkpoint", "plot"] * 2


@pytest.mark.slow
def test_an_elastic_restart_after_a_rank_dies_finishes_as_the_uninterrupted_run(data, tmp_path, uninterrupted):
    """torchrun --max-restarts 2, rank 1 SIGKILLed in epoch 1 and late to the restarted group by 3 s
    (where gloo used to read the dead rank's address): the restarted job resumes from the last
    checkpoint and ends with the uninterrupted run's rows and weights."""
    reference_rows, reference = uninterrupted
    out = tmp_path / "run"
    fault = {"kill": [1, 6 + 2]}  # rank 1's 8th step: epoch 1, its 3rd
    done = run(torchrun("--max-restarts", "2", DRIVER, *flags(data, out, "--resume")), fault | {"late": [1, 3]})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "connectFullMesh" not in done.stderr and "resuming from" in done.stdout
    assert_rows_equal(rows_of(out), reference_rows)
    final = torch.load(out / "checkpoint_0002.pt", weights_only=True)["model"]
    for name, tensor in reference.items():
        torch.testing.assert_close(final[name], tensor, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.slow
def test_a_two_node_elastic_restart_with_a_fresh_store_each_round_finishes_as_the_uninterrupted_run(
    data, tmp_path, uninterrupted
):
    """Two agents (two "nodes" of one rank each, c10d rendezvous) with
    TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1, as docs/OPERATIONS.md says for several nodes: rank 1
    SIGKILLed in epoch 1, the agents count their restarts apart, and the job still ends with the
    uninterrupted run's rows."""
    reference_rows, _ = uninterrupted
    out = tmp_path / "run"
    endpoint = f"127.0.0.1:{free_port()}"
    agent = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
             "--rdzv_backend", "c10d", "--rdzv_endpoint", endpoint, "--rdzv_id", "two-nodes",
             "--max-restarts", "2", DRIVER, *flags(data, out, "--resume")]  # fmt: skip
    env = os.environ | {
        "DALI_CUTMIX_TEST_FAULT": json.dumps({"kill": [1, 6 + 2], "late": [1, 3]}),
        "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1",
        "OMP_NUM_THREADS": "1",
    }
    nodes = [subprocess.Popen(agent, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]  # fmt: skip
    ends = [node.communicate(timeout=600) for node in nodes]
    assert all(node.returncode == 0 for node in nodes), [err[-3000:] for _, err in ends]
    assert any("resuming from" in stdout for stdout, _ in ends)
    assert not any("store is shared across restarts" in stderr for _, stderr in ends)  # the fresh store: no warning
    assert_rows_equal(rows_of(out), reference_rows)


@pytest.mark.slow
def test_a_bug_on_rank_1_is_kept_in_its_own_file_and_rank_0_names_it(data, tmp_path):
    out = tmp_path / "run"
    done = run(torchrun(DRIVER, *flags(data, out)), {"bug": [1, 3]})
    assert done.returncode != 0
    own = out / "error.rank1.log"
    assert "RuntimeError: an injected bug" in own.read_text()
    # the ranks share stderr: a line may follow rank 0's progress bar on the same line of the terminal
    lines = [line[line.index("train.py: ") :] for line in done.stderr.splitlines() if "train.py: " in line]
    assert any(line.startswith("train.py: internal error (a bug, not your input): RuntimeError: an injected bug")
               and str(own) in line for line in lines), lines  # fmt: skip
    peer = [line for line in lines if line.startswith("train.py: rank 0 stopped because another rank failed first")]
    assert peer and f"its traceback is in {own}" in peer[0], lines
    if (out / "error.log").exists():  # rank 0's own traceback: the peer's connection, not the bug
        assert "an injected bug" not in (out / "error.log").read_text()


@pytest.mark.slow
def test_a_non_finite_loss_on_rank_1_stops_every_rank_with_the_same_line(data, tmp_path):
    """Rank 1's loss turns NaN at its last step before the first agreement (the epoch's end, 6
    steps): every rank stops on the same step and says the same one line."""
    out = tmp_path / "run"
    done = run(torchrun(DRIVER, *flags(data, out)), {"nan": [1, 6]})
    assert done.returncode != 0
    # the ranks share stderr: under load one rank's line may land on the same line as the other's
    said = (part for line in done.stderr.splitlines() for part in re.split(r"(?=train\.py: )", line))
    lines = [part for part in said if part.startswith("train.py: ")]
    assert len(lines) == 2 and lines[0] == lines[1], lines
    assert lines[0].startswith("train.py: error: non-finite loss at epoch 0, step 5 on rank 1: lower --lr")
    assert "internal error" not in done.stderr


@pytest.mark.slow
def test_a_batch_larger_than_the_smallest_share_is_one_line(tmp_path):
    """49 images over 2 ranks: shares of 25 and 24; --batch-size 25 fits the first only."""
    data = write_jpeg_tree(tmp_path / "data", classes=1, train_per_class=49)
    done = run(torchrun(DRIVER, *train_args(data, tmp_path / "run", "--epochs", "1", "--device", "cpu",
                                            batch_size=25)))  # fmt: skip
    lines = [line for line in done.stderr.splitlines() if line.startswith("train.py: ")]
    assert done.returncode != 0 and "internal error" not in done.stderr
    assert any("--batch-size 25 is larger than a rank's share of the training data: 24 to 25 of 49 images over 2 "
               "process(es)" in line for line in lines), lines  # fmt: skip


@pytest.mark.slow
def test_a_job_refused_by_a_live_run_writes_nothing_into_its_folder(data, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    lock = ckpt.RunLock(out)  # a live run holds the folder
    try:
        before = sorted(p.name for p in out.iterdir())
        done = run(torchrun(DRIVER, *flags(data, out)))
        assert done.returncode != 0 and "is in use by a live run" in done.stderr
        assert sorted(p.name for p in out.iterdir()) == before
    finally:
        lock.release()


def _workers_of(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


@pytest.mark.slow
def test_workers_die_with_a_sigkilled_agent_and_write_nothing_more(tmp_path):
    data = write_jpeg_tree(tmp_path / "data", train_per_class=10)
    out = tmp_path / "run"
    agent = subprocess.Popen(
        torchrun("train.py", *train_args(data, out, "--epochs", "50", "--device", "cpu", batch_size=2)),  # fmt: skip
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while not (out / "checkpoint_0001.pt").exists():
        assert agent.poll() is None and time.time() < deadline
        time.sleep(0.2)
    workers = _workers_of(agent.pid)
    assert len(workers) == 2
    agent.kill()
    agent.wait()
    killed = time.time()
    while any(Path(f"/proc/{pid}").exists() and "zombie" not in _state(pid) for pid in workers):
        assert time.time() - killed < 120, "workers outlived their agent"  # at once in fact: a hang guard only
        time.sleep(0.1)
    files = sorted(p.name for p in out.iterdir())
    time.sleep(1)
    assert sorted(p.name for p in out.iterdir()) == files  # nothing more written


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0].lower()
    except (OSError, IndexError):
        return "zombie"


def test_resume_and_overwrite_together_are_refused(jpeg_tree, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        train.main(train_args(jpeg_tree, tmp_path / "run", "--resume", "--overwrite"))
    assert info.value.code == 2
    assert "--resume and --overwrite exclude each other" in capsys.readouterr().err


@pytest.mark.parametrize("env, warned", [
    ({"LOCAL_WORLD_SIZE": "1", "TORCHELASTIC_USE_AGENT_STORE": "True", "TORCHELASTIC_MAX_RESTARTS": "2"}, True),
    ({"LOCAL_WORLD_SIZE": "1", "TORCHELASTIC_USE_AGENT_STORE": "False", "TORCHELASTIC_MAX_RESTARTS": "2"}, False),
    ({"LOCAL_WORLD_SIZE": "1", "TORCHELASTIC_USE_AGENT_STORE": "True", "TORCHELASTIC_MAX_RESTARTS": "0"}, False),
    ({"LOCAL_WORLD_SIZE": "2", "TORCHELASTIC_USE_AGENT_STORE": "True", "TORCHELASTIC_MAX_RESTARTS": "2"}, False),
    ({}, False),
], ids=["several-nodes-shared-store", "fresh-store", "no-restarts", "one-node", "no-torchrun"])  # fmt: skip
def test_a_restartable_job_on_several_nodes_with_a_shared_store_is_warned(monkeypatch, env, warned):
    from dali_cutmix_trainer.run import shared_store_warning

    for key in ("LOCAL_WORLD_SIZE", "TORCHELASTIC_USE_AGENT_STORE", "TORCHELASTIC_MAX_RESTARTS"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    warning = shared_store_warning(world=2)
    assert (warning is not None) == warned
    if warned:
        assert "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1" in warning and "--rdzv-backend c10d" in warning
