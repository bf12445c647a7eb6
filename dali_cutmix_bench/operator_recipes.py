"""What each recipe costs inside the native operator alone: CutMix, ResizeMix and SaliencyMix (and
the operator with nothing mixed), on one batch of decoded crops of varied sizes, fused resize to
``--size``, normalised float CHW output, the training pipelines' call.

    python -m dali_cutmix_bench.operator_recipes [--batch-size 64] [--size 224] [--runs 20] [--rounds 5]

The whole-pipeline figures (decoding included) are ``dali_cutmix_bench.bench``'s epochs section;
this isolates the operator, where the recipes differ. CPU time of the process a batch (the
operator's thread pool has one thread, so it is the operator's work), median over ``--rounds``
rounds taken in turn, each ``--runs`` batches after 3 warm-up ones, and the ratio to CutMix of
each round, as median (min..max). Prints a table and writes ``operator_recipes.json`` to
``--output``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

RECIPES = {
    "CutMix": {},
    "ResizeMix": {"paste": "resize"},
    "SaliencyMix": {"centre": "saliency"},
    "nothing mixed (prob 0)": {"prob": 0.0},
}


def pipeline(batch: list[np.ndarray], size: int, recipe: dict):
    from nvidia.dali import fn, pipeline_def, types

    from dali_cutmix import plugin

    plugin.load()
    labels = [np.array([i], np.int32) for i in range(len(batch))]

    @pipeline_def(batch_size=len(batch), num_threads=1, device_id=None, seed=1)
    def pipe():
        images = fn.external_source(source=lambda: batch, layout="HWC")
        entropy = fn.random.uniform(range=[0.0, 1.0], shape=[2])
        return fn.dali_cutmix.mix(images, fn.external_source(source=lambda: labels), entropy, size=[size, size],
                                  mean=[123.7, 116.3, 103.5], std=[58.4, 57.1, 57.4], output_layout="CHW",
                                  dtype=types.FLOAT, mode="elem", **recipe)[0]  # fmt: skip

    p = pipe(prefetch_queue_depth=1)
    p.build()
    return p


def cpu_ms(p, runs: int) -> float:
    for _ in range(3):
        p.run()
    start = time.process_time()
    for _ in range(runs):
        p.run()
    return (time.process_time() - start) / runs * 1000


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--size", type=int, default=224, help="the fused resize's side")
    ap.add_argument("--runs", type=int, default=20, help="batches a round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--output", default="runs/operator-recipes")
    args = ap.parse_args(argv)
    for flag in ("batch_size", "size", "runs", "rounds"):
        if getattr(args, flag) < (2 if flag == "size" else 1):
            ap.error(f"--{flag.replace('_', '-')} must be >= {2 if flag == 'size' else 1}, got {getattr(args, flag)}")
    rng = np.random.default_rng(0)
    # decoded random crops as a decoder hands them over: sides between 0.9x and 1.8x the output's
    sides = rng.integers(int(args.size * 0.9), int(args.size * 1.8) + 1, (args.batch_size, 2))
    batch = [rng.integers(0, 256, (int(h), int(w), 3), dtype=np.uint8) for h, w in sides]
    pipes = {name: pipeline(batch, args.size, recipe) for name, recipe in RECIPES.items()}
    times = {name: [] for name in RECIPES}
    for _ in range(args.rounds):
        for name, p in pipes.items():
            times[name].append(cpu_ms(p, args.runs))
    base = times["CutMix"]
    rows = {}
    print(f"native operator, batch {args.batch_size}, crops resized to {args.size}, CPU ms a batch (one thread)")
    print(f"{'recipe':<24} {'ms':>8}  against CutMix, median (min..max) of {args.rounds} rounds")
    for name, values in times.items():
        ratios = [v / b for v, b in zip(values, base)]
        rows[name] = {"ms": statistics.median(values), "ratio": statistics.median(ratios),
                      "ratio_min": min(ratios), "ratio_max": max(ratios), "rounds": values}  # fmt: skip
        against = "" if name == "CutMix" else f"{rows[name]['ratio']:.3f} ({min(ratios):.3f}..{max(ratios):.3f})"
        print(f"{name:<24} {rows[name]['ms']:8.2f}  {against}")
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "operator_recipes.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
