"""Data-parallel training on the CPU (gloo): shards, identical weights, rank 0 writes, failures."""

import pytest

pytest.importorskip("nvidia.dali", exc_type=ImportError)  # `pytest -m gpu` collects without DALI

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import train_args, write_jpeg_tree

from pipelines.loaders import train_loader

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port"]


def free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def test_shards_are_disjoint_and_cover_the_dataset_each_epoch(tmp_path):
    # 16 classes of one image each: every label names one file.
    data = write_jpeg_tree(tmp_path / "data", classes=3, train_per_class=0, val_per_class=0)
    from PIL import Image

    for c in range(16):
        folder = data / "train" / f"c{c:02d}"
        folder.mkdir(parents=True)
        Image.new("RGB", (40, 30), (c * 15, 0, 0)).save(folder / "x.JPEG")
    loaders = [
        train_loader(data / "train", batch_size=3, image_size=16, num_threads=1, shard_id=r, num_shards=2)
        for r in range(2)
    ]
    for _ in range(3):  # shards rotate between epochs; each epoch still covers everything once
        labels = [label for loader in loaders for _, batch_a, _, _ in loader for label in batch_a.tolist()]
        assert Counter(labels) == {c: 1 for c in range(16)}


def _ddp_worker(rank: int, port: str, data: str, results) -> None:
    import torchvision

    from dali_cutmix_trainer.engine import train_step

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.manual_seed(rank)  # different initial weights: DDP must broadcast rank 0's
    model = torchvision.models.resnet18(num_classes=3)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
    loader = train_loader(data, batch_size=4, image_size=32, num_threads=1, shard_id=rank, num_shards=2, seed=rank)
    for step, batch in enumerate(loader):
        train_step(ddp, optimizer, None, batch)
        if step == 1:
            break
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    gathered = [torch.zeros_like(flat) for _ in range(2)]
    dist.all_gather(gathered, flat)
    results[rank] = (torch.equal(gathered[0], gathered[1]), flat.abs().sum().item())
    dist.destroy_process_group()


def test_weights_are_identical_on_all_ranks_after_steps(jpeg_tree):
    results = mp.Manager().dict()
    mp.spawn(_ddp_worker, args=(free_port(), str(jpeg_tree / "train"), results), nprocs=2, join=True)
    assert results[0][0] and results[1][0]
    assert results[0][1] == results[1][1]


@pytest.mark.slow
def test_torchrun_trains_and_only_rank_0_writes(tmp_path):
    data = write_jpeg_tree(tmp_path / "data")
    out = tmp_path / "run"
    flags = train_args(data, out, "--epochs", "2", "--device", "cpu", batch_size=4)
    cmd = [*TORCHRUN, free_port(), "train.py", *flags]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]
    assert all(r["val_images"] == 9 for r in rows)  # the two val shards, summed across ranks
    assert json.loads((out / "config.json").read_text())["world_size"] == 2
    assert sorted(p.name for p in out.glob("checkpoint_*")) == ["checkpoint_0001.pt", "checkpoint_0002.pt"]
    assert proc.stdout.count('"epoch": 1') == 1  # one line per epoch: only rank 0 reports


@pytest.mark.slow
def test_two_nodes_with_c10d_rendezvous_train_as_one_job(tmp_path):
    """torchrun --nnodes 2, both node processes on this machine (c10d rendezvous on 127.0.0.1,
    gloo): RANK picks the shard, LOCAL_RANK the device, rank 0 alone writes."""
    data = write_jpeg_tree(tmp_path / "data")
    out = tmp_path / "run"
    flags = train_args(data, out, "--epochs", "2", "--device", "cpu", batch_size=4)
    endpoint = f"127.0.0.1:{free_port()}"
    nodes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes",
                "2",
                "--nproc_per_node",
                "1",
                "--rdzv_backend",
                "c10d",
                "--rdzv_endpoint",
                endpoint,
                "--rdzv_id",
                "two-nodes",
                "train.py",
                *flags,
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for _ in range(2)
    ]
    results = [node.communicate(timeout=900) for node in nodes]
    for node, (_, err) in zip(nodes, results):
        assert node.returncode == 0, err[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]
    assert all(r["val_images"] == 9 for r in rows)  # the two nodes' val shards: disjoint, covering
    assert json.loads((out / "config.json").read_text())["world_size"] == 2
    assert sorted(p.name for p in out.glob("checkpoint_*")) == ["checkpoint_0001.pt", "checkpoint_0002.pt"]
    assert sum(stdout.count('"epoch": 1') for stdout, _ in results) == 1  # only rank 0 reports


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def _local_rank(pid: int) -> str | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in env:
        if item.startswith(b"LOCAL_RANK="):
            return item.split(b"=", 1)[1].decode()
    return None


@pytest.mark.slow
def test_a_dead_rank_ends_the_job_with_an_error_not_a_hang(tmp_path):
    data = write_jpeg_tree(tmp_path / "data", train_per_class=60)
    out = tmp_path / "run"
    flags = train_args(data, out, "--epochs", "50", "--device", "cpu", batch_size=2)
    cmd = [*TORCHRUN, free_port(), "train.py", *flags]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while not (out / "checkpoint_0001.pt").exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.2)
    victim = next(pid for pid in _children(proc.pid) if _local_rank(pid) == "1")
    os.kill(victim, signal.SIGKILL)
    start = time.time()
    _, err = proc.communicate(timeout=900)
    assert proc.returncode != 0
    assert time.time() - start < 120
    assert "train.py FAILED" in err and "Signal 9 (SIGKILL)" in err
