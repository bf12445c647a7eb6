"""``dali_cutmix/loader.py``: steps per epoch, the per-epoch schedule, the process's shard."""

import pytest

pytest.importorskip("nvidia.dali", exc_type=ImportError)  # `pytest -m gpu` collects without DALI

from dali_cutmix.loader import mix_schedule, process_shard, steps_per_epoch
from dali_cutmix.mix import MixConfig, RecipeError
from pipelines import train_pipeline
from pipelines.loaders import train_loader


def test_steps_per_epoch_matches_dali(jpeg_tree):
    for shards in (1, 2):
        pipe = train_pipeline(jpeg_tree / "train", batch_size=4, image_size=32, num_threads=1, num_shards=shards)
        loader = train_loader(
            jpeg_tree / "train", batch_size=4, image_size=32, num_threads=1, shard_id=0, num_shards=shards
        )
        assert len(loader) == steps_per_epoch(18, 4, shards)
        del pipe


def test_the_shard_comes_from_the_environment(monkeypatch, jpeg_tree):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert process_shard() == (0, 1)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert process_shard() == (1, 3)
    loader = train_loader(jpeg_tree / "train", batch_size=2, image_size=32, num_threads=1)
    assert len(loader) == 3  # 18 images / 3 ranks / 2 a batch
    with pytest.raises(ValueError, match="give shard_id and num_shards together, got 0 and None"):
        train_loader(jpeg_tree / "train", batch_size=2, shard_id=0)


def test_schedules_are_part_of_the_recipe():
    recipe = MixConfig(prob_schedule={6: 0.25, 3: 0.5}, off_epoch=9)
    assert recipe.prob_schedule == ((3, 0.5), (6, 0.25)) and recipe.scheduled and not MixConfig().scheduled
    assert [recipe.prob_at(e) for e in range(11)] == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.0, 0.0]
    with pytest.raises(RecipeError, match=r"prob_schedule must be a number in \[0, 1\], got 1.5"):
        MixConfig(prob_schedule={2: 1.5})
    with pytest.raises(RecipeError, match=r"off_epoch must be an epoch >= 0 or None, got -1"):
        MixConfig(off_epoch=-1)


def test_the_old_schedule_function_still_works_and_says_it_goes():
    with pytest.warns(DeprecationWarning, match="mix_schedule is deprecated"):
        schedule = mix_schedule(1.0, changes={3: 0.5}, mix_off_epoch=5)
    assert [schedule(e) for e in range(6)] == [1.0, 1.0, 1.0, 0.5, 0.5, 0.0]
