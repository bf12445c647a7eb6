"""ResizeMix (``paste="resize"``): the partner's whole image resampled into the box. Its boxes,
its pixels against an independent NumPy loop, every place a recipe goes (the python backend in
DALI, the loop mixer, train.py). The native operator's ResizeMix, and what each backend says about
it, are in tests/test_box_recipes.py."""

import pytest

pytest.importorskip("nvidia.dali", exc_type=ImportError)  # `pytest -m gpu` collects without DALI

import json

import numpy as np
import torch
from conftest import random_batch, reference_resize_mix, train_args
from dali_helpers import mix_arrays

import train
from dali_cutmix.loop import LoopMixer
from dali_cutmix.paste import apply_cutmix
from dali_cutmix.recipe import MixConfig, RecipeError
from dali_cutmix.sampling import CutMixParams, sample_mix

H, W = 40, 72
RESIZE = MixConfig(paste="resize", mode="elem")


def test_boxes_keep_the_images_aspect_at_a_uniform_scale_and_lambda_is_the_pasted_share():
    params = sample_mix(4000, H, W, RESIZE, 0)
    y1, x1, y2, x2 = params.boxes.T
    h, w = y2 - y1, x2 - x1
    assert (y1 >= 0).all() and (x1 >= 0).all() and (y2 <= H).all() and (x2 <= W).all()
    # one tau for both sides: [h/H, (h+1)/H) and [w/W, (w+1)/W) meet inside [0.1, 0.8)
    low = np.maximum(np.maximum(h / H, w / W), 0.1)
    high = np.minimum(np.minimum((h + 1) / H, (w + 1) / W), 0.8)
    assert (low < high + 1e-6).all()
    np.testing.assert_array_equal(params.lam, np.float32(1) - (h * w).astype(np.float32) / np.float32(H * W))
    assert params.resized and abs((w / W).mean() - 0.45) < 0.02  # U[0.1, 0.8): mean 0.45, less the floor
    assert abs(np.quantile(w / W, 0.5) - 0.45) < 0.03
    # the corner is uniform over the places that keep the box inside: both ends are reached
    assert (x1 == 0).any() and (x2 == W).any()


@pytest.mark.parametrize("config", [RESIZE, MixConfig(paste="resize", mode="elem", mixup_alpha=0.4, prob=0.8)],
                         ids=["resize", "resize+mixup"])  # fmt: skip
@pytest.mark.parametrize("layout", ["HWC", "CHW"])
def test_numpy_and_torch_match_the_oracle(config, layout):
    rng = np.random.default_rng(1)
    shape = (H, W, 3) if layout == "HWC" else (3, H, W)
    images = np.stack(random_batch(rng, 12, shape))
    params = sample_mix(12, H, W, config, 2)
    expected = reference_resize_mix(images, params, layout)
    np.testing.assert_array_equal(apply_cutmix(images, np.arange(12), params, layout)[0], expected)
    mixed = apply_cutmix(torch.from_numpy(images), torch.arange(12), params, layout)[0]
    np.testing.assert_array_equal(mixed.numpy(), expected)


def test_the_box_shows_the_partners_whole_image():
    """A partner whose pixels hold their own row and column: the box samples it from edge to edge."""
    rows, cols = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    coded = np.stack([rows, cols, np.zeros_like(rows)], axis=-1).astype(np.uint8)
    images = np.stack([np.full((H, W, 3), 255, np.uint8), coded])
    params = CutMixParams(perm=np.array([1, 0]), boxes=np.array([[5, 9, 25, 45], [0, 0, 0, 0]], np.int32),
                          lam=np.array([1 - 20 * 36 / (H * W), 1], np.float32), resized=True)  # fmt: skip
    box = apply_cutmix(images, np.arange(2), params, "HWC")[0][0, 5:25, 9:45]
    assert box[..., 0].min() == 1 and box[..., 0].max() == H - 1  # rows 1..39 of 40, every other one
    assert box[..., 1].min() == 1 and box[..., 1].max() == W - 1
    assert (np.diff(box[..., 0].astype(int), axis=0) == 2).all()


@pytest.mark.parametrize("layout", ["HWC", "CHW"])
def test_the_python_backend_in_dali_mixes_as_the_oracle(layout):
    rng = np.random.default_rng(3)
    shape = (H, W, 3) if layout == "HWC" else (3, H, W)
    batches = [random_batch(rng, 8, shape) for _ in range(3)]
    resized = 0
    for images, mixed, _la, lb, lam, perm, boxes, blend in mix_arrays(
        batches, backend="python", layout=layout, paste="resize", mode="elem", mixup_alpha=0.5
    ):
        params = CutMixParams(perm=perm.astype(np.int64), boxes=boxes, lam=lam, blend=blend > 0, resized=True)
        np.testing.assert_array_equal(mixed, reference_resize_mix(images, params, layout))
        np.testing.assert_array_equal(lb.reshape(-1), perm)
        resized += int(((boxes[:, 2] > boxes[:, 0]) & (blend == 0)).sum())
    assert resized > 0


