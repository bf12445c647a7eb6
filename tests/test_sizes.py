"""Progressive resizing (``--size-schedule``) and the validation crop (``--val-image-size``): each
batch at its epoch's side, CutMix's boxes inside it, no rebuild, and an exact resume across a change."""

import json

import pytest

pytest.importorskip("nvidia.dali", exc_type=ImportError)  # `pytest -m gpu` collects without DALI

import numpy as np
import torch
from conftest import sigterm_after_step, train_args

import train
from dali_cutmix.errors import UserError
from dali_cutmix_trainer import engine
from pipelines.loaders import train_loader
from pipelines.settings import SizeSchedule

SCHEDULE = "0:16,1:32,2:24"


def record_sides(monkeypatch) -> list[int]:
    sides, real = [], engine.train_step

    def step(model, optimizer, scaler, batch, **kwargs):
        sides.append(batch[0].shape[-1])
        return real(model, optimizer, scaler, batch, **kwargs)

    monkeypatch.setattr(engine, "train_step", step)
    return sides


def weights(path):
    return torch.load(path, weights_only=True)["model"]


def test_the_schedule_parses_and_says_what_is_wrong():
    sizes = SizeSchedule.parse("10:192,0:160")
    assert sizes.steps == ((0, 160), (10, 192)) and [sizes.at(e, 128) for e in (0, 9, 10, 50)] == [160, 160, 192, 192]
    assert SizeSchedule.parse("5:64").at(2, default=32) == 32  # --image-size before the first step
    for text, message in (("0:160,x", "expected EPOCH:SIDE pairs"), ("0:8", r"a side in \[16, 4096\]"),
                          ("-1:64", "needs epochs >= 0, got -1"), ("0:16,0:32", "gives epoch 0 twice"),
                          ("", "expected EPOCH:SIDE pairs")):  # fmt: skip
        with pytest.raises(UserError, match=message):
            SizeSchedule.parse(text)


@pytest.mark.parametrize("backend", ["native", "python", "ops"])
def test_each_batch_has_its_epochs_side_and_the_boxes_fit_it(jpeg_tree, backend):
    sizes = SizeSchedule.parse("1:16,2:40")
    loader = train_loader(jpeg_tree / "train", batch_size=6, image_size=32, num_threads=1, shard_id=0, num_shards=1,
                          backend=backend, size_schedule=sizes, return_params=True)  # fmt: skip
    for epoch, side in enumerate([32, 16, 40]):
        for batch in loader:
            out = dict(zip(loader.output_map, batch))
            assert out["images"].shape == (6, 3, side, side), (epoch, backend)
            boxes = np.asarray(out["boxes"]).reshape(-1, 4)
            assert boxes.min() >= 0 and boxes[:, 2:].max() <= side
            area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            np.testing.assert_allclose(out["lam"].numpy(), 1 - area / side**2, atol=1e-6)


def test_train_py_follows_the_schedule_and_validates_at_its_own_size(jpeg_tree, tmp_path, monkeypatch):
    sides = record_sides(monkeypatch)
    out = tmp_path / "run"
    flags = train_args(jpeg_tree, out, "--epochs", "3", "--size-schedule", SCHEDULE, "--val-image-size", "40",
                       batch_size=2)  # fmt: skip
    assert train.main(flags) == 0
    assert sides == [16] * 9 + [32] * 9 + [24] * 9
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["image_size"] for r in rows] == [16, 32, 24] and all(r["val_images"] == 9 for r in rows)
    config = json.loads((out / "config.json").read_text())
    assert config["size_schedule"] == SCHEDULE and config["val_image_size"] == 40


def test_a_resume_across_a_size_change_is_exact(jpeg_tree, tmp_path, monkeypatch):
    reference = tmp_path / "reference"
    flags = ["--epochs", "3", "--size-schedule", SCHEDULE]
    assert train.main(train_args(jpeg_tree, reference, *flags, batch_size=2)) == 0
    out = tmp_path / "run"
    sigterm_after_step(monkeypatch, at=9 + 4)  # epoch 1 (side 32), after its 4th step
    assert train.main(train_args(jpeg_tree, out, *flags, batch_size=2)) == 143
    monkeypatch.undo()
    sides = record_sides(monkeypatch)
    assert train.main(train_args(jpeg_tree, out, *flags, "--resume", batch_size=2)) == 0
    assert sides == [32] * 5 + [24] * 9  # the rest of epoch 1 at 32, then 24
    for name, value in weights(reference / "checkpoint_0003.pt").items():
        assert torch.equal(value, weights(out / "checkpoint_0003.pt")[name]), name


def test_the_schedule_is_a_usage_error_when_malformed(capsys):
    with pytest.raises(SystemExit):
        train.parse_args(["--size-schedule", "0:160,10"])
    assert "--size-schedule '0:160,10': expected EPOCH:SIDE pairs such as 0:160,10:192" in capsys.readouterr().err


def test_a_step_past_the_last_epoch_is_refused_and_one_schedule_has_one_spelling(capsys):
    with pytest.raises(SystemExit):
        train.parse_args(["--size-schedule", "0:16,5:32", "--epochs", "3"])
    assert "--size-schedule epoch 5 is past the last epoch (2) of --epochs 3" in capsys.readouterr().err
    args = train.parse_args(["--size-schedule", "1:32,0:16", "--epochs", "3"])
    assert args.size_schedule == "0:16,1:32" and args.val_image_size == 32  # a resume compares this spelling
