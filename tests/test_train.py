"""train.py end to end on the CPU: a few steps, metrics, checkpoints, resume (after SIGTERM and
SIGKILL too, exactly), bad input, non-finite loss."""

import pytest

pytest.importorskip("nvidia.dali", exc_type=ImportError)  # `pytest -m gpu` collects without DALI

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import torch
from conftest import sigterm_after_step, train_args, write_jpeg_tree

import train
from dali_cutmix.recipe import MixConfig
from dali_cutmix_trainer import checkpoint as ckpt
from dali_cutmix_trainer import engine, run

ROOT = Path(__file__).resolve().parents[1]


def read_rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_train_then_resume(jpeg_tree, tmp_path):
    out = tmp_path / "run"
    train.main(train_args(jpeg_tree, out, "--epochs", "2"))
    rows = read_rows(out)
    assert [r["epoch"] for r in rows] == [0, 1]
    for r in rows:
        for key in ("train_loss", "val_loss", "val_top1", "val_top5", "images_per_s", "epoch_seconds"):
            assert key in r and r[key] == r[key]  # present and not NaN
        assert r["val_images"] == 9 and r["train_images"] == 18
        assert 0 <= r["val_top1"] <= r["val_top5"] <= 100
    config = json.loads((out / "config.json").read_text())
    assert config["arch"] == "resnet18" and config["num_classes"] == 3 and config["train_files"] == 18
    assert (out / "curves.png").stat().st_size > 1000
    state = torch.load(out / "checkpoint_0002.pt", weights_only=True)
    assert state["epoch"] == 2 and state["arch"] == "resnet18"

    assert train.main(train_args(jpeg_tree, out, "--epochs", "3", "--resume")) == 0
    rows = read_rows(out)
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    resumed = torch.load(out / "checkpoint_0003.pt", weights_only=True)
    assert resumed["epoch"] == 3 and resumed["config"]["run_id"] == state["config"]["run_id"]
    assert rows[2]["lr"] > 0
    moved = [k for k, v in resumed["model"].items() if v.is_floating_point() and not torch.equal(v, state["model"][k])]
    assert "fc.weight" in moved and "conv1.weight" in moved  # the resumed epoch trained


def test_a_longer_schedule_on_resume_follows_the_longer_curve(jpeg_tree, tmp_path):
    """--epochs 2, then --resume --epochs 4: from epoch 2 on, the lr of a 4-epoch run."""
    resumed, fresh = tmp_path / "resumed", tmp_path / "fresh"
    assert train.main(train_args(jpeg_tree, resumed, "--epochs", "2")) == 0
    assert train.main(train_args(jpeg_tree, resumed, "--epochs", "4", "--resume")) == 0
    assert train.main(train_args(jpeg_tree, fresh, "--epochs", "4")) == 0
    lr_resumed, lr_fresh = ([r["lr"] for r in read_rows(out)] for out in (resumed, fresh))
    assert lr_resumed[2:] == pytest.approx(lr_fresh[2:], rel=1e-12) and min(lr_resumed[2:]) > 0
    final = torch.load(resumed / "checkpoint_0004.pt", weights_only=True)
    want = torch.load(fresh / "checkpoint_0004.pt", weights_only=True)
    assert final["optimizer"]["param_groups"][0]["lr"] == pytest.approx(want["optimizer"]["param_groups"][0]["lr"])


