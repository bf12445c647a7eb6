"""Every GPU check in one run, in two halves, into one report: ``bash scripts/gpu_check.sh [--cpu]``.

Torch half (torch only: it runs on a bare CUDA machine, first), under
``torch.cuda.set_sync_debug_mode("error")``, the AMP training step included:

* ``torch-mix``: ``mix_images`` and the python backend's callback (``TorchMix``, on a side stream
  that stands for DALI's, with DALI's hand-over: copy the returned samples, then release them)
  against the NumPy oracle, every recipe, both modes, HWC and CHW, uint8 and float;
* ``loop-mixer``: ``LoopMixer`` on the device against the same mixer on NumPy arrays;
* ``loss``: ``mixed_cross_entropy`` on float16 and float32 logits against a float64 reference;
* ``train-step``: ``engine.train_step`` with AMP (float16 with GradScaler, bfloat16 without) and
  channels_last on synthetic batches, cuDNN's autotuner on;
* ``train-epoch``: ``engine.train_epoch`` over 25 steps of a synthetic loader handing over as the
  DALI loaders do, sync-free but for the books' one read every 20 steps;
* ``device-normalize``: a uint8 batch staged through pinned memory and normalised on the device,
  against ``crop_mirror_normalize``'s formula.

DALI half (when ``import nvidia.dali`` works; else each row reads "not run: DALI not importable"):

* ``gpu-tests``: the ``gpu``-marked tests (GPU only);
* ``pixels``: every CutMix backend that runs on the device against the NumPy oracle, and
  ``normalize=`` (float16 on the GPU);
* ``cross-device``: the python backend on the CPU and the GPU draw and write the same, and what the
  GPU decoder's preallocation hints hold of GPU memory (GPU only);
* ``throughput``: the profiler (``dali_cutmix_bench.bench``) on photo-like data;
* ``training``: a short train.py run that must end with a finite loss and a better accuracy.

Each part runs in a process group of its own under its own time limit (they add up to under 6
minutes), its output streamed to a log file; on timeout the whole group is killed (no child outlives
its part on the GPU), and the part's inner steps take their limits from what is left of its own. The
report (``report.md``, ``report.json``) opens with the GPU, its driver, torch's and DALI's CUDA
runtimes and whether the stream hand-off worked, and is rewritten after every part, so a timeout
leaves what ran. Where the Debian packages are missing, synthetic JPEGs stand in for photos and demo data. A
wheel folder ``.whl/`` (``scripts/gpu_wheels.sh``) is installed to /tmp/site when DALI is missing.
``--cpu`` runs both halves on the CPU, small (CI does). Exits 1 if any row failed.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import signal
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
    "resizemix": {"paste": "resize", "mixup_alpha": 0.4},  # the python backend's and the loop mixer's only
    "saliencymix": {"centre": "saliency", "mixup_alpha": 0.4},  # the same; its boxes placed on the device
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
    kinds = dict(mixup=params.blend is not None, resized=params.resized, salient=params.salient)
    out = torch.empty_like(images)
    if device.type != "cuda":
        returned = TorchMix(layout, size=(H, W), **kinds)([to_dlpack(s) for s in images], *args)
        for i, capsule in enumerate(returned[0] if params.salient else returned):  # SaliencyMix: + placed rows
            out[i].copy_(torch.from_dlpack(capsule))
        return out
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    mix = TorchMix(layout, size=(H, W), dali_stream=lambda: stream.cuda_stream, **kinds)
    with no_sync(device), torch.cuda.stream(stream):
        returned = mix([to_dlpack(s) for s in images], *args)
        for i, capsule in enumerate(returned[0] if params.salient else returned):
            out[i].copy_(torch.from_dlpack(capsule))
        del returned
    torch.cuda.current_stream(device).wait_stream(stream)
    return out


def check_torch_mix(device) -> list[dict]:
    import numpy as np
    import torch

    from dali_cutmix.paste import apply_cutmix, mix_images, placed
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
                    with no_sync(device):  # SaliencyMix's boxes placed from the pixels, on the device
                        p = placed(images, params, layout)
                        direct = mix_images(images, p.perm, p.boxes, p.lam, p.blend, layout, resized=p.resized)
                    via_callback = run_callback(images, params, layout, device)
                    for how, got in (("mix_images", direct), ("TorchMix", via_callback)):
                        if not np.array_equal(got.cpu().numpy(), want):
                            bad.append(f"{how} {mode} {name}")
            detail = f"byte-identical to the oracle, {len(RECIPES)} recipes x 2 modes, mix_images and TorchMix"
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
    detail = f"same images, labels and lam as on NumPy, 2 batches x {len(RECIPES)} recipes x 2 modes"
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

    from dali_cutmix_trainer.engine import grad_scaler, sgd, train_step

    cuda = device.type == "cuda"
    torch.backends.cudnn.benchmark = cuda  # as train.py: cuDNN's autotuner picks the kernels
    dtypes = [None] if not cuda else [torch.float16] + ([torch.bfloat16] if torch.cuda.is_bf16_supported() else [])
    rows = []
    for amp in dtypes:
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
        scaler = grad_scaler(device, amp)
        with no_sync(device):  # the whole AMP step, GradScaler's included: the fused SGD reads nothing back
            losses = [train_step(model, optimizer, scaler, batch, amp=amp) for _ in range(6)]
        losses = [v.item() for v in losses]
        finite = all(math.isfinite(v) for v in losses)
        what = f"AMP {str(amp)[6:]} + {'GradScaler' if scaler else 'no scaler'} + fused SGD + channels_last" \
            if cuda else "fp32"  # fmt: skip
        rows.append(row("train-step", f"{what}, no host sync", device.type, finite and losses[-1] < losses[0],
                        f"loss {losses[0]:.3f} -> {losses[-1]:.3f} in 6 steps"))  # fmt: skip
    return rows


def check_train_epoch(device) -> list[dict]:
    """train.py's epoch loop (``train_epoch``) over 25 steps of a synthetic loader that hands over
    as the DALI loaders do (a CPU pipeline's uint8 batch staged through pinned memory torch owns and
    normalised on the device; a GPU pipeline's HWC float16 batch seen as a channels_last NCHW view),
    under sync-debug "error" except the books' one read every 20 steps."""
    import numpy as np
    import torch
    import torchvision

    from dali_cutmix.device import DeviceNormalize, to_device
    from dali_cutmix_trainer import engine
    from dali_cutmix_trainer.engine import EpochBooks, Stop, grad_scaler, sgd, train_epoch

    cuda = device.type == "cuda"
    amp = torch.float16 if cuda else None
    rng = np.random.default_rng(0)
    normalize = DeviceNormalize(MEAN, STD, dtype=torch.float16 if cuda else torch.float32)

    class Loader:
        def __init__(self, hand_off: str, n: int = 25):
            self.hand_off, self.n = hand_off, n
            self.host = [torch.from_numpy(rng.integers(0, 256, (16, 32, 32, 3), np.uint8)) for _ in range(4)]
            self.labels = [torch.from_numpy(rng.integers(0, 10, 16)) for _ in range(4)]

        def __len__(self):
            return self.n

        def __iter__(self):
            for i in range(self.n):
                a = to_device(self.labels[i % 4], device)
                lam = to_device(torch.full((16,), 0.6), device)
                if self.hand_off == "uint8":
                    images = normalize(to_device(self.host[i % 4], device))
                else:  # the GPU pipeline's HWC float16, as DALILoader hands it on
                    hwc = normalize(to_device(self.host[i % 4], device)).permute(0, 2, 3, 1).contiguous()
                    images = hwc.permute(0, 3, 1, 2)
                yield images, a, a.roll(1), lam

        def finish_epoch(self):
            pass

    rows = []
    for hand_off in ("uint8", "hwc-view"):
        torch.manual_seed(0)
        model = torchvision.models.resnet18(num_classes=10).to(device, memory_format=torch.channels_last)
        optimizer = sgd(model, lr=0.01, momentum=0.9, weight_decay=1e-4)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        reads, real = [], EpochBooks.agree

        def agree(self, *a, reads=reads, real=real, **k):  # the interval's one read: the only sync allowed
            reads.append(1)
            if cuda:
                torch.cuda.set_sync_debug_mode("default")
            try:
                return real(self, *a, **k)
            finally:
                if cuda:
                    torch.cuda.set_sync_debug_mode("error")

        engine.EpochBooks.agree = agree
        loader = Loader(hand_off)
        books = EpochBooks(device, every=20)
        try:
            next(iter(loader))  # DeviceNormalize's constants move to the device once, before the check
            with no_sync(device):
                result = train_epoch(model, loader, optimizer, scheduler, grad_scaler(device, amp), epoch=0,
                                     device=device, stop=Stop(), books=books, amp=amp, show=False)  # fmt: skip
        except Exception as e:
            rows.append(row("train-epoch", f"25 steps, {hand_off} hand-off", device.type, False,
                            f"{type(e).__name__}: {e}".splitlines()[0][:300]))  # fmt: skip
            continue
        finally:
            engine.EpochBooks.agree = real
        ok = result["steps"] == 25 and len(reads) == 2 and math.isfinite(result["train_loss"])
        rows.append(row("train-epoch", f"25 steps, {hand_off} hand-off, books read every 20", device.type, ok,
                        f"{result['steps']} steps, {len(reads)} reads, loss {result['train_loss']:.3f}, "
                        "no other host sync"))  # fmt: skip
    return rows


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
    "train-epoch": check_train_epoch,
    "device-normalize": check_device_normalize,
}


