"""Backend ``python`` (CPU and GPU): the reference sampler in one Python operator, the pixels by
one torch callback that is the same code on both devices.

The parameters come from :func:`dali_cutmix.mix.sample_mix` (NumPy) in one CPU
``fn.python_function``; the pixels from :class:`TorchMix` in ``fn.dl_tensor_python_function``:
:func:`dali_cutmix.mix.mix_images` on CPU tensors (what CI runs) or on CUDA tensors on DALI's
stream (what a GPU runs). GPU code that is the CPU code with another device: right by construction.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import nvidia.dali.fn as fn
from nvidia.dali.data_node import DataNode

from ..mix import MixConfig, mix_images, sample_mix
from .graph import Normalize, Params, check_shapes

FUSES_NORMALIZE = False


def build(images, labels, config: MixConfig, *, prob, layout: str, normalize: Normalize | None):
    """``images, labels -> images, labels_b, Params`` (``normalize`` is applied by the caller)."""
    params = python_params(images, config, layout=layout, prob=prob)
    return torch_mix(images, params, layout=layout), fn.permute_batch(labels, indices=params.perm), params


def python_params(images, config: MixConfig, *, layout: str, prob: DataNode | None = None) -> Params:
    """The parameters drawn by :func:`dali_cutmix.mix.sample_mix` in one CPU Python operator.

    Its generator is seeded per batch by one DALI draw, so the pipeline's seed governs it and
    DALI's checkpoints capture it (the operator itself is stateless). The image size comes from
    ``DataNode.shape()``: metadata, also for GPU images (DALI's documented way; a GPU -> CPU
    transition the default executor allows).
    """
    entropy = fn.random.uniform(range=[0.0, 1.0], shape=[2])
    inputs = [entropy, images.shape(device="cpu")] + ([prob] if prob is not None else [])
    perm, boxes, lam, blend = fn.python_function(
        *inputs, function=_Sample(config, layout), batch_processing=True, num_outputs=4
    )
    return Params(perm, boxes, lam, blend if config.mixup else None)


class _Sample:
    """Batch callback: ``entropy, shapes[, prob] -> perm, boxes, lam, blend`` (one array per sample)."""

    def __init__(self, config: MixConfig, layout: str):
        self.config, self.layout = config, layout

    def __call__(self, entropy, shapes, prob=None):
        rng = np.random.default_rng(np.asarray(entropy[0], np.float32).view(np.uint32))
        hw = check_shapes(shapes, self.layout)
        p = sample_mix(
            len(shapes),
            *hw,
            self.config,
            rng,
            prob=None if prob is None else np.concatenate([np.asarray(v, np.float32).reshape(-1) for v in prob]),
        )
        blend = np.zeros(len(shapes), np.float32) if p.blend is None else p.blend.astype(np.float32)
        return (
            [np.asarray(v, np.int32) for v in p.perm],  # 0-d arrays: DALI takes arrays, not scalars
            list(p.boxes),
            [np.asarray(v, np.float32) for v in p.lam],
            [np.asarray(v, np.float32) for v in blend],
        )


def torch_mix(images, params: Params, *, layout: str):
    """The pixels of given parameters: one ``fn.dl_tensor_python_function`` running
    :class:`TorchMix` on the images' device (CPU tensors in CI, CUDA tensors on a GPU)."""
    gpu = images.device == "gpu"
    tensors = [params.perm, params.boxes] + ([params.lam, params.blend] if params.blend is not None else [])
    return fn.dl_tensor_python_function(
        images,
        *(t.gpu() if gpu else t for t in tensors),
        function=TorchMix(layout),
        batch_processing=True,
        synchronize_stream=False,  # the callback queues its kernels on DALI's stream itself
        device=images.device,
        output_layouts=layout,
    )


class TorchMix:
    """Batch callback of ``fn.dl_tensor_python_function``: DLPack samples in, mixed samples out.

    The same code on both devices: :func:`dali_cutmix.mix.mix_images` in torch (a gather of the
    partners, a paste through row and column masks; MixUp blended in float32 and rounded half away
    from zero explicitly), which never reads a value back to the host. On CUDA tensors it runs on
    DALI's own stream, so nothing blocks on the device. On CPU tensors only the housekeeping
    differs: torch on DALI's thread alone, and batch buffers kept between calls (see
    docs/BENCHMARKS.md, "Where the python backend's cost goes").
    """

    def __init__(self, layout: str):
        self.layout = layout
        self.buffers = {}

    def reused(self, name: str, shape: tuple, like):
        """On a CPU, a batch-sized buffer kept from call to call (DALI copies the returned samples
        before the call ends): a fresh one costs more in page faults than a pass over it. On a GPU
        None: torch's caching allocator reuses memory itself, in order on DALI's stream."""
        import torch

        if like.is_cuda:
            return None
        buf = self.buffers.get(name)
        if buf is None or buf.shape != shape or buf.dtype != like.dtype:
            buf = self.buffers[name] = torch.empty(shape, dtype=like.dtype)
        return buf

    def __call__(self, images, perm, boxes, lam=None, blend=None):
        import torch
        from torch.utils.dlpack import to_dlpack

        samples = [torch.from_dlpack(t) for t in images]
        if samples[0].is_cuda:
            from nvidia.dali.python_function_plugin import current_dali_stream

            stream = torch.cuda.stream(torch.cuda.ExternalStream(current_dali_stream(), device=samples[0].device))
        else:
            stream = _one_torch_thread(torch)

        def batch(capsules):
            return torch.stack([torch.from_dlpack(t) for t in capsules])

        with stream:
            # (B, H, W, C) or (B, C, H, W): one copy, DALI's samples stay untouched; stacked as flat
            # rows (a memcpy each; stacking (H, W, 3) uint8 samples runs an element-wise kernel).
            flat = [s.reshape(-1) for s in samples]
            x = torch.stack(flat, out=self.reused("images", (len(flat), flat[0].numel()), flat[0]))
            x = x.view(len(samples), *samples[0].shape)
            params = [batch(perm).long().reshape(-1), batch(boxes).reshape(-1, 4).long()]
            if blend is not None:
                params += [batch(lam).reshape(-1), batch(blend).reshape(-1) > 0]
            else:
                params += [None, None]
            out = mix_images(x, *params, self.layout, out=self.reused("partners", x.shape, x))
            return [to_dlpack(o) for o in out]


@contextmanager
def _one_torch_thread(torch):
    """torch's CPU ops on this (DALI's) thread alone while the callback runs.

    DALI's own threads already fill the cores; torch's OpenMP team on top of them oversubscribes
    them and spins between ops (measured: about 7 ms of CPU time per batch of 64 at 224 px).
    ``torch.set_num_threads`` sets the calling thread's OpenMP team size (the trainer's thread
    keeps its own) and the default for threads started meanwhile, so the old value comes back after.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
