"""Every GPU check in one run, with one report folder: ``bash scripts/gpu_check.sh [--cpu]``.

1. ``pixels``: every CutMix backend that runs on the device, against the NumPy oracle
   (:func:`dali_cutmix.mix.apply_cutmix` fed the backend's own parameters; lam from the boxes),
   batch and elem modes, prob 0.5, MixUp with switching, minmax, no_self; and ``normalize=``
   (float16 on the GPU) against the oracle's float32 normalisation.
2. ``cross-device``: the python backend on the CPU and on the GPU from one seed draw the same
   parameters and write the same pixels (GPU only).
3. ``throughput``: the profiler (``benchmarks.bench``) on real-photo data: decode+resize, each
   backend, torchvision + v2.CutMix, the trainer and end to end (ResNet-50, AMP, channels_last,
   batch 256 on a GPU).
4. ``training``: a short train.py run on the demo data (AMP on a GPU) that must end with a finite
   loss and a higher validation accuracy than after its first epoch.

``--cpu`` runs every check that has a meaning on the CPU, small, so that CI runs this very script.
Writes ``report.md`` and ``report.json`` to ``--output``; exits 1 if any check failed.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from dali_cutmix import ops
from dali_cutmix.mix import CutMixParams, apply_cutmix

ROOT = Path(__file__).resolve().parents[1]
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


def run_mix(device: str, batches, seed: int, normalize=None, **recipe):
    """The mixed batches, their parameters and the inputs, as NumPy, from one pipeline."""
    return ops.mix_arrays(batches, device=device, seed=seed, num_threads=2, normalize=normalize, **recipe)


def normalised(images: np.ndarray, dtype) -> np.ndarray:
    """(B, H, W, C) uint8 -> (B, C, H, W): crop_mirror_normalize's (x - mean) * (1 / std) in float32."""
    inv = (1.0 / np.array(STD, np.float64)).astype(np.float32)
    out = (images.astype(np.float32) - np.array(MEAN, np.float32)) * inv
    return out.transpose(0, 3, 1, 2).astype(dtype)


def check_pixels(device: str) -> list[dict]:
    rng = np.random.default_rng(0)
    batches = [[rng.integers(0, 256, (H, W, 3), np.uint8) for _ in range(B)] for _ in range(3)]
    results = []
    backends = [b for b in ops.BACKENDS if (b, device) not in ops.REFUSED]
    for backend in backends:
        for mode in ("batch", "elem"):
            for name, recipe in RECIPES.items():
                bad = []
                for out in run_mix(device, batches, 1, backend=backend, mode=mode, **recipe):
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
                results.append(_result("pixels", f"{backend} {mode} {name}", device, not bad, "; ".join(bad) or
                                       "byte-identical to the oracle (3 batches of 16)"))  # fmt: skip
        fp16 = device == "gpu"
        norm = ops.Normalize(mean=MEAN, std=STD, fp16=fp16)
        worst = 0.0
        for out in run_mix(device, batches, 2, normalize=norm, backend=backend, mode="elem", mixup_alpha=0.4):
            images, mixed, la, _, lam, perm, boxes, blend = out
            params = CutMixParams(perm.astype(np.int64), boxes, lam, blend > 0)
            want = normalised(apply_cutmix(images, la, params)[0], np.float16 if fp16 else np.float32)
            worst = max(worst, float(np.abs(mixed.astype(np.float32) - want.astype(np.float32)).max()))
        limit = FP16_ATOL if fp16 else 1e-5
        results.append(_result("pixels", f"{backend} normalize={'fp16' if fp16 else 'fp32'}", device, worst <= limit,
                               f"max |difference| {worst:.2e} (limit {limit:.1e})"))  # fmt: skip
    return results


def check_cross_device() -> list[dict]:
    rng = np.random.default_rng(3)
    batches = [[rng.integers(0, 256, (H, W, 3), np.uint8) for _ in range(B)] for _ in range(3)]
    results = []
    for mode in ("batch", "elem"):
        for name, recipe in RECIPES.items():
            kwargs = dict(backend="python", mode=mode, **recipe)
            cpu, gpu = (list(run_mix(d, batches, 5, **kwargs)) for d in ("cpu", "gpu"))
            same = all(np.array_equal(a, b) for c, g in zip(cpu, gpu) for a, b in zip(c, g))
            detail = "same perm, boxes, lam, blend and pixels" if same else "outputs differ"
            results.append(_result("cross-device", f"python {mode} {name}", "cpu+gpu", same, detail))
    return results


def run(command: list[str], log: Path, timeout: float) -> tuple[int, str, float]:
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        code, text = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as e:
        code, text = 124, f"{e.stdout or ''}{e.stderr or ''}\ntimed out after {timeout:.0f} s"
    log.write_text(text if isinstance(text, str) else text.decode())
    return code, text if isinstance(text, str) else text.decode(), time.perf_counter() - start


