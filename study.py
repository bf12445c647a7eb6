"""The method's payoff, measured: seeds x mixing configurations through train.py, one table.

    python study.py                 # the full grid (about 45 minutes on 2 CPU cores): docs/RESULTS.md
    python study.py --quick         # a tiny grid of two epochs, for the test suite: runs/study-quick

Regime: a small training subset of real data (Fashion-MNIST, ``--per-class`` images a class),
trained long enough that a ResNet-18 overfits it without mixing, validated on 1,000 held-out
images. Configurations: no mixing; CutMix in the training loop (the reference code's way, from
the same sampler); CutMix in the DALI pipeline (python and native backends); and timm's ImageNet
MixUp/CutMix switching in the pipeline. Each run's final checkpoint is evaluated again: clean
validation, validation under a centred occlusion of 25% of the image (the paper's occlusion
test), and the clean training subset (for the train-val gap).

Writes ``RESULTS.md`` (table, paired comparisons, command, machine) and ``results.png`` (val top-1
per epoch, mean and spread over the seeds) to ``--output``; each run's folder goes under ``--runs``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from dali_cutmix_trainer.engine import evaluate
from dali_cutmix_trainer.model import build_model
from pipelines.folders import demo_root
from pipelines.loaders import val_loader

CUTMIX = ["--cutmix-alpha", "1.0", "--cutmix-prob", "0.5"]  # the paper's CIFAR recipe (beta 1, prob 0.5)
CONFIGS = {
    "none": ["--no-cutmix"],
    "cutmix-loop": ["--mix-in", "loop", *CUTMIX],
    "cutmix-pipeline-python": ["--cutmix-backend", "python", *CUTMIX],
    "cutmix-pipeline-native": ["--cutmix-backend", "native", *CUTMIX],
    # ResizeMix (the partner's whole image resized into the box), the same chance, on the python
    # backend: its matched comparison is cutmix-pipeline-python.
    "resizemix-pipeline-python": ["--cutmix-backend", "python", "--cutmix-paste", "resize", *CUTMIX],
    # SaliencyMix (CutMix's box centred on the partner's saliency peak), the same chance and alpha.
    "saliencymix-pipeline-python": ["--cutmix-backend", "python", "--cutmix-centre", "saliency", *CUTMIX],
    # Both recipes on the native operator (its own generator; the same recipe as the python rows).
    "resizemix-pipeline-native": ["--cutmix-backend", "native", "--cutmix-paste", "resize", *CUTMIX],
    "saliencymix-pipeline-native": ["--cutmix-backend", "native", "--cutmix-centre", "saliency", *CUTMIX],
    # timm's ImageNet recipes: mixup 0.8, cutmix 1.0, prob 1.0, switch 0.5.
    "mixup-cutmix-switch": [
        "--cutmix-backend",
        "native",
        "--mixup",
        "0.8",
        "--cutmix-alpha",
        "1.0",
        "--cutmix-prob",
        "1.0",
        "--mixup-switch-prob",
        "0.5",
    ],  # fmt: skip
}
QUICK_CONFIGS = ("none", "cutmix-loop", "cutmix-pipeline-native")
OCCLUSION = 0.25
ECE_BINS = 15  # expected calibration error over equal-width confidence bins (Guo et al. 2017)
# RESULTS.md: study.py writes what comes before this line and keeps what follows it.
KEEP = "<!-- study.py writes the part above this line; what follows is kept as it is -->"
# A milder random crop than ImageNet's 8%-100% (which alone keeps a ResNet-18 from fitting 1,000
# small images in 30 epochs): like CIFAR's pad-and-crop, it leaves room to overfit without mixing.
RANDOM_AREA = (0.5, 1.0)
T_95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57}  # two-sided Student t, 95%, by degrees of freedom


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="three configurations, one seed, two epochs, tiny data")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--per-class", type=int, default=100, help="training images per class")
    p.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset of the configurations")
    p.add_argument("--output", default=None, help="where RESULTS.md and results.png go (default docs/)")
    p.add_argument("--runs", default=None, help="the runs' folders (default runs/study)")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.epochs, args.per_class = 1, 2, 20
        args.configs = ",".join(QUICK_CONFIGS)
    args.configs = args.configs.split(",")
    for name in args.configs:
        if name not in CONFIGS:
            p.error(f"--configs: unknown configuration {name!r}, expected some of {','.join(CONFIGS)}")
    for flag in ("seeds", "epochs", "per_class"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    args.output = Path(args.output or ("runs/study-quick" if args.quick else "docs"))
    args.runs = Path(args.runs or ("runs/study-quick" if args.quick else "runs/study"))
    return args


def train_flags(args, config: str, seed: int, out: Path) -> list[str]:
    """train.py's flags of one run: resnet18 at 32 px, batch 64, cosine lr 0.05, no warmup, random
    crops of 50-100% of the image."""
    common = ["--demo-per-class", str(args.per_class), "--epochs", str(args.epochs), "--seed", str(seed),
              "--arch", "resnet18", "--image-size", "32", "--batch-size", "64", "--lr", "0.2",
              "--warmup-epochs", "0", "--workers", "2", "--device", "cpu", "--keep-checkpoints", "1",
              "--random-area", str(RANDOM_AREA[0]), str(RANDOM_AREA[1]),
              "--output", str(out)]  # fmt: skip
    return common + CONFIGS[config]


def final_evaluation(out: Path, per_class: int) -> dict:
    """Clean val, occluded val and clean train top-1 of the run's last checkpoint."""
    state = torch.load(sorted(out.glob("checkpoint_*.pt"))[-1], map_location="cpu", weights_only=True)
    config = state["config"]
    device = torch.device("cpu")
    model = build_model(config["arch"], config["num_classes"], device)
    model.load_state_dict(state["model"])
    root = demo_root(per_class)
    common = dict(batch_size=256, image_size=config["image_size"], num_threads=2, classes=config["classes"])
    val = val_loader(root / "val", **common)
    result = {
        "occluded_top1": evaluate(model, val, device, 1, amp=False, occlude=OCCLUSION)["val_top1"],
        "train_top1": evaluate(model, val_loader(root / "train", **common), device, 1, amp=False)["val_top1"],
        "val_ece": calibration_error(model, val),
    }
    return result


