"""SaliencyMix (``centre="saliency"``): CutMix's box centred on the peak of the partner's
saliency map. The map and its peak against an independent NumPy loop, the mix against the oracle
in NumPy, torch and the python backend in DALI, every place a recipe goes (the loop mixer, the
loader's resume, train.py). The native operator's SaliencyMix, and what each backend says about
it, are in tests/test_box_recipes.py."""

import pytest

pytest.importorskip("nvidia.dali", exc_type=ImportError)  # `pytest -m gpu` collects without DALI

import json

import numpy as np
import torch
from conftest import objects, random_batch, reference_mix, reference_peak, train_args
from dali_helpers import mix_arrays

import train
from dali_cutmix.loop import LoopMixer
from dali_cutmix.paste import apply_cutmix, placed
from dali_cutmix.recipe import MixConfig, RecipeError
from dali_cutmix.saliency import peaks
from dali_cutmix.sampling import CutMixParams, sample_mix

H, W = 70, 96  # cells of 2 x 2 pixels: a 35 x 48 map
SALIENT = MixConfig(centre="saliency", mode="elem")


def reference_boxes(images: np.ndarray, params: CutMixParams) -> tuple[np.ndarray, np.ndarray]:
    """Each box centred on its partner's reference peak and clipped, and its lambda (float32)."""
    boxes, lam = np.zeros((len(images), 4), np.int32), params.lam.copy()
    for i, j in enumerate(params.perm):
        y, x = reference_peak(images[j])
        hh, hw = params.boxes[i, 2:4]
        boxes[i] = max(y - hh, 0), max(x - hw, 0), min(y + hh, H), min(x + hw, W)
        if params.blend is None or not params.blend[i]:
            area = (boxes[i, 2] - boxes[i, 0]) * (boxes[i, 3] - boxes[i, 1])
            lam[i] = np.float32(1) - np.float32(area) / np.float32(H * W)
    return boxes, lam


def test_the_peak_is_the_oracles_and_lies_on_the_object():
    rng = np.random.default_rng(0)
    images = objects(rng, 16)
    got = peaks(images, "HWC")
    for image, (y, x) in zip(images, got):
        assert (y, x) == reference_peak(image)
        assert image[y, x].min() >= 180  # inside the bright square
    np.testing.assert_array_equal(peaks(torch.from_numpy(images), "HWC").numpy(), got)
    chw = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(peaks(chw, "CHW"), got)
    noise = np.stack(random_batch(rng, 8, (H, W, 3)))  # near-ties everywhere: the first maximum in both
    np.testing.assert_array_equal(peaks(noise, "HWC"), [reference_peak(image) for image in noise])


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_float_images_find_the_peak_numpy_and_torch_agree(dtype):
    images = (objects(np.random.default_rng(1), 8).astype(np.float32) / 255 - 0.45).astype(dtype)
    got = peaks(images, "HWC")
    np.testing.assert_array_equal(peaks(torch.from_numpy(images), "HWC").numpy(), got)
    assert all(images[i, y, x].min() > 0.2 for i, (y, x) in enumerate(got))


def test_a_nan_or_inf_pixel_reads_as_a_level_not_as_a_device_cast():
    images = objects(np.random.default_rng(8), 4).astype(np.float32) / 255
    images[0, 0, 0, 0], images[1, 5, 5, 1], images[2, 9, 9, 2] = np.nan, np.inf, -np.inf
    got = peaks(images, "HWC")
    np.testing.assert_array_equal(peaks(torch.from_numpy(images), "HWC").numpy(), got)
    clean = images.copy()
    clean[0, 0, 0, 0] = 0
    np.testing.assert_array_equal(got[0], peaks(clean, "HWC")[0])  # NaN counts as 0


def test_boxes_keep_cutmix_sides_around_the_partners_peak_and_lambda_is_the_pasted_share():
    rng = np.random.default_rng(2)
    images = objects(rng, 64)
    params = sample_mix(64, H, W, SALIENT, 3)
    assert params.salient and (params.boxes[:, :2] == -params.boxes[:, 2:]).all()
    got = placed(images, params, "HWC")
    boxes, lam = reference_boxes(images, params)
    np.testing.assert_array_equal(got.boxes, boxes)
    np.testing.assert_array_equal(got.lam, lam)
    assert not got.salient
    clipped = (got.boxes[:, 2] - got.boxes[:, 0]) < 2 * params.boxes[:, 2]
    assert clipped.any() and (got.lam >= params.lam).all() and (got.lam[clipped] > params.lam[clipped]).all()


@pytest.mark.parametrize("config", [SALIENT, MixConfig(centre="saliency", mode="elem", mixup_alpha=0.4, prob=0.8)],
                         ids=["saliency", "saliency+mixup"])  # fmt: skip