def check_throughput(device: str, out: Path, cpu: bool) -> list[dict]:
    data = out / "benchdata"
    size = ["--images", "64", "--classes", "4"] if cpu else ["--images", "1024", "--classes", "8"]
    code, text, _ = run([sys.executable, "-m", "benchmarks.benchdata", "--out", str(data), *size],
                        out / "benchdata.log", 300)  # fmt: skip
    if code:
        return [_result("throughput", "benchmark data", device, False, text.strip().splitlines()[-1])]
    if cpu:
        flags = "--batch-size 8 --image-size 64 --workers 2 --reps 1 --steps 2 --trainer-steps 1 --warmup 1 "
        flags += "--sections op,pipeline,trainer,e2e,peers"  # the epochs section is tested on its own
    else:
        flags = (
            "--batch-size 256 --image-size 224 --workers 16 --reps 3 --steps 4 --trainer-steps 4 --warmup 2 --epochs 2"
        )
    command = [sys.executable, "-m", "benchmarks.bench", "--data", str(data), "--device", device,
               "--output", str(out / "bench"), *flags.split()]  # fmt: skip
    if not cpu:
        command += ["--arch", "resnet50"]
    code, text, seconds = run(command, out / "bench.log", 240 if cpu else 300)
    lines = [
        ln for ln in text.splitlines() if ln.startswith(("epochs/", "pipeline/", "peers:", "verdict:", "end to end:"))
    ]
    detail = f"{seconds:.0f} s; " + (" | ".join(lines) if lines else text.strip().splitlines()[-1])
    return [_result("throughput", "profiler (bench.log, bench/bench.json)", device, code == 0, detail)]


def check_training(device: str, out: Path, cpu: bool) -> list[dict]:
    run_dir = out / "train"
    flags = ["--device", device, "--output", str(run_dir), "--epochs", "3", "--workers", "2", "--seed", "0"]
    flags += ["--demo-per-class", "100", "--batch-size", "32"] if cpu else ["--demo-per-class", "1000"]
    code, text, seconds = run([sys.executable, "train.py", *flags], out / "train.log", 300)
    rows = []
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    ok = code == 0 and len(rows) == 3
    finite = ok and all(math.isfinite(r["train_loss"]) and math.isfinite(r["val_loss"]) for r in rows)
    rising = ok and rows[-1]["val_top1"] > rows[0]["val_top1"]
    if rows:
        top1 = [round(r["val_top1"], 1) for r in rows]
        detail = f"{seconds:.0f} s; val top-1 by epoch {top1}, last train loss {rows[-1]['train_loss']:.3f}"
    else:
        detail = (text.strip().splitlines() or ["no output"])[-1]
    amp = "AMP" if device == "gpu" else "fp32"
    return [_result("training", f"train.py, demo data, 3 epochs, {amp}", device, ok and finite and rising, detail)]


def _result(check: str, case: str, device: str, ok: bool | None, detail: str) -> dict:
    """One row of the report; ``ok`` None: not run here."""
    return {"check": check, "case": case, "device": device, "ok": None if ok is None else bool(ok), "detail": detail}


def report(results: list[dict], out: Path, header: str) -> bool:
    failed = [r for r in results if r["ok"] is False]
    passed = [r for r in results if r["ok"]]
    counts = f"{len(passed)} passed, {len(failed)} failed, {len(results) - len(passed) - len(failed)} not run\n"
    lines = [f"# gpu_check report\n\n{header}\n", counts,
             "| check | case | device | result | detail |", "| --- | --- | --- | --- | --- |"]  # fmt: skip
    for r in results:
        verdict = {True: "pass", False: "**FAIL**", None: "not run"}[r["ok"]]
        lines.append(f"| {r['check']} | {r['case']} | {r['device']} | {verdict} | {r['detail']} |")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    (out / "report.json").write_text(json.dumps({"header": header, "results": results}, indent=2))
    print("\n".join(lines))
    return not failed


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cpu", action="store_true", help="the checks that have a CPU meaning, small, on the CPU")
    p.add_argument("--output", default="runs/gpu_check", help="the report folder")
    p.add_argument("--skip", default="", help="comma-separated checks to leave out (pixels,cross-device,...)")
    args = p.parse_args(argv)
    if not args.cpu and not torch.cuda.is_available():
        p.error("no CUDA device here: run with --cpu for the CPU checks")
    device = "cpu" if args.cpu else "gpu"
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    skip = set(filter(None, args.skip.split(",")))
    import nvidia.dali

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    header = (f"device {device}; GPU {gpu}; torch {torch.__version__} (CUDA {torch.version.cuda}); "
              f"DALI {nvidia.dali.__version__}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")  # fmt: skip
    print(header, flush=True)
    checks = {
        "pixels": lambda: check_pixels(device),
        "cross-device": (lambda: check_cross_device()) if not args.cpu else None,
        "throughput": lambda: check_throughput(device, out, args.cpu),
        "training": lambda: check_training(device, out, args.cpu),
    }
    results = []
    for name, check in checks.items():
        if name in skip:
            continue
        if check is None:
            results.append(_result(name, "-", device, None, "not run: needs a GPU"))
            continue
        start = time.perf_counter()
        print(f"{name} ...", flush=True)
        try:
            results += check()
        except Exception as e:  # a check that crashes is a failed check, and the others still run
            results.append(_result(name, "crashed", device, False, f"{type(e).__name__}: {e}".splitlines()[0]))
        print(f"{name}: {time.perf_counter() - start:.0f} s", flush=True)
    return 0 if report(results, out, header) else 1


if __name__ == "__main__":
    sys.exit(main())
