"""The library in users' own code: schedules applied or refused, every setting checked, settings
passed through untouched, failures named wherever they are met, and light imports."""

import pytest

pytest.importorskip("nvidia.dali", exc_type=ImportError)  # `pytest -m gpu` collects without DALI

import subprocess
import sys
from pathlib import Path

import numpy as np
from nvidia.dali import fn, pipeline_def

import dali_cutmix
from dali_cutmix.recipe import MixConfig, RecipeError
from pipelines.loaders import train_loader
from pipelines.settings import SettingError

ROOT = Path(__file__).resolve().parents[1]


def _run_own_pipeline(recipe: MixConfig, with_feed: bool, steps_per_epoch: int = 2, epochs: int = 3):
    """A user's own @pipeline_def mixing in-memory batches; the lam of every sample, epoch by epoch."""
    rng = np.random.default_rng(0)
    batch = [rng.integers(0, 256, (16, 16, 3), np.uint8) for _ in range(4)]
    labels = [np.array([i], np.int32) for i in range(4)]

    @pipeline_def(batch_size=4, num_threads=1, device_id=None, seed=3)
    def own():
        images = fn.external_source(source=lambda: batch, layout="HWC")
        prob = dali_cutmix.epoch_prob(recipe, 4, steps_per_epoch) if with_feed else None
        return dali_cutmix.cutmix(images, fn.external_source(source=lambda: labels), recipe, sample_prob=prob,
                                  backend="python")  # fmt: skip

    p = own()
    p.build()
    return [[float(np.asarray(p.run()[3].as_array()).min()) for _ in range(steps_per_epoch)] for _ in range(epochs)]


def test_a_per_epoch_schedule_in_cutmix_is_applied_when_fed_and_refused_otherwise():
    recipe = MixConfig(alpha=1.0, off_epoch=1)  # mixing in epoch 0 only
    with pytest.raises(ValueError, match=r"changes by epoch .* sample_prob=dali_cutmix.epoch_prob\(recipe"):
        _run_own_pipeline(recipe, with_feed=False)
    lams = _run_own_pipeline(recipe, with_feed=True)
    assert min(lams[0]) < 1.0 and all(v == 1.0 for epoch in lams[1:] for v in epoch)


def test_library_values_of_the_wrong_kind_are_errors_naming_them(jpeg_tree):
    common = dict(batch_size=4, image_size=32, num_threads=1, shard_id=0, num_shards=1)
    with pytest.raises(RecipeError, match=r"recipe must be a dali_cutmix.MixConfig, or None for no mixing, got \{"):
        train_loader(jpeg_tree / "train", recipe={"alpha": 1.0}, **common)
    with pytest.raises(SettingError, match=r"state must be what DALILoader.state\(\) returned .* got str"):
        train_loader(jpeg_tree / "train", state="epoch 3", **common)


def test_a_saved_state_continues_only_a_loader_of_the_same_data(jpeg_tree, tmp_path):
    from conftest import write_jpeg_tree

    common = dict(batch_size=4, image_size=32, num_threads=1, shard_id=0, num_shards=1)
    loader = train_loader(jpeg_tree / "train", **common)
    next(iter(loader))
    state = loader.state()
    other = write_jpeg_tree(tmp_path / "other", classes=3, train_per_class=10)
    with pytest.raises(SettingError, match=r"state is a loader's over other data or settings \(samples 18 -> 30\)"):
        train_loader(other / "train", state=state, **common)
    train_loader(jpeg_tree / "train", state=state, **common)  # the same data: accepted


def test_no_mixing_honours_the_backend_asked_for(jpeg_tree):
    from pipelines.graphs import train_pipeline

    def schemas(**kwargs):
        pipe = train_pipeline(jpeg_tree / "train", batch_size=4, image_size=32, recipe=None, **kwargs)
        pipe._build_graph()
        return {getattr(o._op, "schema_name", "") for o in pipe._ops}

    assert "dali_cutmix__Mix" in schemas()  # the CPU default: the native operator at prob 0
    plain = schemas(backend="ops")
    assert "dali_cutmix__Mix" not in plain and "Resize" in plain and "CropMirrorNormalize" in plain


def test_finish_epoch_names_a_file_dali_fails_on(jpeg_tree):
    from test_hostile import corrupt_png

    from dali_cutmix.loader import DecodeFailed

    bad = jpeg_tree / "train" / "class2" / "zz-corrupt.png"
    corrupt_png(bad)
    loader = train_loader(jpeg_tree / "train", batch_size=1, image_size=32, num_threads=1, shard_id=0, num_shards=1)
    batches = iter(loader)
    next(batches)  # an epoch left open after one batch; the corrupt file is met in the rest
    with pytest.raises(DecodeFailed, match=f"DALI failed to decode {bad}"):
        loader.finish_epoch()


def test_the_lightning_module_derives_validation_from_the_users_settings(jpeg_tree, monkeypatch):
    from pipelines import lightning

    seen = []
    monkeypatch.setattr(lightning, "val_loader", lambda settings: seen.append(settings) or [])
    dm = lightning.DALIDataModule(jpeg_tree / "train", jpeg_tree / "val", batch_size=4, image_size=32, seed=7,
                                  num_threads=1, prefetch_queue_depth=3, uint8=False, val_batch_size=5)  # fmt: skip
    dm.setup("fit")
    dm.val_dataloader()
    (val,) = seen
    assert (val.seed, val.prefetch_queue_depth, val.uint8, val.num_threads, val.batch_size) == (7, 3, False, 1, 5)
    assert val.classes == tuple(dm.train_source.classes) and val.size_schedule is None


def test_the_trainers_command_line_loads_no_dali_and_no_torch():
    """``dali_cutmix_trainer.cli`` (train.py's flags, their checks, --help) stays light."""
    code = ("import sys, dali_cutmix_trainer.cli; "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('nvidia.dali')))")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
