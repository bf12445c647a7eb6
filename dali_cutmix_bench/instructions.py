"""Instructions per batch, counted by valgrind: the profiler's noise-free companion.

On a shared machine, wall-clock throughput moves by 10-30% from one second to the next, which
hides a cost of 1%. ``valgrind --tool=callgrind`` counts the instructions a process executes: the
same count for the same work, whatever else the machine does. Each configuration runs twice, for
``--batches A,B`` batches, and the difference over ``B - A`` batches is its work per batch
(start-up and imports cancel out). Instructions are not seconds (memory traffic and vector width
differ per operator), so this corroborates the throughput figures; it does not replace them.

    python -m dali_cutmix_bench.instructions --data DIR [--batches 1,5] [--configs none,native,python,ops]
    python -m dali_cutmix_bench.instructions --in-memory      # the CutMix operator alone, no decoding
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

CONFIGS = ("none", "native", "python", "ops")


def drive(config: str, batches: int, data: str | None, batch_size: int, image_size: int) -> tuple:
    """Run ``batches`` batches of one configuration (the process valgrind watches); returns the
    last batch's outputs."""
    from nvidia.dali import fn, pipeline_def

    from dali_cutmix_bench.bench import mix_and_normalise
    from pipelines.graphs import train_pipeline

    if data:
        from pipelines.folders import load_imagenet

        settings = {"recipe": None} if config == "none" else {"backend": config}
        split = load_imagenet(data)[0] if os.path.isdir(os.path.join(data, "train")) else data  # a root or a split
        pipe = train_pipeline(split, batch_size=batch_size, image_size=image_size, num_threads=2,
                              prefetch_queue_depth=1, **settings)  # fmt: skip
    else:
        import numpy as np

        rng = np.random.default_rng(0)
        S, B = image_size, batch_size
        images = [[rng.integers(0, 256, (S, S, 3), dtype=np.uint8) for _ in range(B)] for _ in range(2)]

        @pipeline_def(batch_size=B, num_threads=2, device_id=None, seed=0, prefetch_queue_depth=1)
        def graph():
            return mix_and_normalise(fn.external_source(source=images, cycle=True, layout="HWC"), config)

        pipe = graph()
    pipe.build()
    outputs = ()
    for _ in range(batches):
        outputs = pipe.run()
    return outputs


def count(config: str, batches: int, args) -> int:
    """Instructions of one ``drive`` run under callgrind."""
    with tempfile.TemporaryDirectory() as tmp:
        command = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={tmp}/out",
            sys.executable,
            "-m",
            "dali_cutmix_bench.instructions",
            "--drive",
            config,
            str(batches),
            "--batch-size",
            str(args.batch_size),
            "--image-size",
            str(args.image_size),
        ] + (["--data", args.data] if args.data else [])
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        result = subprocess.run(command, capture_output=True, text=True, env=env)
    match = re.search(r"Collected : (\d+)", result.stderr)
    if result.returncode != 0 or not match:
        tail = (result.stderr.strip().splitlines() or ["?"])[-1]
        raise RuntimeError(f"valgrind run of {config!r} ({batches} batches) failed: {tail}")
    return int(match.group(1))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="ImageNet-layout root: the full training pipeline (else --in-memory)")
    p.add_argument("--in-memory", action="store_true", help="in-memory uint8 batches: normalise +/- CutMix")
    p.add_argument("--batches", default="1,5", help="two batch counts A,B; per batch = difference / (B - A)")
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"some of {','.join(CONFIGS)}; 'none' first")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--drive", nargs=2, metavar=("CONFIG", "BATCHES"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.drive:
        drive(args.drive[0], int(args.drive[1]), args.data, args.batch_size, args.image_size)
        return
    if not args.data and not args.in_memory:
        p.error("give --data DIR (the full pipeline) or --in-memory (the operator alone)")
    if args.data and not os.path.isdir(args.data):
        p.error(f"--data {args.data!r} is not a directory")
    if shutil.which("valgrind") is None:
        p.error("valgrind is not installed (Debian: apt install valgrind)")
    try:
        low, high = (int(v) for v in args.batches.split(","))
        assert 0 <= low < high
    except (ValueError, AssertionError):
        p.error(f"--batches must be A,B with 0 <= A < B, got {args.batches!r}")
    configs = args.configs.split(",")
    if configs[0] != "none" or not set(configs) <= set(CONFIGS):
        p.error(f"--configs must start with none and name some of {','.join(CONFIGS)}, got {args.configs!r}")
    runs = [(c, n) for c in configs for n in (low, high)]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        counts = dict(zip(runs, pool.map(lambda run: count(*run, args), runs)))
    what = f"full pipeline on {args.data}" if args.data else "in-memory batches, normalised"
    print(f"instructions per batch of {args.batch_size} at {args.image_size} px ({what}), batches {low} -> {high}:")
    base = (counts["none", high] - counts["none", low]) / (high - low)
    for c in configs:
        per_batch = (counts[c, high] - counts[c, low]) / (high - low)
        print(f"  {c:<7} {per_batch / 1e6:10.1f} M   {100 * (per_batch / base - 1):+6.2f}% against none")


if __name__ == "__main__":
    main()
