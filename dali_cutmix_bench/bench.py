"""Throughput profiler: where the images per second go, side by side with the peers.

    dali-cutmix-bench --data DIR [--device cpu|gpu] [--batch-size 64] [--image-size 224]
    python -m dali_cutmix_bench.bench ...     # the same, from a checkout

Sections (``--sections``), each configuration measured after a warm-up:

* ``epochs`` (the primary measurement: what a trainer sees): each configuration's loader iterated
  for ``--epochs`` whole epochs back to back, in a process of its own, ``--reps`` rounds taken in
  turn; images/s and process CPU time per image;
* ``isa`` (CPU): the native CutMix pipeline as ``epochs`` measures it, once per compiled copy of
  the operator's pixel work that this CPU runs (portable, AVX2, AVX-512), against the portable one;
* ``cutmix op``: the cost of CutMix alone per batch, on uint8 batches read from .npy files and
  normalised as in training (the native backend mixes and normalises in one pass);
* ``stages``: the pipeline cut after each stage (read, decode+crop+resize, normalise, CutMix);
* ``pipeline``: the training loader, CutMix off / python / native / ops, and the native operator
  with prob 0 (its normalisation alone), ``--steps`` batches a turn;
* ``trainer``: the training step alone on synthetic batches already on the device;
* ``end to end``: the loader (CutMix with ``--backend``) feeding the training step;
* ``peers``: torchvision ``ImageFolder`` + ``DataLoader`` + ``transforms.v2.CutMix``, and timm's
  transforms + ``DataLoader`` + ``Mixup`` in CutMix-only mode, same files, batch and workers;
* ``ffcv`` (when ``ffcv`` is importable: ``bash scripts/peers.sh``): FFCV on the same photos as
  JPEG and as its ImageNet recipe stores them, against the native backend on the originals and on
  data prepared by ``pipelines.prepare``, whole epochs in processes of their own
  (:mod:`dali_cutmix_bench.ffcv_peers`).

The DALI sections measure their configurations in turn (A B C, B C A, ...), and the CutMix costs
are medians of per-repetition ratios (see :func:`interleaved`): on a shared machine that is what
resolves a difference of a few percent. Prints a table (median images/s, spread, ratio to the
group's baseline, CPU time per batch) and findings keyed by ``group/row`` (the targets they are
held to are in docs/BENCHMARKS.md), and writes ``bench.json`` and ``bench.png`` to ``--output``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import re
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from dali_cutmix.ops import BACKENDS, DEFAULT_BACKEND, REFUSED
from dali_cutmix.recipe import MixConfig
from dali_cutmix_bench import ffcv_peers
from pipelines.folders import load_imagenet
from pipelines.settings import process_threads
from pipelines.shards import is_shards
from pipelines.sources import load_source


@dataclass
class Row:
    group: str
    name: str
    images_per_s: list[float]
    baseline: str = ""  # the row of the same group this one is compared with
    note: str = ""
    cpu_ms: list[float] = field(default_factory=list)  # process CPU time per batch, per repetition

    @property
    def median(self) -> float:
        return statistics.median(self.images_per_s)

    @property
    def spread(self) -> float:
        """(max - min) / median over the repetitions."""
        return (max(self.images_per_s) - min(self.images_per_s)) / self.median


def throughput(
    batches: Iterator, batch_size: int, *, warmup: int, steps: int, reps: int, sync: Callable[[], None] = lambda: None
) -> list[float]:
    """Images per second of each repetition of ``steps`` batches, after ``warmup`` batches."""
    return interleaved({"": batches}, batch_size, warmup=warmup, steps=steps, reps=reps, sync=sync)[""]


def interleaved(
    sources: dict[str, Iterator],
    batch_size: int,
    *,
    warmup: int,
    steps: int,
    reps: int,
    sync: Callable[[], None] = lambda: None,
    settle: float = 0.0,
    cpu: dict[str, list[float]] | None = None,
) -> dict[str, list[float]]:
    """:func:`throughput` of several sources, their repetitions taken in turn (A B C, B C A, ...).

    On a shared machine the load drifts over seconds; measured in turn, repetition ``r`` of every
    source sees about the same machine, so per-repetition ratios (see :func:`paired_cost`) resolve
    differences of a few percent that medians of back-to-back blocks cannot. ``settle`` seconds
    pass after each source's turn: a DALI pipeline refills its prefetch queue in the background,
    which must not run into the next source's turn. ``cpu``, when given, receives each turn's
    CPU time per batch (ms, all threads of this process): the work done, which other tenants'
    load disturbs far less than the wall clock.
    """
    for batches in sources.values():
        for _ in itertools.islice(batches, warmup):
            pass
        sync()
    rates: dict[str, list[float]] = {name: [] for name in sources}
    names = list(sources)
    for rep in range(reps):
        # Each round starts one source later (A B C, B C A, ...): no source always follows the same one.
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            batches = sources[name]
            start, start_cpu = time.perf_counter(), time.process_time()
            for _ in itertools.islice(batches, steps):
                pass
            sync()
            rates[name].append(steps * batch_size / (time.perf_counter() - start))
            if cpu is not None:
                cpu.setdefault(name, []).append(1000 * (time.process_time() - start_cpu) / steps)
            time.sleep(settle)
    return rates


def cpu_cost(cpu_ms: list[float], base: list[float]) -> tuple[float, float, float]:
    """Extra CPU time per batch against ``base``, in percent, paired by repetition like
    :func:`paired_cost`: median, min, max."""
    extra = sorted(100 * (c / b - 1) for c, b in zip(cpu_ms, base))
    return statistics.median(extra), extra[0], extra[-1]


def paired_cost(rates: list[float], base: list[float]) -> tuple[float, float, float]:
    """Throughput lost against ``base``, in percent, from repetitions taken in turn: the median
    of the per-repetition losses, and their min and max."""
    losses = sorted(100 * (1 - r / b) for r, b in zip(rates, base))
    return statistics.median(losses), losses[0], losses[-1]


def operator_count(pipe) -> str:
    """How many DALI operators a built pipeline runs: on a CPU each costs a roughly fixed ~0.05-0.1 ms
    per batch whatever it computes, so the count explains much of a fragment's cost."""
    with tempfile.TemporaryDirectory() as tmp:  # DALI's public view of the graph: its dot file
        pipe.save_graph_to_dot_file(f"{tmp}/graph.dot")
        edges = re.findall(r"^(\S+) -> (\S+);$", Path(f"{tmp}/graph.dot").read_text(), re.M)
    names = {name for edge in edges for name in edge if not name.startswith("__MakeContiguous")}
    return f"{len(names)} DALI ops"