@torch.no_grad()
def calibration_error(model, loader, bins: int = ECE_BINS) -> float:
    """Expected calibration error (%) on clean validation: over equal-width bins of the top
    softmax probability, the gap between accuracy and mean confidence, weighted by the bin's share."""
    model.eval()
    confidence, correct = [], []
    for images, labels in loader:
        top = torch.softmax(model(images).float(), dim=1).max(dim=1)
        confidence.append(top.values)
        correct.append((top.indices == labels).float())
    return 100 * expected_calibration_error(torch.cat(confidence), torch.cat(correct), bins)


def expected_calibration_error(confidence: torch.Tensor, correct: torch.Tensor, bins: int = ECE_BINS) -> float:
    """ECE (a fraction) of (N,) top-class confidences in (0, 1] and (N,) 0/1 correctness."""
    which = (confidence * bins).ceil().clamp(1, bins).long() - 1  # (k/bins, (k+1)/bins] is bin k
    error = 0.0
    for k in range(bins):
        chosen = which == k
        if chosen.any():
            gap = correct[chosen].mean().item() - confidence[chosen].mean().item()
            error += chosen.float().mean().item() * abs(gap)
    return error


def run_grid(args) -> dict[str, list[dict]]:
    """Every (configuration, seed): train.py, then the final evaluation; cached in each run folder."""
    results: dict[str, list[dict]] = {}
    for seed in range(args.seeds):
        for config in args.configs:
            out = args.runs / f"{config}-seed{seed}"
            summary = out / "study.json"
            if not summary.is_file():
                flags = train_flags(args, config, seed, out)
                start = time.perf_counter()
                if out.exists():
                    flags.append("--overwrite")  # an unfinished run of an earlier study
                done = subprocess.run([sys.executable, "train.py", *flags], capture_output=True, text=True)
                if done.returncode != 0:
                    raise SystemExit(f"study.py: error: train.py {' '.join(flags)} failed: "
                                     f"{(done.stderr.strip().splitlines() or ['?'])[-1]}")  # fmt: skip
                rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
                record = {"config": config, "seed": seed, "rows": rows, "seconds": time.perf_counter() - start}
                record |= final_evaluation(out, args.per_class)
                summary.write_text(json.dumps(record))
            record = json.loads(summary.read_text())
            top1 = record["rows"][-1]["val_top1"]
            print(f"{config} seed {seed}: final val top-1 {top1:.1f}%, occluded {record['occluded_top1']:.1f}%, "
                  f"train {record['train_top1']:.1f}%", flush=True)  # fmt: skip
            results.setdefault(config, []).append(record)
    return results


def mean_std(values: list[float], digits: int = 1) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def paired(results, a: str, b: str, key) -> tuple[float, float, bool | None] | None:
    """Mean and std of ``key(a) - key(b)`` over the seeds both have, and whether the mean differs
    from 0 at 95% (paired t-test; None with one seed)."""
    if a not in results or b not in results:
        return None
    diffs = [key(x) - key(y) for x, y in zip(results[a], results[b])]
    if len(diffs) < 2:
        return diffs[0], 0.0, None
    mean, std = statistics.mean(diffs), statistics.stdev(diffs)
    t = mean / (std / math.sqrt(len(diffs))) if std > 0 else math.inf
    return mean, std, abs(t) > T_95.get(len(diffs) - 1, 2.0)