# ---------------------------------------------------------------- the DALI half


def dali_mix(device: str, batches, seed: int, normalize=None, **recipe):
    sys.path.insert(0, str(ROOT / "tests"))  # the tests' helper: the operator over in-memory batches
    from dali_helpers import mix_arrays

    return mix_arrays(batches, device=device, seed=seed, num_threads=2, normalize=normalize, **recipe)


def check_pixels(device: str) -> list[dict]:
    import numpy as np

    from dali_cutmix import ops
    from dali_cutmix.paste import apply_cutmix
    from dali_cutmix.saliency import peaks
    from dali_cutmix.sampling import CutMixParams

    rng = np.random.default_rng(0)
    batches = [[rng.integers(0, 256, (H, W, 3), np.uint8) for _ in range(B)] for _ in range(3)]
    results = []
    for backend in [b for b in ops.BACKENDS if (b, device) not in ops.REFUSED]:
        for mode in ("batch", "elem"):
            for name, recipe in RECIPES.items():
                resized = recipe.get("paste") == "resize"
                if {(backend, recipe.get("paste")), (backend, recipe.get("centre"))} & ops.REFUSED.keys():
                    continue
                bad = []
                for out in dali_mix(device, batches, 1, backend=backend, mode=mode, **recipe):
                    images, mixed, la, lb, lam, perm, boxes, *blend = out
                    params = CutMixParams(perm.astype(np.int64), boxes, lam, blend[0] > 0 if blend else None,
                                          resized=resized)  # fmt: skip
                    want = apply_cutmix(images, la, params)
                    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
                    cut = ~params.blend if blend else np.ones(B, bool)
                    box_lam = np.float32(1) - area.astype(np.float32) / np.float32(H * W)
                    if not np.array_equal(mixed, want[0]):
                        bad.append(f"{int((mixed != want[0]).sum())} pixel values differ")
                    if not np.array_equal(lb, want[2]) or not np.array_equal(lam[cut], box_lam[cut]):
                        bad.append("labels_b or lam differ")
                    if recipe.get("centre") == "saliency":  # each pasted box holds its partner's peak
                        y, x = peaks(images, "HWC")[perm].T
                        pasted = cut & (area > 0)
                        inside = (boxes[:, 0] <= y) & (y < boxes[:, 2]) & (boxes[:, 1] <= x) & (x < boxes[:, 3])
                        if not inside[pasted].all():
                            bad.append("a SaliencyMix box misses its partner's saliency peak")
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


