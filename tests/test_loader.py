"""``dali_cutmix/loader.py``: steps per epoch, the per-epoch schedule, the process's shard."""

import pytest

pytest.importorskip("nvidia.dali", exc_type=ImportError)  # `pytest -m gpu` collects without DALI

from dali_cutmix.loader import process_shard, steps_per_epoch
from dali_cutmix.recipe import MixConfig, RecipeError
from pipelines.loaders import train_loader


def test_steps_per_epoch_matches_dali(jpeg_tree):
    for shards in (1, 2):
        loader = train_loader(
            jpeg_tree / "train", batch_size=4, image_size=32, num_threads=1, shard_id=0, num_shards=shards
        )
        assert len(loader) == steps_per_epoch(18, 4, shards) == len(list(loader))


def test_the_shard_comes_from_the_environment(monkeypatch, jpeg_tree):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert process_shard() == (0, 1)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert process_shard() == (1, 3)
    loader = train_loader(jpeg_tree / "train", batch_size=2, image_size=32, num_threads=1)
    assert len(loader) == 3  # 18 images / 3 ranks / 2 a batch
    with pytest.raises(ValueError, match="shard_id and num_shards go together, got 0 and None"):
        train_loader(jpeg_tree / "train", batch_size=2, shard_id=0)


def test_schedules_are_part_of_the_recipe():
    recipe = MixConfig(prob_schedule={6: 0.25, 3: 0.5}, off_epoch=9)
    assert recipe.prob_schedule == ((3, 0.5), (6, 0.25)) and recipe.scheduled and not MixConfig().scheduled
    assert [recipe.prob_at(e) for e in range(11)] == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.0, 0.0]
    with pytest.raises(RecipeError, match=r"prob_schedule must be a number in \[0, 1\], got 1.5"):
        MixConfig(prob_schedule={2: 1.5})
    with pytest.raises(RecipeError, match=r"off_epoch must be an epoch >= 0 or None, got -1"):
        MixConfig(off_epoch=-1)


class _Count:
    """A batch callback that counts the pipeline's runs and passes its input on."""

    def __init__(self):
        self.runs = 0

    def __call__(self, labels):
        self.runs += 1
        return labels


def _counted_loader(tree, batches: int):
    """A DALILoader of ``batches`` batches of 2 labels an epoch, and the counter of its pipeline's runs."""
    import nvidia.dali.fn as fn
    from nvidia.dali import pipeline_def

    from dali_cutmix.loader import DALILoader

    files = sorted(str(f) for f in (tree / "train").rglob("*.JPEG"))
    files = (files * batches)[: 2 * batches]
    count = _Count()

    @pipeline_def(batch_size=2, num_threads=1, device_id=None, seed=0)
    def counted():
        _, labels = fn.readers.file(files=files, labels=list(range(len(files))), name="Reader")
        return fn.python_function(labels, function=count, batch_processing=True)

    return DALILoader(counted(), ["labels"]), count


def test_an_exception_leaves_the_epoch_at_once_and_the_next_epoch_is_whole(jpeg_tree):
    loader, count = _counted_loader(jpeg_tree, batches=60)
    with pytest.raises(ZeroDivisionError):
        for step, _ in enumerate(loader):
            if step == 2:
                raise ZeroDivisionError("a bug in the training step")
    assert count.runs <= 6  # the 3 batches taken and DALI's prefetch, not the 60 of the epoch
    seen = [labels.tolist() for (labels,) in loader]  # the next for finishes the open epoch first
    assert len(seen) == 60 and sorted(sum(seen, [])) == list(range(120)) and loader.epoch == 2


def test_a_break_costs_nothing_until_the_next_epoch_and_finish_epoch_runs_it_now(jpeg_tree):
    loader, count = _counted_loader(jpeg_tree, batches=30)
    for _ in loader:
        break
    assert count.runs <= 4 and loader.epoch == 0
    loader.finish_epoch()  # what a trainer stopping epochs short by choice calls before it saves
    assert count.runs >= 30 and loader.epoch == 1
    assert len(list(loader)) == 30 and loader.epoch == 2
    loader.close()
    with pytest.raises(RuntimeError, match="closed"):
        next(iter(loader))


@pytest.mark.parametrize("which", ["train", "val"])
def test_gpu_loaders_default_to_this_process_gpu(jpeg_tree, monkeypatch, which):
    """Under a launcher (LOCAL_RANK=1) a GPU loader decodes on GPU 1 and hands tensors on cuda:1.
    DALI makes the GPU pipeline object without a GPU; only the iterator, which builds it, is
    recorded instead of made."""
    from pipelines import loaders

    made = {}
    monkeypatch.setattr(loaders, "DALILoader", lambda pipe, names, **kw: made.update(pipe=pipe, **kw))
    monkeypatch.setenv("LOCAL_RANK", "1")
    make = loaders.train_loader if which == "train" else loaders.val_loader
    make(jpeg_tree / which, batch_size=2, image_size=32, num_threads=1, device="gpu", shard_id=0, num_shards=1)
    assert made["pipe"].device_id == 1 and str(made["device"]) == "cuda:1"
    made["pipe"]._build_graph()  # the graph itself, on the GPU the pipeline names
    assert all(node.device == "gpu" for node in made["pipe"]._graph_outputs)
    make(jpeg_tree / which, batch_size=2, image_size=32, num_threads=1, device="gpu", device_id=0, shard_id=0,
         num_shards=1)  # fmt: skip
    assert made["pipe"].device_id == 0 and str(made["device"]) == "cuda:0"  # an explicit device_id wins


def test_hwc_float_images_come_out_as_a_channels_last_view_and_the_step_copies_nothing(jpeg_tree):
    """What the GPU pipelines do (crop_mirror_normalize writes HWC), on a CPU pipeline: the loader's
    batch is NCHW with channels_last strides over the very memory DALI's output was copied into,
    and the training step's ``contiguous(channels_last)`` returns it as it is."""
    import torch
    from nvidia.dali import fn, pipeline_def, types

    from dali_cutmix.loader import DALILoader
    from pipelines.folders import load_split

    split = load_split(jpeg_tree / "train")

    @pipeline_def(batch_size=6, num_threads=1, device_id=None, seed=0)
    def pipe():
        jpegs, labels = fn.readers.file(files=split.files, labels=split.labels, name="Reader")
        images = fn.resize(fn.decoders.image(jpegs), resize_x=20, resize_y=16)
        return fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout="HWC", mean=[1.0], std=[2.0]), labels

    p = pipe()
    p.build()
    seen = []
    real_permute = torch.Tensor.permute
    loader = DALILoader(p, ("images", "labels"), images_hwc=True)
    for images, _ in loader:
        assert images.shape == (6, 3, 16, 20) and images.is_contiguous(memory_format=torch.channels_last)
        assert images.stride() == (16 * 20 * 3, 1, 20 * 3, 3)  # the HWC bytes as they came
        assert images.contiguous(memory_format=torch.channels_last).data_ptr() == images.data_ptr()
        seen.append(real_permute(images, 0, 2, 3, 1).is_contiguous())  # the view is of an NHWC block
    assert seen and all(seen)