def write_report(args, results: dict[str, list[dict]], command: str) -> Path:
    def final(r):
        return r["rows"][-1]["val_top1"]

    lines = [
        "# Results: CutMix in the pipeline against CutMix in the loop, and against no mixing",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {os.cpu_count()} CPU cores, no GPU, {platform.platform()}, torch {torch.__version__}. "
        f"Data: Fashion-MNIST, {args.per_class} training images a class ({10 * args.per_class} in all), "
        f"1,000 validation images; ResNet-18 at 32 px, batch 64, SGD nesterov, cosine lr 0.05, "
        f"{args.epochs} epochs, random crops of {RANDOM_AREA[0]:.0%}-{RANDOM_AREA[1]:.0%} of the image and "
        f"flips, {args.seeds} seed(s) per configuration. CutMix: beta 1.0, prob 0.5 "
        f"(the paper's CIFAR recipe); the switching run uses timm's ImageNet values (MixUp 0.8, "
        f"CutMix 1.0, prob 1.0, switch 0.5); ResizeMix takes CutMix's chance, its box's scale uniform in "
        f"[0.1, 0.8); SaliencyMix takes CutMix's chance and box, centred on the partner's saliency peak. "
        f"Occlusion: a centred box of {OCCLUSION:.0%} of the image set to the mean colour. "
        f"ECE: expected calibration error on clean validation, {ECE_BINS} equal-width confidence bins. "
        f"All figures in %, mean ± std over the seeds.",
        "",
        "| configuration | final val top-1 | best val top-1 | final val loss | train top-1 | train-val gap "
        "| occluded val top-1 | val ECE | minutes per run |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for config, records in results.items():
        lines.append(
            f"| {config} | {mean_std([final(r) for r in records])} "
            f"| {mean_std([max(x['val_top1'] for x in r['rows']) for r in records])} "
            f"| {mean_std([r['rows'][-1]['val_loss'] for r in records], 3)} "
            f"| {mean_std([r['train_top1'] for r in records])} "
            f"| {mean_std([r['train_top1'] - final(r) for r in records])} "
            f"| {mean_std([r['occluded_top1'] for r in records])} "
            f"| {mean_std([r['val_ece'] for r in records]) if all('val_ece' in r for r in records) else '-'} "
            f"| {statistics.mean(r['seconds'] for r in records) / 60:.1f} |"
        )
    lines += ["", "## What the table supports", ""]
    comparisons = [
        ("cutmix-pipeline-python", "cutmix-loop", "in-pipeline (python backend) against in-loop CutMix, same sampler"),
        ("cutmix-pipeline-native", "cutmix-loop", "in-pipeline (native backend) against in-loop CutMix"),
        ("cutmix-pipeline-native", "none", "CutMix (native, in the pipeline) against no mixing"),
        ("cutmix-loop", "none", "CutMix in the loop against no mixing"),
        ("mixup-cutmix-switch", "none", "MixUp/CutMix switching against no mixing"),
        ("resizemix-pipeline-python", "cutmix-pipeline-python", "ResizeMix against CutMix (python, in the pipeline)"),
        (
            "saliencymix-pipeline-python",
            "cutmix-pipeline-python",
            "SaliencyMix against CutMix (python, in the pipeline)",
        ),
        ("saliencymix-pipeline-python", "resizemix-pipeline-python", "SaliencyMix against ResizeMix"),
        ("resizemix-pipeline-native", "resizemix-pipeline-python", "ResizeMix, native against python"),
        ("saliencymix-pipeline-native", "saliencymix-pipeline-python", "SaliencyMix, native against python"),
        ("saliencymix-pipeline-native", "cutmix-pipeline-native", "SaliencyMix against CutMix (native)"),
        ("resizemix-pipeline-native", "cutmix-pipeline-native", "ResizeMix against CutMix (native)"),
    ]
    measures = [("final val top-1", final), ("occluded val top-1", lambda r: r["occluded_top1"]),
                ("val ECE", lambda r: r["val_ece"])]  # fmt: skip
    for a, b, what in comparisons:
        for label, key in measures:
            if label == "val ECE" and not all("val_ece" in r for r in results.get(a, []) + results.get(b, [])):
                continue
            found = paired(results, a, b, key)
            if found is None:
                continue
            mean, std, significant = found
            verdict = {None: "one seed: no test", True: "a difference at 95% (paired t-test)",
                       False: "within seed noise (paired t-test, 95%)"}[significant]  # fmt: skip
            lines.append(f"- {what}, {label}: {mean:+.1f} points (std {std:.1f} over the seeds): {verdict}.")
    lines += ["", "![val top-1 per epoch](results.png)", "", KEEP]
    path = args.output / "RESULTS.md"
    old = path.read_text() if path.is_file() else ""
    kept = old[old.index(KEEP) + len(KEEP) :] if KEEP in old else "\n"
    path.write_text("\n".join(lines) + kept)
    return path


def plot(results: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for config, records in results.items():
        curves = [[x["val_top1"] for x in r["rows"]] for r in records]
        epochs = range(1, len(curves[0]) + 1)
        mean = [statistics.mean(c) for c in zip(*curves)]
        low, high = [min(c) for c in zip(*curves)], [max(c) for c in zip(*curves)]
        ax.plot(epochs, mean, label=config)
        ax.fill_between(epochs, low, high, alpha=0.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel("val top-1 (%): mean, band = min..max over seeds")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    args.output.mkdir(parents=True, exist_ok=True)
    demo_root(args.per_class)  # export once, before the runs
    results = run_grid(args)
    command = " ".join(["python study.py", *(sys.argv[1:] if argv is None else argv)])
    report = write_report(args, results, command)
    plot(results, args.output / "results.png")
    print(f"wrote {report} and {args.output / 'results.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