def check_decoder_memory(device: str, out: Path) -> list[dict]:
    """What the GPU decoder's hints hold: the free GPU memory before and after building and
    running the training pipeline of batch 256 with the hints the pipelines give (ImageNet's
    largest image as the hardware decoder's preallocation, ``HW_DECODER_LOAD``) and with none
    (DALI's defaults), each in a fresh pipeline (GPU only)."""
    import torch
    from nvidia.dali import fn, pipeline_def, types

    from dali_cutmix_bench.benchdata import synthetic_classes
    from pipelines.folders import load_split
    from pipelines.graphs import DALI_PADDINGS, decoder_hints

    root = synthetic_classes(out / "decoder-memory", per_class=64)
    split = load_split(root / "train")
    rows = []
    for name, kwargs in (("hints", decoder_hints(split)), ("DALI defaults", dict(DALI_PADDINGS))):

        @pipeline_def(batch_size=256, num_threads=4, device_id=0, seed=0)
        def decode(kwargs=kwargs):
            jpegs, _ = fn.readers.file(files=split.files, labels=split.labels, random_shuffle=True)
            images = fn.decoders.image_random_crop(jpegs, device="mixed", output_type=types.RGB, **kwargs)
            return fn.resize(images, size=[224, 224])

        torch.cuda.synchronize()
        free_before = torch.cuda.mem_get_info()[0]
        pipe = decode()
        pipe.build()
        pipe.run()
        free_after = torch.cuda.mem_get_info()[0]
        held = (free_before - free_after) / 2**30
        rows.append(row("decoder-memory", name, device, True, f"{held:.2f} GiB of GPU memory held after build and "
                        f"one batch of 256 ({kwargs})"))  # fmt: skip
        del pipe
    return rows


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
    """Run ``command`` in a process group of its own, its output streamed to ``log`` as it comes
    (a part killed on timeout leaves what it printed); on timeout the whole group is killed, so
    no child (a profiler, a train.py) outlives its part on the GPU. ``(exit code, log text,
    seconds)``; 124 on timeout."""
    start = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.Popen(command, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            code = proc.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            code = 124
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the group: the part and anything it started
            except ProcessLookupError:
                pass
            proc.wait()
    text = log.read_text(errors="replace")
    if code == 124:
        text += f"\ntimed out after {timeout:.0f} s"
        with log.open("a") as f:
            f.write(f"\ntimed out after {timeout:.0f} s (the part's process group was killed)\n")
    return code, text, time.perf_counter() - start


def left(deadline: float | None, wanted: float, cpu: bool = False, margin: float = 5.0) -> float:
    """An inner step's time limit: ``wanted`` (``CPU_SLACK`` times that with ``cpu``, as the parts'
    own limits: there only a hang stops a step), or what is left of the part's ``deadline`` (epoch
    seconds) less ``margin``, whichever is shorter, so an inner timeout fires inside the part's."""
    wanted *= CPU_SLACK if cpu else 1
    if deadline is None:
        return wanted
    return max(1.0, min(wanted, deadline - time.time() - margin))


def photos_or_synthetic() -> str | None:
    from dali_cutmix_bench.benchdata import PHOTO_DIRS

    return None if any(d.is_dir() for d in PHOTO_DIRS) else "synthetic"


def check_throughput(device: str, out: Path, cpu: bool, deadline: float | None = None) -> list[dict]:
    data = out / "benchdata"
    size = ["--images", "64", "--classes", "4"] if cpu else ["--images", "512", "--classes", "8"]
    photos = photos_or_synthetic()
    size += ["--photos", photos] if photos else []
    code, text, _ = run([sys.executable, "-m", "dali_cutmix_bench.benchdata", "--out", str(data), *size],
                        out / "benchdata.log", left(deadline, 40, cpu))  # fmt: skip
    if code:
        return [row("throughput", "benchmark data", device, False, text.strip().splitlines()[-1])]
    if cpu:
        flags = "--batch-size 8 --image-size 64 --workers 2 --reps 1 --steps 2 --trainer-steps 1 --warmup 1 "
        flags += "--sections op,pipeline,trainer,e2e,peers"  # the epochs section is tested on its own
    else:
        # --workers left to its default, the cores per local rank: what train.py uses is what is measured
        flags = "--batch-size 256 --image-size 224 --reps 2 --steps 4 --trainer-steps 4 --warmup 2 "
        flags += "--sections op,pipeline,trainer,e2e --arch resnet50"
    command = [sys.executable, "-m", "dali_cutmix_bench.bench", "--data", str(data), "--device", device,
               "--output", str(out / "bench"), *flags.split()]  # fmt: skip
    code, text, seconds = run(command, out / "bench.log", left(deadline, 150, cpu))
    lines = [
        ln for ln in text.splitlines() if ln.startswith(("epochs/", "pipeline/", "peers:", "verdict:", "end to end:"))
    ]
    detail = f"{seconds:.0f} s; data {photos or 'photos'}; " + (
        " | ".join(lines) if lines else text.strip().splitlines()[-1]
    )
    return [row("throughput", "profiler (bench.log, bench/bench.json)", device, code == 0, detail)]


def check_training(device: str, out: Path, cpu: bool, deadline: float | None = None) -> list[dict]:
    from pipelines.folders import FASHION_MNIST_DIR

    run_dir = out / "train"
    flags = ["--device", device, "--output", str(run_dir), "--epochs", "3", "--seed", "0", "--overwrite"]
    flags += ["--workers", "2"] if cpu else []  # on the GPU, train.py's default: the cores per local rank
    if FASHION_MNIST_DIR.is_dir():
        data = "demo data"
        flags += ["--demo-per-class", "50", "--batch-size", "32"] if cpu else ["--demo-per-class", "1000"]
    else:
        from dali_cutmix_bench.benchdata import synthetic_classes

        data = "synthetic classes"
        root = synthetic_classes(out / "synthetic-classes", per_class=60 if cpu else 400)
        flags += ["--data", str(root), "--image-size", "32", "--arch", "resnet18", "--warmup-epochs", "0",
                  "--batch-size", "32" if cpu else "128"]  # fmt: skip
    code, text, seconds = run([sys.executable, "train.py", *flags], out / "train.log", left(deadline, 150, cpu))
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


def run_part(part: str, device: str, out: Path, cpu: bool, rows_file: Path, deadline: float | None = None) -> None:
    """Run one part here, appending each check's rows to ``rows_file`` as soon as it is done;
    ``deadline``: when the orchestrator kills this part (epoch seconds), for its inner limits."""

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
    if part == "selftest-hang":  # the check's own test: a part that hangs, with a child that would outlive it
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        (out / "selftest-child.pid").write_text(str(child.pid))
        print("selftest: started a child and hangs", flush=True)
        time.sleep(600)
    checks = {
        "pixels": lambda: check_pixels(device),
        "cross-device": lambda: check_cross_device(device) + check_decoder_memory(device, out),
        "throughput": lambda: check_throughput(device, out, cpu, deadline),
        "training": lambda: check_training(device, out, cpu, deadline),
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


MACHINE = """
import json, subprocess, sys
lines = {}
try:
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                         capture_output=True, text=True, timeout=20).stdout.strip().splitlines()
    lines["driver"] = smi[0] if smi else "nvidia-smi printed nothing"
except (OSError, subprocess.SubprocessError) as e:
    lines["driver"] = f"no nvidia-smi ({type(e).__name__})"
try:
    import torch
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    lines["torch"] = f"torch {torch.__version__}, CUDA runtime {torch.version.cuda}, GPU {gpu}"
except ImportError as e:
    lines["torch"] = f"torch not importable ({e})"
try:
    import nvidia.dali as dali
    built = dali.__cuda_version__
    lines["dali"] = f"DALI {dali.__version__}, built for CUDA {built // 1000}.{built % 1000 // 100}.{built % 100}"
except Exception as e:
    lines["dali"] = f"DALI not importable ({type(e).__name__})"
print(json.dumps(lines))
"""


def machine_lines(device: str, env: dict) -> list[str]:
    """The report's first lines: the GPU and its driver, torch's CUDA runtime, DALI's, this check."""
    done = subprocess.run([sys.executable, "-c", MACHINE], capture_output=True, text=True, env=env, timeout=120)
    try:
        found = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        found = {"driver": "?", "torch": "?", "dali": (done.stderr.strip().splitlines() or ["?"])[-1]}
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return [f"- GPU, driver, memory: {found['driver']}", f"- {found['torch']}", f"- {found['dali']}",
            f"- device {device}; python {sys.version.split()[0]}; {when}"]  # fmt: skip


def hand_off(results: list[dict]) -> str:
    """Whether the python backend's callback worked on a stream that is not torch's: on a side
    stream with DALI's hand-over (the torch half), and inside DALI on DALI's own stream, whose CUDA
    runtime may be another major than torch's (the pixels part)."""
    side = [r["ok"] for r in results if r["check"] == "torch-mix" and r["device"] == "cuda"]
    dali = [
        r["ok"] for r in results if r["check"] == "pixels" and r["case"].startswith("python") and r["device"] == "gpu"
    ]
    word = {True: "worked", False: "FAILED", None: "not run"}

    def verdict(oks):
        return word[None] if not oks or None in oks else word[all(oks)]

    return f"- stream hand-off: torch side stream {verdict(side)}; DALI's stream (python backend) {verdict(dali)}"


def report(results: list[dict], out: Path, header: list[str], final: bool = False, times: dict | None = None) -> bool:
    failed = [r for r in results if r["ok"] is False]
    passed = [r for r in results if r["ok"]]
    counts = f"{len(passed)} passed, {len(failed)} failed, {len(results) - len(passed) - len(failed)} not run"
    took = "; ".join(f"{part} {seconds:.0f} s (limit {limit} s)" for part, (seconds, limit) in (times or {}).items())
    lines = ["# gpu_check report\n", *header, "", counts + ("" if final else " (so far)") + "\n",
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
    p.add_argument("--only", default="", help="comma-separated parts to run, the others left out")
    p.add_argument("--limit", type=float, default=None, help=argparse.SUPPRESS)  # every part's limit (tests)
    p.add_argument("--part", help=argparse.SUPPRESS)  # run one part in this process
    p.add_argument("--rows", help=argparse.SUPPRESS)
    p.add_argument("--deadline", type=float, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    device = "cpu" if args.cpu else "gpu"
    out = Path(args.output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.part:
        run_part(args.part, device, out, args.cpu, Path(args.rows), args.deadline)
        return 0
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    skip = set(filter(None, args.skip.split(",")))
    only = set(filter(None, args.only.split(",")))
    header = machine_lines(device, env)
    results: list[dict] = []
    times: dict[str, tuple[float, int]] = {}  # part: (seconds, limit)
    dali = None
    for part, half, limit in PARTS + [("selftest-hang", "torch", 30)]:
        if part in skip or (only and part not in only) or (part.startswith("selftest") and part not in only):
            continue
        limit *= CPU_SLACK if args.cpu else 1
        limit = args.limit if args.limit is not None else limit
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
                       "--output", str(out), "--deadline", str(time.time() + limit)]  # fmt: skip
            command += ["--cpu"] if args.cpu else []
            code, text, _ = run(command, out / f"{part}.log", limit, env)
            rows = [json.loads(line) for line in rows_file.read_text().splitlines()] if rows_file.is_file() else []
            if code == 124:
                rows.append(row(part, "timed out", device, False, f"stopped after {limit} s; the rows above ran"))
            elif code:
                rows.append(row(part, "crashed", device, False, (text.strip().splitlines() or ["no output"])[-1]))
            results += rows
        times[part] = (time.perf_counter() - start, limit)
        print(f"{part}: {times[part][0]:.0f} s", flush=True)
        report(results, out, header + [hand_off(results)], times=times)
    ok = report(results, out, header + [hand_off(results)], final=True, times=times)
    print((out / "report.md").read_text())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
