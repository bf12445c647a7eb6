"""The README's examples run as written, on the CPU with small sizes: the own pipeline, Lightning, Accelerate."""

import pytest

pytest.importorskip("nvidia.dali", exc_type=ImportError)  # `pytest -m gpu` collects without DALI

import re
from pathlib import Path

import numpy as np

from pipelines.folders import load_split

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_block(heading: str) -> str:
    text = README.read_text()
    section = text[text.index(heading) :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_own_pipeline_example(jpeg_tree):
    code = readme_block("## CutMix in your own pipeline")
    assert len(code.strip().splitlines()) <= 12
    code = code.replace('device="mixed"', 'device="cpu"').replace("device_id=0", "device_id=None").replace(".gpu()", "")
    namespace = {}
    exec(compile(code, str(README), "exec"), namespace)
    split = load_split(jpeg_tree / "train")
    pipe = namespace["my_pipeline"](split.files, split.labels, batch_size=6)
    pipe.build()
    images, labels_a, labels_b, lam = (o.as_array() for o in pipe.run())
    assert images.shape == (6, 3, 224, 224) and images.dtype == np.float32
    assert lam.shape == (6,) and ((lam > 0) & (lam <= 1)).all()
    assert set(labels_b.ravel()) <= set(split.labels)


def run_example(heading: str, swaps: dict[str, str]) -> dict:
    """Run the README's example under ``heading`` with ``swaps`` (each must be in it): the CPU and
    small sizes instead of 8 GPUs and ImageNet."""
    code = readme_block(heading)
    for old, new in swaps.items():
        assert old in code, f"the README example no longer has {old!r}"
        code = code.replace(old, new)
    namespace = {}
    exec(compile(code, str(README), "exec"), namespace)
    return namespace


SMALL = {"resnet50": "resnet18", "batch_size=256": "batch_size=4"}


def test_lightning_example(jpeg_tree, tmp_path, monkeypatch):
    pytest.importorskip("lightning")
    monkeypatch.chdir(tmp_path)  # Lightning's and the scan's files
    quiet = "logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False"
    namespace = run_example(
        "### PyTorch Lightning",
        SMALL
        | {
            '"/data/imagenet/train", "/data/imagenet/val"': f'"{jpeg_tree}/train", "{jpeg_tree}/val"',
            "num_threads=8": "num_threads=1, image_size=32",
            'max_epochs=90, accelerator="gpu", devices=8, strategy="ddp"': f'max_epochs=1, accelerator="cpu", {quiet}',
        },
    )
    trainer = namespace["dm"].trainer
    assert trainer.state.finished and trainer.global_step == 4  # 18 images, 4 full batches of 4


def test_accelerate_example(jpeg_tree):
    pytest.importorskip("accelerate")
    namespace = run_example(
        "### Hugging Face Accelerate",
        SMALL
        | {
            "Accelerator()": "Accelerator(cpu=True)",
            '"/data/imagenet/train"': f'"{jpeg_tree}/train"',
            'device="gpu", device_id=accelerator.local_process_index,': 'device="cpu", image_size=32, num_threads=1,',
            "range(90)": "range(1)",
        },
    )
    assert namespace["train"].epoch == 1 and namespace["optimizer"].state  # a whole epoch of steps
