"""The loader's settings (one frozen object, passed untouched) and the seeds derived in one place."""

import dataclasses

import pytest

pytest.importorskip("nvidia.dali", exc_type=ImportError)  # `pytest -m gpu` collects without DALI

from dali_cutmix.seeds import MAX_SEED, derive_seed
from pipelines import loaders
from pipelines.settings import LoaderSettings, SettingError, SizeSchedule


def test_settings_are_frozen_and_reach_the_pipeline_untouched(jpeg_tree, monkeypatch):
    settings = LoaderSettings(jpeg_tree / "train", batch_size=4, image_size=32, num_threads=1, shard_id=0, num_shards=1,
                              size_schedule=SizeSchedule.parse("0:16,1:32"))  # fmt: skip
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.seed = 3
    seen = []
    real = loaders.train_pipeline
    monkeypatch.setattr(loaders, "train_pipeline", lambda s, **kwargs: seen.append(s) or real(s, **kwargs))
    images, *_ = next(iter(loaders.train_loader(settings)))
    assert seen == [settings] and seen[0] is settings
    assert tuple(images.shape) == (4, 3, 16, 16)  # the schedule's first side, from the object alone


def test_the_keyword_form_builds_the_same_settings(jpeg_tree):
    fields = dict(batch_size=4, image_size=32, seed=5)
    assert LoaderSettings.of(jpeg_tree, **fields) == LoaderSettings(jpeg_tree, **fields)
    settings = LoaderSettings(jpeg_tree, **fields)
    assert LoaderSettings.of(settings) is settings
    with pytest.raises(TypeError, match="give settings or keyword arguments, not both: seed"):
        LoaderSettings.of(settings, seed=1)


@pytest.mark.parametrize(
    "fields, name, message",
    [
        (
            {"num_threads": 0},
            "num_threads",
            r"num_threads must be an int >= 1 or None \(the cores per local rank\), got 0",
        ),
        ({"seed": -1}, "seed", rf"seed must be an int in \[0, {MAX_SEED}\], got -1"),
        ({"image_size": True}, "image_size", r"image_size must be an int in \[16, 4096\], got True"),
        ({"shard_id": 0}, "shard_id", "shard_id and num_shards go together, got 0 and None"),
        ({"fp16": True}, "fp16", "fp16 output needs device='gpu'"),
        ({"size_schedule": "0:16"}, "size_schedule", "size_schedule must be a SizeSchedule, got '0:16'"),
    ],
    ids=["threads", "seed", "bool", "shard", "fp16", "schedule"],
)
def test_a_bad_setting_names_its_argument(fields, name, message):
    with pytest.raises(SettingError, match=message) as info:
        LoaderSettings("data", **{"batch_size": 2, **fields})
    assert info.value.name == name and str(info.value).startswith(name + " ")


def test_what_a_setting_left_as_none_resolves_to_is_computed_not_written(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    settings = LoaderSettings("data", batch_size=2)
    assert settings.shard() == (3, 4) and settings.shard_id is None
    assert settings.gpu() is None and not settings.ships_uint8() and str(settings.output_device()) == "cpu"
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert LoaderSettings("data", batch_size=2, torch_device="cuda:1").ships_uint8()  # CPU pipeline, GPU trainer


def test_seeds_are_one_stream_per_shard_and_epoch_and_the_shuffle_is_shared():
    augment = {(shard, origin): derive_seed(7, "augment", origin=origin, shard=shard) for shard in range(8)
               for origin in range(4)}  # fmt: skip
    mixer = {derive_seed(7, "loop_mixer", shard=shard) for shard in range(8)}
    assert len(set(augment.values()) | mixer) == len(augment) + len(mixer)  # no two streams share a seed
    assert all(0 <= v <= MAX_SEED for v in augment.values())
    assert len({derive_seed(7, "shuffle", shard=shard) for shard in range(8)}) == 1  # every shard's order agrees
    assert derive_seed(7, "shuffle", origin=1) != derive_seed(7, "shuffle") != derive_seed(8, "shuffle")
    with pytest.raises(ValueError, match="stream must be one of"):
        derive_seed(7, "dropout")
    with pytest.raises(ValueError, match="seed must be an int >= 0, got -1"):
        derive_seed(-1, "augment")


@pytest.mark.parametrize(
    "fields, name, message",
    [
        ({"num_shards": 2.5, "shard_id": 0}, "num_shards", r"num_shards must be an int >= 1, got 2.5"),
        ({"device_id": -3, "device": "gpu"}, "device_id", r"device_id must be an int >= 0 or None .*, got -3"),
        ({"uint8": "yes"}, "uint8", r"uint8 must be True or False or None, got 'yes'"),
        ({"fp16": True, "uint8": True, "device": "gpu"}, "fp16", "fp16 and uint8 exclude each other"),
        ({"random_area": (0.5,)}, "random_area", r"random_area must be \(min, max\), two numbers, got \(0.5,\)"),
        ({"random_area": "ab"}, "random_area", r"random_area must be \(min, max\), two numbers, got 'ab'"),
        ({"random_area": None}, "random_area", r"random_area must be \(min, max\), two numbers, got None"),
        ({"classes": "abc"}, "classes", "classes must be a list of class names, got 'abc'"),
        ({"torch_device": "cuda"}, "torch_device", "torch_device is 'cuda', but CUDA is not available on this machine"),
        ({"torch_device": "tpu:x"}, "torch_device", "torch_device must be a torch device such as 'cpu' or 'cuda:0'"),
    ],
    ids=[
        "num-shards",
        "device-id",
        "uint8",
        "fp16-uint8",
        "area-short",
        "area-str",
        "area-none",
        "classes",
        "cuda-missing",
        "device-garbage",
    ],  # fmt: skip
)
def test_every_field_is_checked_when_the_settings_are_made(fields, name, message):
    if fields.get("torch_device") == "cuda":
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
    with pytest.raises(SettingError, match=message) as info:
        LoaderSettings("data", **{"batch_size": 2, **fields})
    assert info.value.name == name


def test_a_size_schedule_names_itself_and_refuses_what_is_not_a_side():
    from pipelines.settings import SizeSchedule

    for steps, message in ((((0, 32.7),), r"32.7 is not a whole number"), (((0, 16), (0, 32)), "epoch 0 twice"),
                           (((-1, 16),), "epochs >= 0"), ("0:16", "must be \\(epoch, value\\) pairs")):  # fmt: skip
        with pytest.raises(SettingError, match=message) as info:
            SizeSchedule(steps)
        assert info.value.name == "size_schedule"
