"""Every GPU check in one run, in two halves, into one report: ``bash scripts/gpu_check.sh [--cpu]``.

Torch half (torch only: it runs on a bare CUDA machine, first), under
``torch.cuda.set_sync_debug_mode("error")``, the AMP training step included:

* ``torch-mix``: ``mix_images`` and the python backend's callback (``TorchMix``, on a side stream
  that stands for DALI's, with DALI's hand-over: copy the returned samples, then release them)
  against the NumPy oracle, every recipe, both modes, HWC and CHW, uint8 and float;
* ``loop-mixer``: ``LoopMixer`` on the device against the same mixer on NumPy arrays;
* ``loss``: ``mixed_cross_entropy`` on float16 and float32 logits against a float64 reference;
* ``train-step``: ``engine.train_step`` with AMP, channels_last and GradScaler on synthetic batches;
* ``device-normalize``: a uint8 batch staged through pinned memory and normalised on the device,
  against ``crop_mirror_normalize``'s formula.

DALI half (when ``import nvidia.dali`` works; else each row reads "not run: DALI not importable"):

* ``gpu-tests``: the ``gpu``-marked tests (GPU only);
* ``pixels``: every CutMix backend that runs on the device against the NumPy oracle, and
  ``normalize=`` (float16 on the GPU);
* ``cross-device``: the python backend on the CPU and the GPU draw and write the same (GPU only);
* ``throughput``: the profiler (``dali_cutmix_bench.bench``) on photo-like data;
* ``training``: a short train.py run that must end with a finite loss and a better accuracy.

Each part runs in a process of its own under its own time limit (they add up to under 6 minutes);
the report (``report.md``, ``report.json``) is rewritten after every part, so a timeout leaves what
ran. Where the Debian packages are missing, synthetic JPEGs stand in for photos and demo data. A
wheel folder ``.whl/`` (``scripts/gpu_wheels.sh``) is installed to /tmp/site when DALI is missing.
``--cpu`` runs both halves on the CPU, small (CI does). Exits 1 if any row failed.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# (part, half, seconds allowed); the sum stays under 6 minutes.
PARTS = [
    ("torch", "torch", 45),
    ("install", "dali", 45),
    ("gpu-tests", "torch", 60),  # collected without DALI: its modules skip
    ("pixels", "dali", 30),
    ("cross-device", "dali", 30),
    ("throughput", "dali", 80),
    ("training", "dali", 55),
]
GPU_ONLY = ("gpu-tests", "cross-device")
# The limits guard the GPU machine's minutes. On a CPU (CI, a slow or loaded 2-core machine) the
# same work may take several times longer: there each limit is this many times larger, only a hang
# stops a part, and the report gives each part's time.
CPU_SLACK = 6
H, W, B = 40, 72, 16  # non-square, so that H and W cannot be swapped unnoticed
RECIPES = {
    "cutmix": {},
    "prob-0.5": {"prob": 0.5},
    "mixup-switch": {"mixup_alpha": 0.4, "switch_prob": 0.5},
    "minmax": {"minmax": (0.2, 0.8)},
    "no-self": {"no_self": True},
}
MEAN, STD = (123.7, 116.3, 103.5), (58.4, 57.1, 57.4)
# float16 holds 11 significant bits: rounding the float32 result to it moves a value by at most
# half an ulp, 2**-11 relative; normalised values lie within about +-3, so 2**-11 * 4 bounds it.
FP16_ATOL = 2.0**-11 * 4


def row(check: str, case: str, device: str, ok: bool | None, detail: str) -> dict:
    """One row of the report; ``ok`` None: not run here."""
    return {"check": check, "case": case, "device": device, "ok": None if ok is None else bool(ok), "detail": detail}


# ---------------------------------------------------------------- the torch half (torch only)


class no_sync:
    """``torch.cuda.set_sync_debug_mode("error")`` on CUDA: any host sync inside raises."""

    def __init__(self, device):
        self.on = device.type == "cuda"

    def __enter__(self):
        if self.on:
            import torch

            torch.cuda.set_sync_debug_mode("error")

    def __exit__(self, *exc):
        if self.on:
            import torch

            torch.cuda.set_sync_debug_mode("default")


def synthetic_batch(layout: str, dtype: str, seed: int):
    import numpy as np

    rng = np.random.default_rng(seed)
    shape = (B, H, W, 3) if layout == "HWC" else (B, 3, H, W)
    x = rng.integers(0, 256, shape, np.uint8)
    return x if dtype == "uint8" else (x.astype(np.float32) / 255)


def run_callback(images, params, layout: str, device):
    """The python backend's callback as DALI drives it: DLPack samples in; on CUDA its kernels
    queued on a side stream standing for DALI's; the returned samples copied on that stream, then
    released (DALI's hand-over). Returns the mixed batch."""
    import torch
    from torch.utils.dlpack import to_dlpack

    from dali_cutmix.backends.torch_mix import TorchMix, pack

    rows = torch.from_numpy(pack(params.perm, params.boxes, params.lam, params.blend)).to(device)
    args = [[to_dlpack(r) for r in rows]]  # the sampler's output: one packed row a sample
    mixup = params.blend is not None
    out = torch.empty_like(images)
    if device.type != "cuda":
        for i, capsule in enumerate(TorchMix(layout, size=(H, W), mixup=mixup)([to_dlpack(s) for s in images], *args)):
            out[i].copy_(torch.from_dlpack(capsule))
        return out
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    mix = TorchMix(layout, size=(H, W), dali_stream=lambda: stream.cuda_stream, mixup=mixup)
    with no_sync(device), torch.cuda.stream(stream):
        returned = mix([to_dlpack(s) for s in images], *args)
        for i, capsule in enumerate(returned):
            out[i].copy_(torch.from_dlpack(capsule))
        del returned
    torch.cuda.current_stream(device).wait_stream(stream)
    return out


def check_torch_mix(device) -> list[dict]:
    import numpy as np
    import torch

    from dali_cutmix.device import from_numpy
    from dali_cutmix.paste import apply_cutmix, mix_images
    from dali_cutmix.recipe import MixConfig
    from dali_cutmix.sampling import sample_mix

    rows = []
    for layout in ("HWC", "CHW"):
        for dtype in ("uint8", "float"):
            bad = []
            for mode in ("batch", "elem"):
                for i, (name, recipe) in enumerate(RECIPES.items()):
                    params = sample_mix(B, H, W, MixConfig(mode=mode, **recipe), np.random.default_rng(i))
                    host = synthetic_batch(layout, dtype, i)
                    want = apply_cutmix(host, np.arange(B), params, layout)[0]
                    images = torch.from_numpy(host).to(device)
                    on_device = [
                        from_numpy(params.perm, device, torch.long),
                        from_numpy(params.boxes, device),
                        from_numpy(params.lam, device),
                        from_numpy(params.blend, device, torch.bool),
                    ]
                    with no_sync(device):
                        direct = mix_images(images, *on_device, layout)
                    via_callback = run_callback(images, params, layout, device)
                    for how, got in (("mix_images", direct), ("TorchMix", via_callback)):
                        if not np.array_equal(got.cpu().numpy(), want):
                            bad.append(f"{how} {mode} {name}")
            detail = "byte-identical to the oracle, 5 recipes x 2 modes, mix_images and TorchMix"
            rows.append(row("torch-mix", f"{layout} {dtype}", device.type, not bad, "differs: " + ", ".join(bad)
                            if bad else detail))  # fmt: skip
    return rows


def check_loop_mixer(device) -> list[dict]:
    import numpy as np
    import torch

    from dali_cutmix.loop import LoopMixer
    from dali_cutmix.recipe import MixConfig

    bad = []
    for mode in ("batch", "elem"):
        for name, recipe in RECIPES.items():
            config = MixConfig(mode=mode, **recipe)
            host, labels = synthetic_batch("CHW", "uint8", 7), np.arange(B)
            on_host, on_device = LoopMixer(config, seed=5), LoopMixer(config, seed=5)
            images, device_labels = torch.from_numpy(host).to(device), torch.from_numpy(labels).to(device)
            for _ in range(2):
                want = on_host(host, labels)
                with no_sync(device):
                    got = on_device(images, device_labels)
                if not all(np.array_equal(np.asarray(w), g.cpu().numpy()) for w, g in zip(want, got)):
                    bad.append(f"{mode} {name}")
    detail = "same images, labels and lam as on NumPy, 2 batches x 5 recipes x 2 modes"
    return [row("loop-mixer", "LoopMixer", device.type, not bad, "differs: " + ", ".join(bad) if bad else detail)]


def check_loss(device) -> list[dict]:
    import torch
    import torch.nn.functional as F

    from dali_cutmix.loss import mixed_cross_entropy

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 100, generator=g) * 3
    a, b = torch.randint(0, 100, (64,), generator=g), torch.randint(0, 100, (64,), generator=g)
    lam = torch.rand(64, generator=g)
    rows = []
    for dtype, tol in ((torch.float32, 1e-5), (torch.float16, 5e-3)):
        x = logits.to(dtype)
        ref64 = x.double()
        want = (lam.double() * F.cross_entropy(ref64, a, reduction="none")
                + (1 - lam.double()) * F.cross_entropy(ref64, b, reduction="none")).mean().item()  # fmt: skip
        args = [t.to(device) for t in (x, a, b, lam)]
        with no_sync(device):
            loss = mixed_cross_entropy(*args, 0.0)
        got = loss.item()
        ok = math.isfinite(got) and abs(got - want) <= tol * abs(want)
        rows.append(row("loss", f"mixed_cross_entropy {str(dtype)[6:]}", device.type, ok,
                        f"{got:.6f} vs float64 {want:.6f} (rel. tolerance {tol:g})"))  # fmt: skip
    return rows


