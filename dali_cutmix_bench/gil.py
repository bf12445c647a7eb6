"""How long the python backend's two Python operators hold the GIL per batch, and what mixing in
the training loop costs the training thread instead.

    python -m dali_cutmix_bench.gil [--batch-size 256] [--size 8] [--batches 200] [--mixup 0.2]

DALI runs a Python operator under its Python-operator lock and the GIL: while it runs, a GPU
trainer's thread cannot launch kernels. On images small enough that the pixel work is near zero
(8x8 by default), what remains is the Python and DLPack overhead, which does not depend on the
image size: the same time a GPU pays per batch. Measured here on the CPU as a proxy for a GPU:

* ``sampler`` / ``callback``: the CPU time of the thread inside DALI's wrapper of each operator
  (the DLPack conversions of its inputs and outputs included), per batch, median over
  ``--batches``: the time the GIL is held, less the time the thread waits for a core (CPU time
  rather than wall time, so that a busy machine does not inflate it);
* ``loop mixer``: :class:`dali_cutmix.loop.LoopMixer` on the same batch (the host time of
  ``--mix-in loop``, on the training thread).

Prints one line a figure and writes nothing; docs/BENCHMARKS.md has the figures.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import numpy as np
import nvidia.dali.fn as fn
import torch
from nvidia.dali import pipeline_def, types
from nvidia.dali.ops._operators import python_function as dali_python

from dali_cutmix.backends.python import _Sample
from dali_cutmix.backends.torch_mix import TorchMix
from dali_cutmix.loop import LoopMixer
from dali_cutmix.ops import cutmix
from dali_cutmix.recipe import MixConfig


def timed_operators(batches: int, pipe) -> dict[str, list[float]]:
    """Run ``pipe`` ``batches`` times; seconds inside each Python operator, per batch."""
    spent: dict[str, list[float]] = defaultdict(list)
    real = dali_python.PythonFunction.function_wrapper_batch

    def wrapper(pipeline, function, *rest):
        start = time.thread_time()
        try:
            return real(pipeline, function, *rest)
        finally:
            spent[_name(function)].append(time.thread_time() - start)

    dali_python.PythonFunction.function_wrapper_batch = staticmethod(wrapper)
    try:
        pipe.build()
        for _ in range(batches):
            pipe.run()
    finally:
        dali_python.PythonFunction.function_wrapper_batch = staticmethod(real)
    return spent


def _name(function) -> str:
    """Which of the python backend's operators ``function`` is."""
    return {_Sample: "sampler", TorchMix: "callback"}.get(type(function), "other")


def mixing_pipeline(recipe: MixConfig, batch_size: int, size: int):
    @pipeline_def(batch_size=batch_size, num_threads=1, device_id=None, seed=0, prefetch_queue_depth=1)
    def graph():
        images = fn.cast(fn.random.uniform(range=[0, 255], shape=[size, size, 3]), dtype=types.UINT8)
        labels = fn.random.uniform(range=[0, 1000], shape=[1], dtype=types.INT32)
        return cutmix(images, labels, recipe, backend="python", size=(size, size))

    return graph()


def loop_mixer_seconds(recipe: MixConfig, batch_size: int, size: int, batches: int) -> list[float]:
    mixer = LoopMixer(recipe, seed=0)
    images = torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8)
    labels = torch.randint(0, 1000, (batch_size,))
    seconds = []
    for _ in range(batches):
        start = time.thread_time()
        mixer(images, labels)
        seconds.append(time.thread_time() - start)
    return seconds


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--size", type=int, default=8, help="image side: small, so that the pixel work is near zero")
    p.add_argument("--batches", type=int, default=200)
    p.add_argument("--mixup", type=float, default=0.0, help="MixUp alpha too (two more inputs to the callback)")
    args = p.parse_args(argv)
    if min(args.batch_size, args.batches) < 1 or args.size < 2:
        p.error(f"--batch-size and --batches must be >= 1 and --size >= 2, got {args.batch_size}, "
                f"{args.batches} and {args.size}")  # fmt: skip
    torch.set_num_threads(1)
    recipe = MixConfig(mixup_alpha=args.mixup, mode="elem")
    spent = timed_operators(args.batches, mixing_pipeline(recipe, args.batch_size, args.size))
    spent["loop mixer"] = loop_mixer_seconds(recipe, args.batch_size, args.size, args.batches)
    print(f"batch {args.batch_size}, {args.size}x{args.size} uint8 images, {args.batches} batches, "
          f"mixup {args.mixup}, torch {torch.__version__}, numpy {np.__version__}")  # fmt: skip
    least = {}
    for name in ("sampler", "callback", "loop mixer"):
        ms = [1000 * s for s in spent[name][5:] or spent[name]]  # the first batches warm up
        least[name] = min(ms)
        print(f"{name}: {statistics.median(ms):.3f} ms per batch (median; quartiles "
              f"{np.percentile(ms, 25):.3f}..{np.percentile(ms, 75):.3f}; least {min(ms):.3f})")  # fmt: skip
    # The least is the steadiest figure on a shared machine: the same work, least disturbed.
    held = least["sampler"] + least["callback"]
    print(f"pipeline mixing holds the GIL {held:.3f} ms per batch (least); the loop mixer takes "
          f"{least['loop mixer']:.3f} ms of the training thread")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