def test_the_recipe_checks_its_fields():
    with pytest.raises(RecipeError, match="paste must be one of"):
        MixConfig(paste="stretch")
    with pytest.raises(RecipeError, match="resize_scale must be"):
        MixConfig(paste="resize", resize_scale=(0.8, 0.1))
    with pytest.raises(RecipeError, match="not minmax"):
        MixConfig(paste="resize", minmax=(0.2, 0.5))
    assert MixConfig(paste="resize", resize_scale=[0.2, 0.5]).resize_scale == (0.2, 0.5)  # as JSON gives it back
    for bad in ((0.1, True), ("0.1", "0.5"), (0.1,), 0.5):
        with pytest.raises(RecipeError, match="resize_scale must be"):
            MixConfig(paste="resize", resize_scale=bad)
    # ends that differ as Python floats but not as float32 (the box's arithmetic, the operator's arguments)
    for bad in ((0.5, 0.500000001), (1e-50, 0.5)):
        with pytest.raises(RecipeError, match="in float32 too"):
            MixConfig(paste="resize", resize_scale=bad)
    with pytest.raises(RecipeError, match="minmax must be .* in float32 too"):
        MixConfig(minmax=(0.3, 0.3000000001))


def test_the_scale_range_is_half_open_even_where_float32_rounds_to_its_end():
    from dali_cutmix.sampling import resize_box

    u = np.array([[1 - 2**-24, 0.5, 0.5]], np.float32)  # tau rounds to the range's end in float32
    hw = np.array([10, 10], np.float32)
    assert resize_box(u, np.float32(1), hw, (0.2, 0.7))[2].tolist() == [[6.0, 6.0]]
    assert resize_box(u, np.float32(1), hw, (0.2, 1.0))[2].tolist() == [[9.0, 9.0]]  # never the whole image


def test_the_loop_mixer_mixes_channels_last_as_the_contiguous_batch():
    rng = np.random.default_rng(4)
    images = torch.from_numpy(np.stack(random_batch(rng, 8, (3, H, W))))
    plain = LoopMixer(RESIZE, seed=5)(images, torch.arange(8))
    last = LoopMixer(RESIZE, seed=5)(images.contiguous(memory_format=torch.channels_last), torch.arange(8))
    torch.testing.assert_close(last[0], plain[0], rtol=0, atol=0)
    params = LoopMixer(RESIZE, seed=5).sample(8, H, W)
    np.testing.assert_array_equal(plain[0].numpy(), reference_resize_mix(images.numpy(), params, "CHW"))


def test_train_py_takes_it_records_it_and_refuses_to_resume_with_the_other_paste(jpeg_tree, tmp_path, capsys):
    out = tmp_path / "run"
    assert train.main(train_args(jpeg_tree, out, "--epochs", "1", "--cutmix-paste", "resize")) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["recipe"]["paste"] == "resize" and config["cutmix_backend"] == "native"
    assert train.main(train_args(jpeg_tree, out, "--epochs", "2", "--resume")) == 2
    assert "--cutmix-paste 'resize', this run has 'cut'" in capsys.readouterr().err
    flags = ["--epochs", "2", "--resume", "--cutmix-paste", "resize", "--resize-scale", "0.2", "0.5"]
    assert train.main(train_args(jpeg_tree, out, *flags)) == 2
    assert "--resize-scale [0.1, 0.8], this run has [0.2, 0.5]" in capsys.readouterr().err  # both as lists


@pytest.mark.parametrize("flags, message", [
    (["--cutmix-paste", "resize", "--resize-scale", "0.9", "0.1"], "--resize-scale must be (min, max) with 0 < min"),
    (["--cutmix-paste", "resize", "--cutmix-minmax", "0.2", "0.5"],
     "--cutmix-paste resize takes its box's scale from --resize-scale: leave --cutmix-minmax out"),
    (["--resize-scale", "0.2", "0.3"], "--resize-scale is ResizeMix's box scale: give it with --cutmix-paste resize"),
])  # fmt: skip
def test_a_bad_resizemix_flag_is_a_usage_error_naming_it(jpeg_tree, tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as stop:
        train.main(train_args(jpeg_tree, tmp_path / "run", *flags))
    assert stop.value.code == 2 and message in capsys.readouterr().err