def test_a_fresh_run_into_a_used_folder_refuses_and_overwrite_moves_it_aside(jpeg_tree, tmp_path, capsys):
    out = tmp_path / "run"
    assert train.main(train_args(jpeg_tree, out, "--epochs", "1")) == 0
    first = json.loads((out / "config.json").read_text())["run_id"]
    assert train.main(train_args(jpeg_tree, out, "--epochs", "1", "--no-cutmix")) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (
        f"train.py: error: --output {out} already holds a run: continue it with --resume, or start afresh with "
        f"--overwrite (the old run is moved to {out}.old-N)"
    )
    assert sorted(p.name for p in out.glob("checkpoint_*.pt")) == ["checkpoint_0001.pt"]  # nothing pruned
    assert train.main(train_args(jpeg_tree, out, "--epochs", "1", "--no-cutmix", "--overwrite")) == 0
    assert json.loads((tmp_path / "run.old-1" / "config.json").read_text())["run_id"] == first
    assert (tmp_path / "run.old-1" / "checkpoint_0001.pt").is_file()
    assert json.loads((out / "config.json").read_text())["run_id"] != first


def test_the_default_folder_moves_an_earlier_run_aside(jpeg_tree, tmp_path, monkeypatch):
    """runs/latest is a scratch place: the README's command works twice in a row."""
    monkeypatch.chdir(tmp_path)
    flags = train_args(jpeg_tree, "unused", "--epochs", "1", "--max-steps", "1")
    del flags[flags.index("--output") : flags.index("--output") + 2]  # the default, runs/latest
    assert train.main(flags) == 0
    first = json.loads((tmp_path / "runs" / "latest" / "config.json").read_text())["run_id"]
    assert train.main(flags) == 0
    assert json.loads((tmp_path / "runs" / "latest.old-1" / "config.json").read_text())["run_id"] == first


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--batch-size", "4"], "was trained with --batch-size 6, this run has 4; on resume only --epochs"),
        (["--seed", "3"], "was trained with --seed 0, this run has 3"),
        (["--image-size", "48"], "was trained with --image-size 32, this run has 48"),
        (["--no-cutmix"], "was trained with --no-cutmix False, this run has True"),
    ],
    ids=["batch", "seed", "size", "recipe"],
)
def test_resume_refuses_a_checkpoint_of_another_run(jpeg_tree, tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    assert train.main(train_args(jpeg_tree, out, "--epochs", "1", "--max-steps", "1")) == 0
    assert train.main([*train_args(jpeg_tree, out, "--epochs", "2", "--resume"), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"train.py: error: --resume: {out / 'checkpoint_0001.pt'} ") and message in err


def test_resume_refuses_other_data_with_the_same_classes(tmp_path, capsys):
    first = write_jpeg_tree(tmp_path / "first", seed=0)
    other = write_jpeg_tree(tmp_path / "other", seed=0, train_per_class=7)
    out = tmp_path / "run"
    assert train.main(train_args(first, out, "--epochs", "1", "--max-steps", "1")) == 0
    assert train.main(train_args(other, out, "--epochs", "2", "--resume")) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "was trained on other data (18 training files, now 21" in err
    moved = tmp_path / "moved"
    first.rename(moved)  # the same data elsewhere is the same data
    assert train.main(train_args(moved, out, "--epochs", "2", "--resume")) == 0


def test_resume_skips_an_unreadable_newest_checkpoint_and_cleans_partial_writes(jpeg_tree, tmp_path, capsys):
    out = tmp_path / "run"
    assert train.main(train_args(jpeg_tree, out, "--epochs", "2", "--keep-checkpoints", "2")) == 0
    newest = out / "checkpoint_0002.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated, as by a full disk
    partial = out / ".checkpoint_0003.pt.x1y2.tmp"  # as left by a SIGKILL during a save
    partial.write_bytes(b"half")
    capsys.readouterr()
    assert train.main(train_args(jpeg_tree, out, "--epochs", "2", "--resume")) == 0
    said = capsys.readouterr().out
    assert f"removed {partial}, left by a write that never finished" in said and not partial.exists()
    assert f"skipping {newest}: unreadable" in said and f"resuming from {out / 'checkpoint_0001.pt'}: epoch 1" in said
    newest.write_bytes(b"garbage")
    assert train.main(train_args(jpeg_tree, out, "--epochs", "3", "--resume", str(newest))) == 2
    assert f"checkpoint {newest} cannot be loaded" in capsys.readouterr().err.strip().splitlines()[-1]


def test_a_run_that_recorded_its_prob_schedule_as_a_dict_resumes(jpeg_tree, tmp_path, capsys):
    """Older runs wrote --prob-schedule into the checkpoint as {epoch: prob}; the same schedule,
    given again, resumes them, and another one is refused."""
    out = tmp_path / "run"
    flags = ["--prob-schedule", "0:1.0,1:0.5"]
    assert train.main(train_args(jpeg_tree, out, "--epochs", "1", "--max-steps", "1", *flags)) == 0
    path = out / "checkpoint_0001.pt"
    state = torch.load(path, weights_only=False)
    state["config"]["prob_schedule"] = {"1": 0.5, "0": 1.0}
    torch.save(state, path)
    assert train.main(train_args(jpeg_tree, out, "--epochs", "2", "--max-steps", "2", "--resume", *flags)) == 0
    assert train.main(train_args(jpeg_tree, out, "--epochs", "3", "--resume", "--prob-schedule", "0:1.0,1:0.4")) == 2
    assert "--prob-schedule [[0, 1.0], [1, 0.5]], this run has [[0, 1.0], [1, 0.4]]" in capsys.readouterr().err


def test_resume_from_a_path_and_arch_mismatch(jpeg_tree, tmp_path, capsys):
    out = tmp_path / "run"
    assert train.main(train_args(jpeg_tree, out, "--epochs", "1", "--max-steps", "1")) == 0
    path = out / "checkpoint_0001.pt"
    assert train.main(train_args(jpeg_tree, out, "--epochs", "2", "--resume", str(path), "--arch", "resnet34")) == 2
    assert f"checkpoint {path} is a resnet18, but the model asked for is a resnet34" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--batch-size", "0"], "--batch-size must be an int >= 1, got 0"),
        (["--batch-size", "-4"], "--batch-size must be an int >= 1, got -4"),
        (["--batch-size", "1"], "--batch-size 1: BatchNorm trains on each batch's statistics"),
        (["--epochs", "0"], "--epochs must be >= 1, got 0"),
        (["--image-size", "8"], r"--image-size must be an int in \[16, 4096\], got 8"),
        (["--arch", "vgg16"], "--arch must be one of resnet18, .*, got 'vgg16'"),
        (["--data", "/nonexistent/imagenet"], "--data '/nonexistent/imagenet' is neither a directory nor .tar shards"),
        (
            ["--data", "/no/s-{0..1}.tar", "--val-data", "/no/v.tar"],
            r"--data shards '/no/s-\{0..1\}.tar': 2 of 2 files do not exist, first '/no/s-0.tar'",
        ),
        (["--cutmix-prob", "1.5"], r"--cutmix-prob must be a number in \[0, 1\], got 1.5"),
        (["--resume", "/nonexistent.pt"], "--resume '/nonexistent.pt': no such checkpoint file"),
        (["--mixup", "-1"], r"--mixup must be a finite number >= 0, got -1.0"),
        (["--mixup", "0.2", "--mixup-switch-prob", "2"], r"--mixup-switch-prob must be a number in \[0, 1\], got 2.0"),
        (["--cutmix-minmax", "0.9", "0.1"], r"--cutmix-minmax must be \(min, max\) with 0 < min < max <= 1"),
        (["--cutmix", "0"], "--cutmix-alpha and --mixup are both 0: nothing to mix"),
        (["--prob-schedule", "0:1.5"], r"--prob-schedule must be a number in \[0, 1\], got 1.5"),
        (
            ["--no-cutmix", "--mixup", "0.2", "--cutmix-centre", "saliency"],
            "--no-cutmix trains without mixing: leave --mixup and --cutmix-centre out",
        ),
    ],
    ids=[
        "batch0",
        "batch-neg",
        "batch1",
        "epochs0",
        "size",
        "arch",
        "data",
        "shards",
        "prob",
        "resume",
        "mixup",
        "switch",
        "minmax",
        "nothing",
        "schedule",
        "no-cutmix",
    ],
)
def test_bad_command_line_is_one_line_and_exit_2(args, message):
    proc = subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert re.search(message, last), last


