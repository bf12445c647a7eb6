"""DALI helpers for the tests and the GPU check (``scripts/gpu_check.py``): the mixing operator run
over in-memory batches, and parameters packed as the python backend's sampler packs them."""

from __future__ import annotations

import itertools

import numpy as np
from nvidia.dali import fn, pipeline_def, types

from dali_cutmix.backends.graph import Params
from dali_cutmix.ops import cutmix, replay_params


def mix_arrays(batches, *, device: str = "cpu", seed: int = 0, layout: str = "HWC", num_threads: int = 1, **kwargs):
    """Run :func:`cutmix` with ``return_params=True`` over in-memory batches (lists of NumPy
    arrays, one list a batch), the labels being each sample's index; yield NumPy
    ``(images, mixed, labels_a, labels_b, lam, perm, boxes[, blend])`` per batch. A NumPy ``prob``
    goes in as ``sample_prob``. For checking the operator outside a training pipeline
    (the tests and ``scripts/gpu_check.py``)."""
    batch_size = len(batches[0])
    feed = itertools.cycle(batches)
    labels = [np.array([i], dtype=np.int32) for i in range(batch_size)]
    prob = kwargs.get("prob")
    per_sample = None
    if isinstance(prob, np.ndarray):
        per_sample = [np.asarray(p, np.float32) for p in kwargs.pop("prob")]

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=0 if device == "gpu" else None, seed=seed)
    def pipe():
        images = fn.external_source(source=lambda: next(feed), layout=layout, device=device)
        node = None if per_sample is None else fn.external_source(source=lambda: per_sample, dtype=types.FLOAT)
        mixed = cutmix(images, fn.external_source(source=lambda: labels), sample_prob=node, layout=layout,
                       return_params=True, **kwargs)  # fmt: skip
        return (images, *mixed, *replay_params(mixed.params))

    p = pipe(prefetch_queue_depth=1)
    p.build()
    for _ in batches:
        yield tuple((o.as_cpu() if hasattr(o, "as_cpu") else o).as_array() for o in p.run())


def packed_node(params: Params):
    """The :data:`~dali_cutmix.backends.torch_mix.PACKED` row of each sample from the parameters'
    parts, by DALI's own operators (for parameters another backend drew)."""

    def column(x, n: int):
        return fn.reshape(fn.cast(x, dtype=types.FLOAT), shape=[n])

    blend = params.blend if params.blend is not None else params.lam * 0
    return fn.cat(column(params.perm, 1), column(params.boxes, 4), column(params.lam, 1), column(blend, 1), axis=0)