def endless(loader) -> Iterator:
    while True:
        yield from loader


# --- the DALI side ------------------------------------------------------------------------------


SETTLE = 0.3  # seconds between turns: longer than a pipeline takes to refill its prefetch queue


def mix_and_normalise(images, kind: str, *, fp16: bool = False):
    """The operator section's graph after its source of (S, S, 3) uint8 images: normalised as in
    training, alone (``"none"``), after one batch copy (``"copy"``), after a Python operator that
    returns its input (``"pycopy"``), or after CutMix with backend ``kind``. Shared with
    :mod:`dali_cutmix_bench.instructions`."""
    from nvidia.dali import fn

    from dali_cutmix.ops import Normalize, cutmix
    from pipelines.graphs import MEAN, STD

    norm = Normalize(mean=MEAN, std=STD, mirror=fn.random.coin_flip(), fp16=fp16)
    if kind == "none":
        return norm.apply(images)
    if kind == "copy":  # the floor of any mix done in a pass of its own: one copy of the batch
        return norm.apply(fn.copy(images))
    if kind == "pycopy":  # the floor of the python backend's design: its pixel operator doing nothing
        return norm.apply(
            fn.dl_tensor_python_function(
                images, function=_same_samples, batch_processing=True, synchronize_stream=False,
                device=images.device, output_layouts="HWC",
            )
        )  # fmt: skip
    labels = fn.random.uniform(range=[0, 10], shape=[1])
    return cutmix(images, labels, backend=kind, normalize=norm)[0]


def _same_samples(samples):
    """A ``fn.dl_tensor_python_function`` callback that returns its samples as they are (through
    torch, as the python backend's callback takes and gives them); DALI copies them out."""
    import torch
    from torch.utils.dlpack import to_dlpack

    return [to_dlpack(torch.from_dlpack(t)) for t in samples]