@pytest.mark.parametrize("layout", ["HWC", "CHW"])
def test_numpy_and_torch_match_the_oracle(config, layout):
    rng = np.random.default_rng(4)
    hwc = objects(rng, 12)
    images = hwc if layout == "HWC" else np.ascontiguousarray(hwc.transpose(0, 3, 1, 2))
    params = sample_mix(12, H, W, config, 5)
    boxes, lam = reference_boxes(hwc, params)
    expected = reference_mix(images, CutMixParams(params.perm, boxes, lam, params.blend), layout)
    mixed, _, _, got_lam = apply_cutmix(images, np.arange(12), params, layout)
    np.testing.assert_array_equal(mixed, expected)
    np.testing.assert_array_equal(got_lam, lam)
    mixed, _, _, got_lam = apply_cutmix(torch.from_numpy(images), torch.arange(12), params, layout)
    np.testing.assert_array_equal(mixed.numpy(), expected)
    np.testing.assert_array_equal(got_lam.numpy(), lam)


@pytest.mark.parametrize("layout", ["HWC", "CHW"])
def test_the_python_backend_in_dali_mixes_as_the_oracle(layout):
    rng = np.random.default_rng(6)
    batches = [list(objects(rng, 8) if layout == "HWC" else objects(rng, 8).transpose(0, 3, 1, 2).copy())
               for _ in range(3)]  # fmt: skip
    centred = 0
    for images, mixed, _la, lb, lam, perm, boxes, blend in mix_arrays(
        batches, backend="python", layout=layout, centre="saliency", mode="elem", mixup_alpha=0.5
    ):
        hwc = images if layout == "HWC" else images.transpose(0, 2, 3, 1)
        for i, j in enumerate(perm):
            if blend[i] == 0 and boxes[i, 2] > boxes[i, 0]:
                centred += 1
                y, x = reference_peak(hwc[j])  # the box holds its partner's peak, centred unless clipped
                assert boxes[i, 0] <= y < boxes[i, 2] and boxes[i, 1] <= x < boxes[i, 3]
                assert lam[i] == np.float32(1) - np.float32(
                    (boxes[i, 2] - boxes[i, 0]) * (boxes[i, 3] - boxes[i, 1])) / np.float32(H * W)  # fmt: skip
        params = CutMixParams(perm=perm.astype(np.int64), boxes=boxes, lam=lam, blend=blend > 0)
        np.testing.assert_array_equal(mixed, reference_mix(images, params, layout))
        np.testing.assert_array_equal(lb.reshape(-1), perm)
    assert centred > 0


def test_the_recipe_checks_its_fields():
    with pytest.raises(RecipeError, match="centre must be one of"):
        MixConfig(centre="middle")
    for clash in (dict(minmax=(0.2, 0.5)), dict(paste="resize"), dict(alpha=0.0, mixup_alpha=0.5)):
        with pytest.raises(RecipeError, match="'saliency' centres CutMix's alpha box"):
            MixConfig(centre="saliency", **clash)


def test_the_loop_mixer_mixes_channels_last_as_the_contiguous_batch():
    images = torch.from_numpy(objects(np.random.default_rng(7), 8).transpose(0, 3, 1, 2).copy())
    plain = LoopMixer(SALIENT, seed=5)(images, torch.arange(8))
    last = LoopMixer(SALIENT, seed=5)(images.contiguous(memory_format=torch.channels_last), torch.arange(8))
    torch.testing.assert_close(last[0], plain[0], rtol=0, atol=0)
    torch.testing.assert_close(last[3], plain[3], rtol=0, atol=0)
    params = placed(images.numpy(), LoopMixer(SALIENT, seed=5).sample(8, H, W), "CHW")
    np.testing.assert_array_equal(plain[0].numpy(), reference_mix(images.numpy(), params, "CHW"))
    np.testing.assert_array_equal(plain[3].numpy(), params.lam)


def test_train_py_takes_it_records_it_and_refuses_to_resume_with_the_other_centre(jpeg_tree, tmp_path, capsys):
    out = tmp_path / "run"
    assert train.main(train_args(jpeg_tree, out, "--epochs", "1", "--cutmix-centre", "saliency")) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["recipe"]["centre"] == "saliency" and config["cutmix_backend"] == "native"
    assert train.main(train_args(jpeg_tree, out, "--epochs", "2", "--resume")) == 2
    assert "--cutmix-centre 'saliency', this run has 'random'" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--cutmix-centre", "saliency", "--cutmix-paste", "resize"],
     "--cutmix-centre saliency centres CutMix's --cutmix-alpha box: leave --cutmix-paste resize out"),
    (["--cutmix-centre", "saliency", "--cutmix-minmax", "0.2", "0.5"], "leave --cutmix-minmax out"),
    (["--cutmix-centre", "saliency", "--cutmix-alpha", "0", "--mixup", "0.2"],
     "--cutmix-centre saliency centres CutMix's --cutmix-alpha box: give --cutmix-alpha > 0"),
])  # fmt: skip
def test_a_bad_saliencymix_flag_is_a_usage_error_naming_it(jpeg_tree, tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as stop:
        train.main(train_args(jpeg_tree, tmp_path / "run", *flags))
    assert stop.value.code == 2 and message in capsys.readouterr().err