def test_timm_style_recipe_flags_reach_the_pipeline(jpeg_tree, tmp_path, monkeypatch):
    seen = {}
    real = run.train_loader

    def spy(settings, **kwargs):
        seen.update(kwargs)
        return real(settings, **kwargs)

    monkeypatch.setattr(run, "train_loader", spy)
    out = tmp_path / "run"
    flags = [
        "--mixup",
        "0.2",
        "--cutmix",
        "1.0",
        "--mixup-prob",
        "0.9",
        "--mixup-switch-prob",
        "0.4",
        "--mixup-mode",
        "elem",
        "--cutmix-minmax",
        "0.2",
        "0.8",
        "--mix-no-self",
        "--smoothing",
        "0.1",
        "--prob-schedule",
        "1:0.5",
        "--mixup-off-epoch",
        "3",
        "--epochs",
        "2",
    ]
    assert train.main(train_args(jpeg_tree, out, *flags)) == 0
    assert seen["recipe"] == MixConfig(alpha=1.0, prob=0.9, mode="elem", mixup_alpha=0.2, switch_prob=0.4,
                                       minmax=(0.2, 0.8), no_self=True, prob_schedule={1: 0.5},
                                       off_epoch=3)  # fmt: skip
    assert [seen["recipe"].prob_at(e) for e in range(4)] == [0.9, 0.5, 0.5, 0.0]
    config = json.loads((out / "config.json").read_text())
    assert config["mixup_alpha"] == 0.2 and config["smoothing"] == 0.1 and config["prob_schedule"] == [[1, 0.5]]
    assert len(read_rows(out)) == 2