def cutmix_op_rows(args) -> list[Row]:
    """The CutMix operator alone: (S, S, 3) uint8 images read from .npy files (no decoding, and no
    Python feeding the pipeline: a Python source would add GIL hand-offs to every row), normalised
    as in training (flip, mean/std, HWC -> CHW), with and without CutMix in front."""
    import tempfile

    from nvidia.dali import fn, pipeline_def

    rng = np.random.default_rng(0)
    S, B = args.image_size, args.batch_size
    folder = tempfile.TemporaryDirectory(prefix="dali-cutmix-bench-")
    for i in range(2 * B):
        np.save(os.path.join(folder.name, f"{i:05d}.npy"), rng.integers(0, 256, (S, S, 3), dtype=np.uint8))

    @pipeline_def(enable_conditionals=False)
    def graph(kind):
        images = fn.reshape(fn.readers.numpy(file_root=folder.name, file_filter="*.npy"), layout="HWC")
        if args.device == "gpu":
            images = images.gpu()
        return mix_and_normalise(images, kind, fp16=args.device == "gpu")

    names = {
        "none": "normalise, no CutMix",
        "copy": "one batch copy + normalise",
        "pycopy": "Python operator returning its input + normalise",
        "python": "python backend + normalise",
        "native": "native backend + normalise",
        "ops": "ops backend + normalise",
    }
    names = {kind: name for kind, name in names.items() if (kind, args.device) not in REFUSED}
    pipes = {}
    for kind, name in names.items():
        pipes[name] = graph(kind, batch_size=B, num_threads=args.workers, device_id=_device_id(args), seed=0)
        pipes[name].build()
    cpu: dict[str, list[float]] = {}
    rates = interleaved(
        {name: iter(pipe.run, None) for name, pipe in pipes.items()},
        B,
        warmup=args.warmup,
        steps=args.steps * 20,
        reps=args.reps,
        sync=_sync(args),
        settle=SETTLE,
        cpu=cpu,
    )
    base = "normalise, no CutMix"
    rows = [
        Row("cutmix op", name, rates[name], baseline=base, note=operator_count(pipes[name]), cpu_ms=cpu[name])
        for name in names.values()
    ]
    del pipes  # stops the readers before their files go
    folder.cleanup()
    return rows