def check_train_step(device) -> list[dict]:
    import torch
    import torchvision

    from dali_cutmix_trainer.engine import sgd, train_step

    cuda = device.type == "cuda"
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).to(device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    optimizer = sgd(model, lr=0.05, momentum=0.9, weight_decay=1e-4)  # train.py's: fused on CUDA
    g = torch.Generator().manual_seed(0)
    images = torch.randn(32, 3, 64, 64, generator=g)
    labels = torch.randint(0, 10, (32,), generator=g)
    images += labels[:, None, None, None].float() / 5  # learnable: the class shifts the mean
    batch = [t.to(device) for t in (images, labels, labels.roll(1), torch.full((32,), 0.7))]
    scaler = torch.amp.GradScaler("cuda") if cuda else None
    with no_sync(device):  # the whole AMP step, GradScaler's included: the fused SGD reads nothing back
        losses = [train_step(model, optimizer, scaler, batch) for _ in range(6)]
    losses = [v.item() for v in losses]
    finite = all(math.isfinite(v) for v in losses)
    amp = "AMP + GradScaler + fused SGD + channels_last" if cuda else "fp32"
    return [row("train-step", f"{amp}, no host sync", device.type, finite and losses[-1] < losses[0],
                f"loss {losses[0]:.3f} -> {losses[-1]:.3f} in 6 steps")]  # fmt: skip


def check_device_normalize(device) -> list[dict]:
    import numpy as np
    import torch

    from dali_cutmix.device import DeviceNormalize, to_device

    host = synthetic_batch("HWC", "uint8", 11)
    inv = (1.0 / np.array(STD, np.float64)).astype(np.float32)
    want = ((host.astype(np.float32) - np.array(MEAN, np.float32)) * inv).transpose(0, 3, 1, 2)
    rows = []
    for dtype, tol in ((torch.float32, 1e-5), (torch.float16, FP16_ATOL)):
        norm = DeviceNormalize(MEAN, STD, dtype=dtype)
        norm(torch.from_numpy(host).to(device))  # the constants move to the device once
        with no_sync(device):
            got = norm(to_device(torch.from_numpy(host), device))
        worst = float((got.float().cpu() - torch.from_numpy(want)).abs().max())
        layout = got.is_contiguous(memory_format=torch.channels_last)
        rows.append(row("device-normalize", f"uint8 -> {str(dtype)[6:]}", device.type, worst <= tol and layout,
                        f"max |difference| {worst:.1e} (limit {tol:.1e}); channels_last {layout}"))  # fmt: skip
    return rows


TORCH_CHECKS = {
    "torch-mix": check_torch_mix,
    "loop-mixer": check_loop_mixer,
    "loss": check_loss,
    "train-step": check_train_step,
    "device-normalize": check_device_normalize,
}


# ---------------------------------------------------------------- the DALI half


def dali_mix(device: str, batches, seed: int, normalize=None, **recipe):
    from dali_cutmix import ops

    return ops.mix_arrays(batches, device=device, seed=seed, num_threads=2, normalize=normalize, **recipe)


def check_pixels(device: str) -> list[dict]:
    import numpy as np

    from dali_cutmix import ops
    from dali_cutmix.paste import apply_cutmix
    from dali_cutmix.sampling import CutMixParams

    rng = np.random.default_rng(0)
    batches = [[rng.integers(0, 256, (H, W, 3), np.uint8) for _ in range(B)] for _ in range(3)]
    results = []
    for backend in [b for b in ops.BACKENDS if (b, device) not in ops.REFUSED]:
        for mode in ("batch", "elem"):
            for name, recipe in RECIPES.items():
                bad = []
                for out in dali_mix(device, batches, 1, backend=backend, mode=mode, **recipe):
                    images, mixed, la, lb, lam, perm, boxes, *blend = out
                    params = CutMixParams(perm.astype(np.int64), boxes, lam, blend[0] > 0 if blend else None)
                    want = apply_cutmix(images, la, params)
                    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
                    cut = ~params.blend if blend else np.ones(B, bool)
                    box_lam = np.float32(1) - area.astype(np.float32) / np.float32(H * W)
                    if not np.array_equal(mixed, want[0]):
                        bad.append(f"{int((mixed != want[0]).sum())} pixel values differ")
                    if not np.array_equal(lb, want[2]) or not np.array_equal(lam[cut], box_lam[cut]):
                        bad.append("labels_b or lam differ")
                results.append(row("pixels", f"{backend} {mode} {name}", device, not bad, "; ".join(bad) or
                                   "byte-identical to the oracle (3 batches of 16)"))  # fmt: skip
        fp16 = device == "gpu"
        norm = ops.Normalize(mean=MEAN, std=STD, fp16=fp16)
        inv = (1.0 / np.array(STD, np.float64)).astype(np.float32)
        worst = 0.0
        for out in dali_mix(device, batches, 2, normalize=norm, backend=backend, mode="elem", mixup_alpha=0.4):
            images, mixed, la, _, lam, perm, boxes, blend = out
            oracle = apply_cutmix(images, la, CutMixParams(perm.astype(np.int64), boxes, lam, blend > 0))[0]
            want = ((oracle.astype(np.float32) - np.array(MEAN, np.float32)) * inv).transpose(0, 3, 1, 2)
            want = want.astype(np.float16 if fp16 else np.float32).astype(np.float32)
            worst = max(worst, float(np.abs(mixed.astype(np.float32) - want).max()))
        limit = FP16_ATOL if fp16 else 1e-5
        results.append(row("pixels", f"{backend} normalize={'fp16' if fp16 else 'fp32'}", device, worst <= limit,
                           f"max |difference| {worst:.2e} (limit {limit:.1e})"))  # fmt: skip
    return results


def check_cross_device(device: str) -> list[dict]:
    import numpy as np

    rng = np.random.default_rng(3)
    batches = [[rng.integers(0, 256, (H, W, 3), np.uint8) for _ in range(B)] for _ in range(3)]
    results = []
    for mode in ("batch", "elem"):
        for name, recipe in RECIPES.items():
            kwargs = dict(backend="python", mode=mode, **recipe)
            cpu, gpu = (list(dali_mix(d, batches, 5, **kwargs)) for d in ("cpu", "gpu"))
            same = all(np.array_equal(a, b) for c, g in zip(cpu, gpu) for a, b in zip(c, g))
            detail = "same perm, boxes, lam, blend and pixels" if same else "outputs differ"
            results.append(row("cross-device", f"python {mode} {name}", "cpu+gpu", same, detail))
    return results


def run(command: list[str], log: Path, timeout: float, env: dict | None = None) -> tuple[int, str, float]:
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
        code, text = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as e:
        text = (e.stdout or b"") + (e.stderr or b"")
        code, text = 124, (text.decode() if isinstance(text, bytes) else text) + f"\ntimed out after {timeout:.0f} s"
    log.write_text(text)
    return code, text, time.perf_counter() - start


def photos_or_synthetic() -> str | None:
    from dali_cutmix_bench.benchdata import PHOTO_DIRS

    return None if any(d.is_dir() for d in PHOTO_DIRS) else "synthetic"


def check_throughput(device: str, out: Path, cpu: bool) -> list[dict]:
    data = out / "benchdata"
    size = ["--images", "64", "--classes", "4"] if cpu else ["--images", "512", "--classes", "8"]
    photos = photos_or_synthetic()
    size += ["--photos", photos] if photos else []
    code, text, _ = run([sys.executable, "-m", "dali_cutmix_bench.benchdata", "--out", str(data), *size],
                        out / "benchdata.log", 40)  # fmt: skip
    if code:
        return [row("throughput", "benchmark data", device, False, text.strip().splitlines()[-1])]
    if cpu:
        flags = "--batch-size 8 --image-size 64 --workers 2 --reps 1 --steps 2 --trainer-steps 1 --warmup 1 "
        flags += "--sections op,pipeline,trainer,e2e,peers"  # the epochs section is tested on its own
    else:
        flags = "--batch-size 256 --image-size 224 --workers 16 --reps 2 --steps 4 --trainer-steps 4 --warmup 2 "
        flags += "--sections op,pipeline,trainer,e2e --arch resnet50"
    command = [sys.executable, "-m", "dali_cutmix_bench.bench", "--data", str(data), "--device", device,
               "--output", str(out / "bench"), *flags.split()]  # fmt: skip
    code, text, seconds = run(command, out / "bench.log", 150)
    lines = [
        ln for ln in text.splitlines() if ln.startswith(("epochs/", "pipeline/", "peers:", "verdict:", "end to end:"))
    ]
    detail = f"{seconds:.0f} s; data {photos or 'photos'}; " + (
        " | ".join(lines) if lines else text.strip().splitlines()[-1]
    )
    return [row("throughput", "profiler (bench.log, bench/bench.json)", device, code == 0, detail)]


def check_training(device: str, out: Path, cpu: bool) -> list[dict]:
    from pipelines.folders import FASHION_MNIST_DIR

    run_dir = out / "train"
    flags = ["--device", device, "--output", str(run_dir), "--epochs", "3", "--workers", "2", "--seed", "0",
             "--overwrite"]  # fmt: skip
    if FASHION_MNIST_DIR.is_dir():
        data = "demo data"
        flags += ["--demo-per-class", "50", "--batch-size", "32"] if cpu else ["--demo-per-class", "1000"]
    else:
        from dali_cutmix_bench.benchdata import synthetic_classes

        data = "synthetic classes"
        root = synthetic_classes(out / "synthetic-classes", per_class=60 if cpu else 400)
        flags += ["--data", str(root), "--image-size", "32", "--arch", "resnet18", "--warmup-epochs", "0",
                  "--batch-size", "32" if cpu else "128"]  # fmt: skip
    code, text, seconds = run([sys.executable, "train.py", *flags], out / "train.log", 150)
    rows = []
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    ok = code == 0 and len(rows) == 3
    finite = ok and all(math.isfinite(r["train_loss"]) and math.isfinite(r["val_loss"]) for r in rows)
    rising = ok and rows[-1]["val_top1"] > rows[0]["val_top1"]
    if rows:
        top1 = [round(r["val_top1"], 1) for r in rows]
        detail = f"{seconds:.0f} s, {data}; val top-1 by epoch {top1}, last train loss {rows[-1]['train_loss']:.3f}"
    else:
        detail = (text.strip().splitlines() or ["no output"])[-1]
    amp = "AMP" if device == "gpu" else "fp32"
    return [row("training", f"train.py, {data}, 3 epochs, {amp}", device, ok and finite and rising, detail)]


# ---------------------------------------------------------------- one part, in its own process


def run_part(part: str, device: str, out: Path, cpu: bool, rows_file: Path) -> None:
    """Run one part here, appending each check's rows to ``rows_file`` as soon as it is done."""

    def emit(rows: list[dict]) -> None:
        with rows_file.open("a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)

    if part == "torch":
        import torch

        torch_device = torch.device("cuda" if device == "gpu" else "cpu")
        for name, check in TORCH_CHECKS.items():
            try:
                emit(check(torch_device))
            except Exception as e:  # a crashed check is a failed row; the others still run
                emit([row(name, "crashed", device, False, f"{type(e).__name__}: {e}".splitlines()[0])])
        return
    checks = {
        "pixels": lambda: check_pixels(device),
        "cross-device": lambda: check_cross_device(device),
        "throughput": lambda: check_throughput(device, out, cpu),
        "training": lambda: check_training(device, out, cpu),
    }
    emit(checks[part]())


# ---------------------------------------------------------------- the orchestrator (stdlib only)


def install_wheels(wheels: Path, target: Path) -> tuple[bool, str]:
    """Install the wheels in ``wheels`` whose distributions this Python lacks into ``target``."""
    missing = []
    for wheel in sorted(wheels.glob("*.whl")):
        name = wheel.name.split("-")[0]
        try:
            importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(str(wheel))
    if not missing:
        return True, f"nothing to install from {wheels}"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                           "--target", str(target), *missing], capture_output=True, text=True, timeout=120)  # fmt: skip
    tail = (done.stdout + done.stderr).strip().splitlines()
    return done.returncode == 0, f"{len(missing)} wheels from {wheels} into {target}" + (
        f": {tail[-1]}" if done.returncode and tail else ""
    )