def test_mixing_in_the_loop_trains_and_resumes_exactly(jpeg_tree, tmp_path, monkeypatch):
    """--mix-in loop: plain batches from the pipeline, mixed by the trainer; its generator is in
    the checkpoint, so a run stopped mid-epoch and resumed ends with the weights of one that was not."""
    flags = ["--epochs", "2", "--mix-in", "loop", "--mixup", "0.3", "--cutmix-mode", "elem"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert train.main(train_args(jpeg_tree, whole, *flags)) == 0
    real = engine.train_step
    sigterm_after_step(monkeypatch, 4)  # epoch 1, step 1
    assert train.main(train_args(jpeg_tree, parts, *flags)) == 128 + signal.SIGTERM
    assert (parts / "checkpoint_0001_step000001.pt").is_file()
    monkeypatch.setattr(engine, "train_step", real)
    assert train.main(train_args(jpeg_tree, parts, *flags, "--resume")) == 0
    a, b = (torch.load(out / "checkpoint_0002.pt", weights_only=True) for out in (whole, parts))
    assert a["loaders"][0]["mixer"] == b["loaders"][0]["mixer"]
    for name, tensor in a["model"].items():
        torch.testing.assert_close(b["model"][name], tensor, rtol=1e-5, atol=1e-6, msg=name)


def test_the_loop_mixer_is_the_oracle_on_the_loaded_batch(jpeg_tree, monkeypatch):
    """What the trainer feeds the model in loop mode is apply_cutmix of the plain batch."""
    from dali_cutmix.loop import LoopMixer
    from dali_cutmix.paste import apply_cutmix
    from dali_cutmix.recipe import MixConfig
    from dali_cutmix.sampling import sample_mix

    mixer = LoopMixer(MixConfig(mode="elem", prob=0.7), seed=5)
    images, labels = torch.rand(6, 3, 16, 24), torch.arange(6)
    want = apply_cutmix(images, labels, sample_mix(6, 16, 24, MixConfig(mode="elem", prob=0.7), 5), "CHW")
    for got, expected in zip(mixer(images, labels), want):
        assert torch.equal(torch.as_tensor(got), torch.as_tensor(expected))


@pytest.mark.gpu
def test_train_on_the_gpu_with_amp(jpeg_tree, tmp_path):
    out = tmp_path / "run"
    assert train.main(train_args(jpeg_tree, out, "--epochs", "1", "--device", "gpu")) == 0
    (row,) = read_rows(out)
    assert row["train_loss"] == row["train_loss"] and row["val_images"] == 9
    state = torch.load(out / "checkpoint_0001.pt", weights_only=True)
    assert state["scaler"] is not None  # float16 autocast with a GradScaler
    assert torch.backends.cudnn.benchmark  # fixed-size input


@pytest.mark.gpu
def test_the_gpu_optimizer_is_fused_so_the_scaler_reads_nothing_back():
    from dali_cutmix_trainer.engine import sgd

    model = torch.nn.Linear(4, 4).cuda()
    assert sgd(model, lr=0.1, momentum=0.9, weight_decay=1e-4).defaults["fused"]


def test_a_data_dir_without_images_is_a_one_line_error(tmp_path):
    (tmp_path / "data" / "train" / "a").mkdir(parents=True)
    (tmp_path / "data" / "val" / "a").mkdir(parents=True)
    proc = subprocess.run(
        [sys.executable, "train.py", "--data", str(tmp_path / "data"), "--output", str(tmp_path / "o")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert (
        proc.stderr.strip().splitlines()[-1]
        == f"train.py: error: {str(tmp_path / 'data' / 'train')!r} holds no images "
        "(.jpg, .jpeg, .png, .bmp, .tif, .tiff, .webp)"
    )


def test_non_finite_loss_stops_naming_the_step(jpeg_tree, tmp_path, capsys):
    out = tmp_path / "run"
    base = train_args(jpeg_tree, out)
    assert train.main([*base, "--epochs", "1"]) == 0
    good = (out / "checkpoint_0001.pt").read_bytes()
    # Resumed with an absurd lr, the run blows up at once; the earlier checkpoint must survive.
    assert train.main([*base, "--epochs", "2", "--lr", "1e30", "--resume"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("train.py: error: non-finite loss") and "at epoch 1, step 1: lower --lr" in err
    assert err.endswith(f"the last good checkpoint is {out / 'checkpoint_0001.pt'}")
    assert (out / "checkpoint_0001.pt").read_bytes() == good and ckpt.latest(out) == out / "checkpoint_0001.pt"


def train_cmd(data: Path, out: Path) -> list[str]:
    """train.py for 2 epochs of 30 steps on ``data``, with MixUp switching, as a subprocess command."""
    flags = train_args(data, out, "--epochs", "2", "--mixup", "0.2", "--mixup-mode", "elem", batch_size=4)
    return [sys.executable, "train.py", *flags]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """120 images, the final weights and the metrics rows of a run that nothing interrupted."""
    root = tmp_path_factory.mktemp("uninterrupted")
    data = write_jpeg_tree(root / "data", train_per_class=40)
    proc = subprocess.run(train_cmd(data, root / "run"), cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in (root / "run" / "metrics.jsonl").read_text().splitlines()]
    return data, torch.load(root / "run" / "checkpoint_0002.pt", weights_only=True)["model"], rows


def assert_same_rows(out: Path, reference: list[dict]) -> None:
    """The metrics rows of an interrupted and resumed run against the uninterrupted run's: the same
    counts and lr, the losses and accuracies within float noise (times differ)."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [r["epoch"] for r in reference]
    for row, ref in zip(rows, reference):
        for key in ("steps", "train_images", "val_images", "image_size", "lr"):
            assert row[key] == ref[key], (row["epoch"], key)
        for key in ("train_loss", "val_loss", "val_top1", "val_top5"):
            assert row[key] == pytest.approx(ref[key], rel=1e-4, abs=1e-5), (row["epoch"], key)


def assert_same_weights(out: Path, reference: dict) -> None:
    final = torch.load(out / "checkpoint_0002.pt", weights_only=True)["model"]
    for name, tensor in reference.items():
        torch.testing.assert_close(final[name], tensor, rtol=1e-5, atol=1e-6, msg=name)


# train.py, with a signal sent to itself right after the Nth training step of the run: the
# interruption lands at a known step, whatever the machine's speed.
SIGNAL_AT_STEP = """
import os, sys
import train
from dali_cutmix_trainer import engine
signum, at = int(sys.argv[1]), int(sys.argv[2])
real, done = engine.train_step, [0]
def step(*args, **kwargs):
    loss = real(*args, **kwargs)
    done[0] += 1
    if done[0] == at:
        os.kill(os.getpid(), signum)
    return loss
engine.train_step = step
sys.exit(train.main(sys.argv[3:]))
"""


def interrupted(tmp_path, data: Path, signum: int, at_step: int):
    """Run :func:`train_cmd` until ``signum`` after its ``at_step``-th step; return the finished
    process, the command and the output folder."""
    out = tmp_path / "run"
    cmd = train_cmd(data, out)
    driver = [sys.executable, "-c", SIGNAL_AT_STEP, str(signum), str(at_step), *cmd[2:]]
    proc = subprocess.run(driver, cwd=ROOT, capture_output=True, text=True, timeout=900)
    return proc, cmd, out


@pytest.mark.slow
def test_sigterm_saves_mid_epoch_and_resume_is_exact(tmp_path, uninterrupted):
    data, reference, reference_rows = uninterrupted
    proc, cmd, out = interrupted(tmp_path, data, signal.SIGTERM, at_step=30 + 12)  # epoch 1, its 12th step
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
    saved = ckpt.latest(out)
    state = torch.load(saved, weights_only=True)
    assert saved.name == "checkpoint_0001_step000012.pt" and state["epoch"] == 1 and state["step"] == 12
    proc = subprocess.run([*cmd, "--resume"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    assert f"resuming from {saved}: epoch 1, step 12, with the data stream exactly" in proc.stdout
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]
    assert rows[1]["steps"] == 30 and rows[1]["train_images"] == 4 * 30  # the whole epoch: its books were saved
    assert not saved.exists()  # superseded by checkpoint_0002.pt
    assert_same_weights(out, reference)  # the same batches, mixes and updates as without the signal
    assert_same_rows(out, reference_rows)


@pytest.mark.slow
def test_sigkill_mid_epoch_resumes_from_the_last_complete_checkpoint_exactly(tmp_path, uninterrupted):
    data, reference, reference_rows = uninterrupted
    proc, cmd, out = interrupted(tmp_path, data, signal.SIGKILL, at_step=30 + 10)
    assert proc.returncode == -signal.SIGKILL
    assert ckpt.latest(out) == out / "checkpoint_0001.pt"
    torch.load(out / "checkpoint_0001.pt", weights_only=True)  # whole, loadable
    proc = subprocess.run([*cmd, "--resume"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    assert "epoch 1, step 0, with the data stream exactly" in proc.stdout
    assert [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [0, 1]
    assert_same_weights(out, reference)
    assert_same_rows(out, reference_rows)


def test_resuming_on_data_with_other_classes_is_a_clear_error(tmp_path, capsys):
    three = write_jpeg_tree(tmp_path / "three", classes=3)
    four = write_jpeg_tree(tmp_path / "four", classes=4)
    out = tmp_path / "run"
    assert train.main(train_args(three, out, "--epochs", "1")) == 0
    assert train.main(train_args(four, out, "--epochs", "2", "--resume")) == 2
    assert capsys.readouterr().err.strip().endswith("checkpoint has 3 classes, but the data has 4")