def isa_op_rows(args) -> list[Row]:
    """The native operator alone on the training pipelines' path (resize crops of many shapes to
    S x S, CutMix, flip, normalise to CHW float), once per compiled copy this CPU runs, measured in
    turn in one process: what the copies change, without the decoder's time around it. Crops are
    read from .npy files (no Python feeding the pipeline)."""
    import tempfile

    from nvidia.dali import fn, pipeline_def, types

    from dali_cutmix import plugin
    from pipelines.graphs import MEAN, STD

    plugin.load()
    rng = np.random.default_rng(0)
    S, B = args.image_size, args.batch_size
    folder = tempfile.TemporaryDirectory(prefix="dali-cutmix-bench-")
    for i in range(2 * B):  # the decoder's random crops: sides from S/2 to 2S, uint8 HWC
        h, w = (int(v) for v in rng.integers(S // 2, 2 * S, 2))
        np.save(os.path.join(folder.name, f"{i:05d}.npy"), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))

    @pipeline_def(enable_conditionals=False)
    def graph(isa):
        images = fn.reshape(fn.readers.numpy(file_root=folder.name, file_filter="*.npy"), layout="HWC")
        labels = fn.random.uniform(range=[0, 1000], dtype=types.INT32)
        entropy = fn.random.uniform(range=[0.0, 1.0], shape=[2])
        norm = dict(mean=MEAN, std=STD, mirror=fn.random.coin_flip(), output_layout="CHW", dtype=types.FLOAT)
        return fn.dali_cutmix.mix(images, labels, entropy, size=[S, S], isa=isa, **norm)[0]

    pipes = {}
    for name, settings in ISA_PIPELINES.items():
        if settings["isa"] in cpu_isas():
            pipe = graph(settings["isa"], batch_size=B, num_threads=args.workers, device_id=None, seed=0)
            pipes[name.replace("native CutMix", "operator alone")] = pipe
    for pipe in pipes.values():
        pipe.build()
    cpu: dict[str, list[float]] = {}
    rates = interleaved({name: iter(pipe.run, None) for name, pipe in pipes.items()}, B, warmup=args.warmup,
                        steps=args.steps * 5, reps=args.reps, settle=SETTLE, cpu=cpu)  # fmt: skip
    base = "operator alone, portable copy"
    rows = [Row("isa op", name, rates[name], baseline=base, cpu_ms=cpu[name]) for name in pipes]
    del pipes  # stops the readers before their files go
    folder.cleanup()
    return rows


def stage_rows(args, train_split) -> list[Row]:
    """The training pipeline cut after each stage; differences give each stage's cost."""
    from nvidia.dali import fn, pipeline_def

    from dali_cutmix.ops import Normalize, cutmix, resize_images
    from pipelines.graphs import MEAN, READER_NAME, STD, decode_random_crop

    @pipeline_def(enable_conditionals=False)
    def graph(stop):
        jpegs, labels = train_split.read(shard_id=0, num_shards=1, shuffle=True, seed=0, name=READER_NAME)
        if stop == "read":
            return jpegs, labels
        crops = decode_random_crop(jpegs, device=args.device)
        if stop == "decode":
            return crops, labels
        size = (args.image_size, args.image_size)
        images = resize_images(crops, size)
        if stop == "resize":
            return images, labels
        norm = Normalize(mean=MEAN, std=STD, mirror=fn.random.coin_flip(), fp16=args.device == "gpu")
        if stop == "normalise":
            return norm.apply(images), labels
        # The training pipeline's own graph: the crops go to cutmix, which resizes them (the native
        # backend in its one pass, with the mix and the normalisation).
        images, labels, *_ = cutmix(crops, labels, backend=args.backend, normalize=norm, resize=size)
        return images, labels

    stages = {
        "read": "read files",
        "decode": "+ decode the random crop",
        "resize": "+ resize (fn.resize)",
        "normalise": "+ normalise (full pipeline, no CutMix)",
        "cutmix": f"+ CutMix ({args.backend}; full pipeline, its own resize)",
    }
    pipes = {}
    for stop, name in stages.items():
        pipes[name] = graph(stop, batch_size=args.batch_size, num_threads=args.workers, device_id=_device_id(args))
        pipes[name].build()
    rates = interleaved(
        {name: iter(pipe.run, None) for name, pipe in pipes.items()},
        args.batch_size,
        warmup=args.warmup,
        steps=args.steps,
        reps=args.reps,
        settle=SETTLE,
    )
    return [
        Row("stages", name, rates[name], baseline="read files", note=operator_count(pipes[name]))
        for name in stages.values()
    ]


def make_loader(args, train_split, **overrides):
    """The training loader as train.py builds it (float16 output on the GPU)."""
    from pipelines.loaders import train_loader

    uint8 = overrides.get("uint8", False)
    settings = dict(batch_size=args.batch_size, image_size=args.image_size, device=args.device,
                    num_threads=args.workers, fp16=args.device == "gpu" and not uint8,
                    backend=args.backend)  # fmt: skip
    loader = train_loader(train_split, **{**settings, **overrides})
    if uint8:
        loader.normalize = None  # a GPU trainer normalises on its device: the rows are the pipeline's cost alone
    return loader


PIPELINES = {
    "DALI, no CutMix": {"recipe": None},
    "DALI + CutMix (python)": {"backend": "python"},
    "DALI + CutMix (native)": {"backend": "native"},
    "DALI + CutMix (ops)": {"backend": "ops"},
    # ResizeMix: the whole partner resampled into the box (one more gather a batch).
    "DALI + ResizeMix (python)": {"backend": "python", "recipe": MixConfig(paste="resize")},
    # SaliencyMix: a saliency map of every image a batch places the boxes.
    "DALI + SaliencyMix (python)": {"backend": "python", "recipe": MixConfig(centre="saliency")},
    # The same recipes in the native operator: the box resamples the partner's resized image in the
    # fused pass; the peaks take one more pass over every image (resampled again).
    "DALI + ResizeMix (native)": {"backend": "native", "recipe": MixConfig(paste="resize")},
    "DALI + SaliencyMix (native)": {"backend": "native", "recipe": MixConfig(centre="saliency")},
    # The native operator with nothing mixed: its normalisation against crop_mirror_normalize's.
    "DALI + native operator, prob 0": {"backend": "native", "recipe": MixConfig(prob=0.0)},
    # What a CPU pipeline ships to a GPU trainer: uint8, flipped, not normalised (HWC).
    "DALI, no CutMix, uint8 out": {"recipe": None, "uint8": True},
    "DALI + CutMix (native), uint8 out": {"backend": "native", "uint8": True},
}
# The native operator's compiled copies of its pixel work (section "isa"): the same pipeline, each
# copy forced by DALI_CUTMIX_ISA; a CPU runs those it has (x86-64 builds with GCC).
ISA_PIPELINES = {
    "native CutMix, portable copy": {"backend": "native", "isa": "portable"},
    "native CutMix, AVX2 copy": {"backend": "native", "isa": "avx2"},
    "native CutMix, AVX-512 copy": {"backend": "native", "isa": "avx512"},
}
PIPELINES |= ISA_PIPELINES
# The row each configuration is compared with (default: no CutMix, float out).
COMPARED = {
    "DALI, no CutMix, uint8 out": "DALI, no CutMix",
    "DALI + CutMix (native), uint8 out": "DALI + CutMix (native)",
    "DALI + ResizeMix (python)": "DALI + CutMix (python)",
    "DALI + SaliencyMix (python)": "DALI + CutMix (python)",
    "DALI + ResizeMix (native)": "DALI + CutMix (native)",
    "DALI + SaliencyMix (native)": "DALI + CutMix (native)",
} | {name: "native CutMix, portable copy" for name in ISA_PIPELINES}


def cpu_isas() -> list[str]:
    """The native operator's copies this CPU runs (portable always)."""
    flags = set(Path("/proc/cpuinfo").read_text().split()) if Path("/proc/cpuinfo").is_file() else set()
    if platform.machine() != "x86_64":
        return ["portable"]
    return ["portable"] + ["avx2"] * ("avx2" in flags) + ["avx512"] * ({"avx512f", "avx512bw", "avx512vl"} <= flags)


def runnable_pipelines(device: str) -> dict[str, dict]:
    """The loader configurations of :data:`PIPELINES` whose backend runs on ``device`` (the
    compiled copies are section "isa"'s)."""
    return {name: s for name, s in PIPELINES.items()
            if (s.get("backend"), device) not in REFUSED and name not in ISA_PIPELINES}  # fmt: skip


def epoch_worker(args, train_split, name: str) -> None:
    """One configuration alone in this process: a warm-up epoch, then ``--epochs`` whole epochs
    back to back; prints images, wall and process CPU seconds as JSON (see :func:`epoch_rows`)."""
    settings = dict(PIPELINES[name])
    if "isa" in settings:  # read by the native backend when it builds the operator
        os.environ["DALI_CUTMIX_ISA"] = settings.pop("isa")
    loader = make_loader(args, train_split, **settings)
    for _ in loader:
        pass
    images, start, start_cpu = 0, time.perf_counter(), time.process_time()
    for _ in range(args.epochs):
        for batch in loader:
            images += len(batch[0])
    _sync(args)()
    wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    print(json.dumps({"images": images, "wall": wall, "cpu": cpu}))


def epoch_run(args, data: str, name: str) -> dict:
    """:func:`epoch_worker` for configuration ``name`` on ``data`` (an ImageNet-layout root or
    training shards) in a fresh process: ``{"images", "wall", "cpu"}``."""
    import subprocess
    import sys

    flags = ["--data", str(data), "--batch-size", str(args.batch_size), "--image-size", str(args.image_size),
             "--workers", str(args.workers), "--device", args.device, "--epochs", str(args.epochs)]  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "dali_cutmix_bench.bench", *flags, "--epoch-worker", name],
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"epoch worker {name!r} failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def epoch_rows(args, train_split, group: str = "epochs") -> list[Row]:
    """What a trainer sees, and the primary measurement: each configuration's loader iterated for
    whole epochs back to back, nothing in between, in a process of its own (so no other pipeline
    prefetches on its time or its CPU clock); configurations in turn, ``--reps`` rounds. Rows give
    images/s and process CPU time per batch (all threads). ``group`` "isa": the native operator's
    compiled copies that this CPU runs, side by side in the same way."""
    if group == "isa":
        names = [n for n, s in ISA_PIPELINES.items() if s["isa"] in cpu_isas()]
    else:
        names = [n for n in runnable_pipelines(args.device) if not args.configs or n in args.configs]
    rates: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for rep in range(args.reps):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            got = epoch_run(args, args.data, name)
            rates[name].append(got["images"] / got["wall"])
            cpu[name].append(1000 * got["cpu"] / got["images"] * args.batch_size)
    return [Row(group, n, rates[n], baseline=COMPARED.get(n, "DALI, no CutMix"), cpu_ms=cpu[n]) for n in names]


