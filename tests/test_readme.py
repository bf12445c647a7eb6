"""The README's examples run as written, each as a script in a process of its own (as a user saves
and runs them, with no ``if __name__ == "__main__":`` guard), with swaps for the CPU and small
sizes: the loader, Lightning, Accelerate and the own pipeline."""

import pytest

pytest.importorskip("nvidia.dali", exc_type=ImportError)  # `pytest -m gpu` collects without DALI

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SMALL = {"resnet50": "resnet18", "batch_size=256": "batch_size=4"}


def readme_block(heading: str) -> str:
    text = README.read_text()
    section = text[text.index(heading) :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def run_example(heading: str, swaps: dict[str, str], trailer: str, tmp_path: Path) -> str:
    """The README's example under ``heading`` with ``swaps`` (each must be in it) and ``trailer``
    (the checks' prints) appended, saved as a script and run in its own process; its stdout."""
    code = readme_block(heading)
    for old, new in swaps.items():
        assert old in code, f"the README example no longer has {old!r}"
        code = code.replace(old, new)
    script = tmp_path / "example.py"
    script.write_text(code + "\n" + trailer + "\n")
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_loader_example(jpeg_tree, tmp_path):
    out = run_example(
        "## The loader in your own trainer",
        SMALL
        | {
            '"/data/imagenet/train"': f'"{jpeg_tree}/train"',
            '"/data/imagenet/val"': f'"{jpeg_tree}/val"',
            'image_size=224, device="gpu"': 'image_size=32, device="cpu"',
            'batch_size=4, device="gpu"': 'batch_size=4, device="cpu", image_size=32',
            "num_threads=8": "num_threads=1",
            ".cuda()": "",
            "range(90)": "range(1)",
        },
        "print('epochs', train.epoch, 'stepped', bool(optimizer.state), 'val', len(val))",
        tmp_path,
    )
    assert "epochs 1 stepped True val 3" in out


def test_lightning_example(jpeg_tree, tmp_path):
    pytest.importorskip("lightning")
    quiet = "logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False"
    out = run_example(
        "### PyTorch Lightning",
        SMALL
        | {
            '"/data/imagenet/train", "/data/imagenet/val"': f'"{jpeg_tree}/train", "{jpeg_tree}/val"',
            "num_threads=8": "num_threads=1, image_size=32",
            'max_epochs=90, accelerator="gpu", devices=8, strategy="ddp"': f'max_epochs=1, accelerator="cpu", {quiet}',
        },
        "print('finished', dm.trainer.state.finished, 'steps', dm.trainer.global_step)",
        tmp_path,
    )
    assert "finished True steps 4" in out  # 18 images, 4 full batches of 4


def test_accelerate_example(jpeg_tree, tmp_path):
    pytest.importorskip("accelerate")
    out = run_example(
        "### Hugging Face Accelerate",
        SMALL
        | {
            "Accelerator()": "Accelerator(cpu=True)",
            '"/data/imagenet/train"': f'"{jpeg_tree}/train"',
            'device="gpu", device_id=accelerator.local_process_index,': 'device="cpu", image_size=32, num_threads=1,',
            "range(90)": "range(1)",
        },
        "print('epochs', train.epoch, 'stepped', bool(optimizer.state))",
        tmp_path,
    )
    assert "epochs 1 stepped True" in out  # a whole epoch of steps


def test_own_pipeline_example(jpeg_tree, tmp_path):
    trailer = f"""
from pipelines.folders import load_split
split = load_split({str(jpeg_tree / "train")!r})
pipe = my_pipeline(split.files, split.labels, batch_size=6)
pipe.build()
images, labels_a, labels_b, lam = (o.as_array() for o in pipe.run())
print("shape", images.shape, images.dtype, "lam", bool(((lam > 0) & (lam <= 1)).all()))
"""
    out = run_example(
        "### `cutmix()` in your own pipeline",
        {'device="mixed"': 'device="cpu"', "device_id=0": "device_id=None", ".gpu()": ""},
        trailer,
        tmp_path,
    )
    assert "shape (6, 3, 224, 224) float32 lam True" in out