def dali_importable(env: dict) -> bool:
    done = subprocess.run([sys.executable, "-c", "import nvidia.dali"], env=env, capture_output=True, timeout=60)
    return done.returncode == 0


def report(results: list[dict], out: Path, header: str, final: bool = False, times: dict | None = None) -> bool:
    failed = [r for r in results if r["ok"] is False]
    passed = [r for r in results if r["ok"]]
    counts = f"{len(passed)} passed, {len(failed)} failed, {len(results) - len(passed) - len(failed)} not run"
    took = "; ".join(f"{part} {seconds:.0f} s (limit {limit} s)" for part, (seconds, limit) in (times or {}).items())
    lines = [f"# gpu_check report\n\n{header}\n", counts + ("" if final else " (so far)") + "\n",
             *([f"Time per part: {took}.\n"] if took else []),
             "| check | case | device | result | detail |", "| --- | --- | --- | --- | --- |"]  # fmt: skip
    for r in results:
        verdict = {True: "pass", False: "**FAIL**", None: "not run"}[r["ok"]]
        lines.append(f"| {r['check']} | {r['case']} | {r['device']} | {verdict} | {r['detail']} |")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    (out / "report.json").write_text(json.dumps({"header": header, "results": results, "final": final}, indent=2))
    return not failed


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cpu", action="store_true", help="both halves on the CPU, small")
    p.add_argument("--output", default="runs/gpu_check", help="the report folder")
    p.add_argument(
        "--skip", default="", help="comma-separated parts to leave out (" + ",".join(n for n, *_ in PARTS) + ")"
    )
    p.add_argument("--part", help=argparse.SUPPRESS)  # run one part in this process
    p.add_argument("--rows", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    device = "cpu" if args.cpu else "gpu"
    out = Path(args.output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.part:
        run_part(args.part, device, out, args.cpu, Path(args.rows))
        return 0
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    skip = set(filter(None, args.skip.split(",")))
    header = f"device {device}; python {sys.version.split()[0]}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    header += "; " + subprocess.run([sys.executable, "-c", "import torch; print(f'torch {torch.__version__} (CUDA "
                                     "{torch.version.cuda}), GPU ' + (torch.cuda.get_device_name() if "
                                     "torch.cuda.is_available() else 'none'))"], capture_output=True, text=True,
                                    env=env).stdout.strip()  # fmt: skip
    results: list[dict] = []
    times: dict[str, tuple[float, int]] = {}  # part: (seconds, limit)
    dali = None
    for part, half, limit in PARTS:
        if part in skip:
            continue
        limit *= CPU_SLACK if args.cpu else 1
        start = time.perf_counter()
        print(f"{part} (limit {limit} s) ...", flush=True)
        if part == "install":
            wheels, target = ROOT / ".whl", Path("/tmp/site")
            if wheels.is_dir() and not dali_importable(env):
                ok, detail = install_wheels(wheels, target)
                env["PYTHONPATH"] += os.pathsep + str(target)
                results.append(row("install", "DALI from .whl/", device, ok, detail))
            dali = dali_importable(env)
        elif half == "dali" and not dali:
            results.append(row(part, "-", device, None, "not run: DALI not importable"))
        elif part in GPU_ONLY and args.cpu:
            results.append(row(part, "-", device, None, "not run: needs a GPU"))
        elif part == "gpu-tests":
            code, text, seconds = run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-rs", "-p",
                                       "no:cacheprovider"], out / "gpu_tests.txt", limit, env)  # fmt: skip
            last = (text.strip().splitlines() or ["no output"])[-1]
            results.append(row("gpu-tests", "pytest -m gpu", device, code == 0, f"{seconds:.0f} s; {last}"))
        else:
            rows_file = out / f"rows-{part}.jsonl"
            rows_file.unlink(missing_ok=True)
            command = [sys.executable, str(Path(__file__).resolve()), "--part", part, "--rows", str(rows_file),
                       "--output", str(out)] + (["--cpu"] if args.cpu else [])  # fmt: skip
            code, text, _ = run(command, out / f"{part}.log", limit, env)
            rows = [json.loads(line) for line in rows_file.read_text().splitlines()] if rows_file.is_file() else []
            if code == 124:
                rows.append(row(part, "timed out", device, False, f"stopped after {limit} s; the rows above ran"))
            elif code:
                rows.append(row(part, "crashed", device, False, (text.strip().splitlines() or ["no output"])[-1]))
            results += rows
        times[part] = (time.perf_counter() - start, limit)
        print(f"{part}: {times[part][0]:.0f} s", flush=True)
        report(results, out, header, times=times)
    ok = report(results, out, header, final=True, times=times)
    print((out / "report.md").read_text())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