def pipeline_rows(args, train_split) -> list[Row]:
    """The training loader in each configuration, measured in turn (see :func:`interleaved`)."""
    runs = runnable_pipelines(args.device)
    loaders = {name: make_loader(args, train_split, **settings) for name, settings in runs.items()}
    cpu: dict[str, list[float]] = {}
    rates = interleaved(
        {name: endless(loader) for name, loader in loaders.items()},
        args.batch_size,
        warmup=args.warmup,
        steps=args.steps,
        reps=args.reps,
        sync=_sync(args),
        settle=SETTLE,
        cpu=cpu,
    )
    for loader in loaders.values():
        loader.close()
    return [
        Row("pipeline", name, rates[name], baseline=COMPARED.get(name, "DALI, no CutMix"), cpu_ms=cpu[name])
        for name in runs
    ]


# --- the trainer ----------------------------------------------------------------------------------


def make_trainer(args, num_classes: int):
    """Model (train.py's own builder), optimizer and a step function on the chosen device."""
    from dali_cutmix_trainer.engine import train_step
    from dali_cutmix_trainer.model import build_model

    device = torch.device("cuda") if args.device == "gpu" else torch.device("cpu")
    model = build_model(args.arch, num_classes, device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" else None
    model.train()
    return lambda batch: train_step(model, optimizer, scaler, batch)


def trainer_rows(args, num_classes: int, step) -> list[Row]:
    device = torch.device("cuda") if args.device == "gpu" else torch.device("cpu")
    B, S = args.batch_size, args.image_size
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    batch = (
        torch.randn(B, 3, S, S, device=device, dtype=dtype),
        torch.randint(0, num_classes, (B,), device=device),
        torch.randint(0, num_classes, (B,), device=device),
        torch.rand(B, device=device),
    )
    steps = (step(batch) for _ in itertools.count())
    rates = throughput(steps, B, warmup=args.warmup, steps=args.trainer_steps, reps=args.reps, sync=_sync(args))
    return [Row("trainer", f"{args.arch} step, synthetic data", rates)]


def end_to_end_rows(args, train_split, step) -> list[Row]:
    loader = make_loader(args, train_split)
    steps = (step(batch) for batch in endless(loader))
    rates = throughput(
        steps, args.batch_size, warmup=args.warmup, steps=args.trainer_steps, reps=args.reps, sync=_sync(args)
    )
    return [Row("end to end", f"DALI + CutMix ({args.backend}) -> step", rates)]


# --- the peers ----------------------------------------------------------------------------------


def peer_rows(args, train_root: Path, num_classes: int) -> list[Row]:
    """torchvision and timm loaders with CutMix on the same files, batch and worker count."""
    from torch.utils.data import DataLoader, default_collate
    from torchvision import datasets
    from torchvision.transforms import v2

    S, B = args.image_size, args.batch_size
    tv_transform = v2.Compose(
        [
            v2.RandomResizedCrop(S, antialias=True),
            v2.RandomHorizontalFlip(),
            v2.PILToTensor(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    tv_cutmix = v2.CutMix(alpha=1.0, num_classes=num_classes)
    rows = []

    def collate(samples):
        return tv_cutmix(*default_collate(samples))

    dataset = datasets.ImageFolder(str(train_root), transform=tv_transform)
    loader = DataLoader(
        dataset,
        batch_size=B,
        shuffle=True,
        num_workers=args.workers,
        collate_fn=collate,
        drop_last=True,
        persistent_workers=True,
    )
    rates = throughput(endless(loader), B, warmup=args.warmup, steps=args.steps, reps=args.reps)
    rows.append(Row("peers", "torchvision DataLoader + v2.CutMix", rates))
    del loader

    try:
        from timm.data import Mixup, create_transform
    except ImportError:
        return rows
    timm_transform = create_transform(S, is_training=True, hflip=0.5, color_jitter=None, auto_augment=None)
    mixup = Mixup(
        mixup_alpha=0.0, cutmix_alpha=1.0, prob=1.0, mode="batch", label_smoothing=0.0, num_classes=num_classes
    )
    dataset = datasets.ImageFolder(str(train_root), transform=timm_transform)
    loader = DataLoader(
        dataset, batch_size=B, shuffle=True, num_workers=args.workers, drop_last=True, persistent_workers=True
    )
    mixed = (mixup(x, y) for x, y in endless(loader))  # timm's train.py mixes after the loader
    rates = throughput(mixed, B, warmup=args.warmup, steps=args.steps, reps=args.reps)
    rows.append(Row("peers", "timm transforms + DataLoader + Mixup(cutmix)", rates))
    return rows


# --- report -------------------------------------------------------------------------------------


def table(rows: list[Row]) -> str:
    by_name = {(r.group, r.name): r for r in rows}
    head = f"{'group':<11} {'what':<46} {'img/s':>9} {'spread':>7} {'ratio':>7} {'cpu ms':>7}  {'note':<13}  baseline"
    lines = [head]
    for r in rows:
        base = by_name.get((r.group, r.baseline))
        ratio = f"{r.median / base.median:.3f}" if base else ""
        cpu = f"{statistics.median(r.cpu_ms):.1f}" if r.cpu_ms else ""
        lines.append(
            f"{r.group:<11} {r.name:<46} {r.median:>9.1f} {100 * r.spread:>6.1f}% {ratio:>7} {cpu:>7}  {r.note:<13}  "
            f"{r.baseline if base and base is not r else ''}"
        )
    return "\n".join(lines)


def findings(rows: list[Row], args) -> list[str]:
    """What the rows say, one measured figure a line, each keyed by the rows it compares
    (``group/name``); the targets they are held to are written in docs/BENCHMARKS.md."""
    by = {(r.group, r.name): r for r in rows}
    out = []

    def per_batch_ms(rate: float) -> float:
        return 1000 * args.batch_size / rate

    alone = by.get(("cutmix op", "normalise, no CutMix"))
    if alone:
        for (group, name), row in by.items():
            if group == "cutmix op" and row is not alone:
                cost = per_batch_ms(row.median) - per_batch_ms(alone.median)
                cpu = statistics.median(row.cpu_ms) - statistics.median(alone.cpu_ms)
                out.append(
                    f"cutmix op/{name}: {cost:+.2f} ms per batch of {args.batch_size} ({cpu:+.2f} ms of CPU time) "
                    "over normalising alone"
                )
    for row in (r for r in rows if r.group == "isa op" and r.name != r.baseline):
        base = by[("isa op", row.baseline)]
        if min(len(row.cpu_ms), len(base.cpu_ms)) >= 2:
            extra, low, high = cpu_cost(row.cpu_ms, base.cpu_ms)
            out.append(f"isa op/{row.name}: {extra:+.1f}% CPU time per batch ({low:+.1f}..{high:+.1f}) against "
                       f"isa op/{row.baseline}, {len(row.cpu_ms)} paired repetitions")  # fmt: skip
    for group in ("epochs", "isa", "pipeline"):
        for name in PIPELINES:
            row = by.get((group, name))
            base = by.get((group, COMPARED.get(name, "DALI, no CutMix")))
            if base is None or row is None or row is base:
                continue
            if min(len(row.images_per_s), len(base.images_per_s)) < 2:  # one repetition: no paired finding
                out.append(f"{group}/{name}: timings only (one repetition; --reps 2 or more compares)")
                continue
            cost, low, high = paired_cost(row.images_per_s, base.images_per_s)
            line = f"{group}/{name}: costs {cost:+.1f}% of throughput ({low:+.1f}..{high:+.1f})"
            if row.cpu_ms and base.cpu_ms:
                extra, clow, chigh = cpu_cost(row.cpu_ms, base.cpu_ms)
                per_image = statistics.median(row.cpu_ms) / args.batch_size
                line += f" and {extra:+.1f}% CPU time per image ({clow:+.1f}..{chigh:+.1f}; {per_image:.2f} ms)"
            out.append(line + f" against {group}/{base.name}, {len(row.images_per_s)} paired repetitions")
    out += ffcv_peers.ffcv_findings(by)
    tv = by.get(("peers", "torchvision DataLoader + v2.CutMix"))
    ours = by.get(("pipeline", f"DALI + CutMix ({args.backend})"))
    if tv and ours:
        out.append(f"peers: pipeline/DALI + CutMix ({args.backend}) is {ours.median / tv.median:.2f}x {tv.name}")
    trainer = by.get(("trainer", f"{args.arch} step, synthetic data"))
    e2e = by.get(("end to end", f"DALI + CutMix ({args.backend}) -> step"))
    if trainer and ours:
        pipe, step = ours.median, trainer.median
        bound = "data-bound" if pipe < step else "compute-bound"
        out.append(f"verdict: {bound}: the pipeline gives {pipe:.0f} img/s, the trainer takes {step:.0f} img/s")
        if e2e:
            slower = min(pipe, step)
            out.append(
                f"end to end: {e2e.median:.1f} img/s, {100 * (1 - e2e.median / slower):.1f}% below the slower part"
            )
    return out


def plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r.group}: {r.name}" for r in rows]
    medians = [r.median for r in rows]
    low = [r.median - min(r.images_per_s) for r in rows]
    high = [max(r.images_per_s) - r.median for r in rows]
    groups = sorted({r.group for r in rows}, key=[r.group for r in rows].index)
    colors = [f"C{groups.index(r.group)}" for r in rows]
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(rows) + 1.2))
    ax.barh(range(len(rows)), medians, xerr=[low, high], color=colors)
    ax.set_yticks(range(len(rows)), labels)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("images / s (median, bars: min-max over repetitions; log scale)")
    for i, m in enumerate(medians):
        ax.text(m, i, f" {m:.0f}", va="center")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _device_id(args) -> int | None:
    return 0 if args.device == "gpu" else None


def _sync(args) -> Callable[[], None]:
    return torch.cuda.synchronize if args.device == "gpu" else (lambda: None)


SECTIONS = ("epochs", "isa", "op", "stages", "pipeline", "trainer", "e2e", "peers", "ffcv")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="ImageNet-layout root (see python -m dali_cutmix_bench.benchdata)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--workers", type=int, default=process_threads(),
                   help="DALI threads = DataLoader workers (default: the cores per local rank)")  # fmt: skip
    p.add_argument("--device", choices=("cpu", "gpu"), default="gpu" if torch.cuda.is_available() else "cpu")
    p.add_argument("--arch", default=None, help="trainer model (default: resnet50 on GPU, resnet18 on CPU)")
    p.add_argument(
        "--backend", choices=tuple(BACKENDS), help="CutMix backend of 'stages' and 'end to end' (default: by device)"
    )
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--steps", type=int, default=10, help="batches per repetition (pipelines and peers)")
    p.add_argument("--trainer-steps", type=int, default=3, help="batches per repetition (trainer, end to end)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--epochs", type=int, default=2, help="whole epochs per repetition (section 'epochs')")
    p.add_argument("--configs", type=lambda v: v.split(";"), default=None, metavar="NAME;NAME",
                   help="section epochs: only these configurations (names as in the table)")  # fmt: skip
    p.add_argument("--epoch-worker", choices=tuple(PIPELINES), help=argparse.SUPPRESS)  # one epochs-section turn
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--output", default="runs/bench")
    args = p.parse_args(argv)
    args.arch = args.arch or ("resnet50" if args.device == "gpu" else "resnet18")
    args.backend = args.backend or DEFAULT_BACKEND[args.device]
    if (args.backend, args.device) in REFUSED:
        p.error(f"--backend {args.backend}: {REFUSED[(args.backend, args.device)]}")
    for name in args.configs or ():
        if name not in PIPELINES:
            p.error(f"--configs: unknown configuration {name!r}, expected some of {';'.join(PIPELINES)}")
    args.sections = args.sections.split(",")
    for s in args.sections:
        if s not in SECTIONS:
            p.error(f"--sections: unknown section {s!r}, expected some of {','.join(SECTIONS)}")
    for flag in ("batch_size", "reps", "steps", "trainer_steps", "workers"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.device == "gpu" and not torch.cuda.is_available():
        p.error("--device gpu: CUDA is not available on this machine")
    if not Path(args.data).is_dir():
        p.error(f"--data {args.data!r} is not a directory")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    # Training shards (dali_cutmix_bench.shards_vs_files) stand in for the root's train/ folder.
    train_split = load_source(args.data) if is_shards(args.data) else load_imagenet(args.data)[0]
    num_classes = len(train_split.classes)
    rows: list[Row] = []
    steps = {
        "epochs": lambda: epoch_rows(args, train_split),
        "isa": lambda: epoch_rows(args, train_split, "isa") + isa_op_rows(args) if args.device == "cpu" else [],
        "op": lambda: cutmix_op_rows(args),
        "stages": lambda: stage_rows(args, train_split),
        "pipeline": lambda: pipeline_rows(args, train_split),
        "peers": lambda: peer_rows(args, Path(args.data) / "train", num_classes),
        "ffcv": lambda: ffcv_peers.ffcv_rows(args, Path(args.data), num_classes, Row, epoch_run),
    }
    if args.epoch_worker:
        epoch_worker(args, train_split, args.epoch_worker)
        return
    for section in ("epochs", "isa", "op", "stages", "pipeline", "peers", "ffcv"):
        if section in args.sections:
            print(f"measuring {section} ...", flush=True)
            rows += steps[section]()
    if {"trainer", "e2e"} & set(args.sections):
        step = make_trainer(args, num_classes)
        if "trainer" in args.sections:
            print("measuring trainer ...", flush=True)
            rows += trainer_rows(args, num_classes, step)
        if "e2e" in args.sections:
            print("measuring end to end ...", flush=True)
            rows += end_to_end_rows(args, train_split, step)
    print(table(rows))
    notes = findings(rows, args)
    print("\n".join(notes))
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items()}
    machine = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name() if args.device == "gpu" else None,
    }
    report = {
        "settings": settings,
        "machine": machine,
        "findings": notes,
        "rows": [asdict(r) | {"median": r.median, "spread": r.spread} for r in rows],
    }
    (out / "bench.json").write_text(json.dumps(report, indent=2))
    if not rows:
        print(f"wrote {out / 'bench.json'} (nothing measured)")
        return
    plot(rows, out / "bench.png")
    print(f"wrote {out / 'bench.json'} and {out / 'bench.png'}")


if __name__ == "__main__":
    main()
