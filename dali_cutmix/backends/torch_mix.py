"""The python backend's pixels: one torch callback for ``fn.dl_tensor_python_function``, the same
code on CPU tensors (what CI runs) and on CUDA tensors on DALI's stream (what a GPU runs): GPU code
that is the CPU code with another device. torch only, so the GPU check runs it without DALI.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

from ..mix import mix_images, spatial_size


class TorchMix:
    """Batch callback of ``fn.dl_tensor_python_function``: DLPack samples in, mixed samples out.

    The same code on both devices: :func:`dali_cutmix.mix.mix_images` in torch (a gather of the
    partners, a paste through row and column masks; MixUp blended in float32 and rounded half away
    from zero explicitly), which never reads a value back to the host. On CUDA tensors it runs on
    DALI's own stream, so nothing blocks on the device. On CPU tensors only the housekeeping
    differs: torch on DALI's thread alone, and batch buffers kept between calls (see
    docs/BENCHMARKS.md, "Where the python backend's cost goes").
    """

    def __init__(self, layout: str, size: tuple[int, int] | None = None, dali_stream: Callable[[], int] | None = None):
        self.layout, self.size = layout, size  # size: the (H, W) the parameters were drawn for
        self.dali_stream = dali_stream  # the raw CUDA stream the callback runs on; None: DALI's own
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
        if self.size is not None:
            check_size(samples, self.size, self.layout)
        if samples[0].is_cuda:
            if self.dali_stream is None:
                from nvidia.dali.python_function_plugin import current_dali_stream as dali_stream
            else:
                dali_stream = self.dali_stream
            stream = torch.cuda.stream(torch.cuda.ExternalStream(dali_stream(), device=samples[0].device))
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
    them and spins between ops (docs/BENCHMARKS.md has the cost).
    ``torch.set_num_threads`` sets the calling thread's OpenMP team size (the trainer's thread
    keeps its own) and the default for threads started meanwhile, so the old value comes back after.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def check_size(samples, size: tuple[int, int], layout: str) -> None:
    """``ValueError`` unless every sample is ``size`` (H, W) in ``layout``: the size the parameters
    were drawn for (metadata only: nothing is read from the device)."""
    for i, s in enumerate(samples):
        if spatial_size(tuple(s.shape), layout) != tuple(size) or s.shape != samples[0].shape:
            raise ValueError(
                f"cutmix(size={tuple(size)}) got sample {i} of shape {tuple(s.shape)} ({layout}); "
                f"resize or crop to that size first, or leave size out"
            )
