"""The python backend's pixels: one torch callback for ``fn.dl_tensor_python_function``, the same
code on CPU tensors (what CI runs) and on CUDA tensors on DALI's stream (what a GPU runs): GPU code
that is the CPU code with another device. torch only, so the GPU check runs it without DALI.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

import numpy as np

from ..paste import centred_on_peaks, mix_images
from ..sampling import spatial_size

# The columns of one sample's parameters as the sampler hands them to the callback: one float32
# row a sample (exact for integers below 2**24), so a batch is B DLPack objects, not 4B.
PACKED = ("perm", "y1", "x1", "y2", "x2", "lam", "blend")
# SaliencyMix's second output: the boxes and lambda placed from the pixels, a row a sample.
PLACED = ("y1", "x1", "y2", "x2", "lam")


def pack(perm, boxes, lam, blend=None) -> np.ndarray:
    """(B, 7) float32 rows of :data:`PACKED` from (B,) ``perm``, (B, 4) ``boxes``, (B,) ``lam`` and
    (B,) ``blend`` (None: no MixUp, a column of zeros)."""
    B = len(perm)
    rows = np.empty((B, len(PACKED)), np.float32)
    rows[:, 0] = perm
    rows[:, 1:5] = boxes
    rows[:, 5] = lam
    rows[:, 6] = 0 if blend is None else blend
    return rows


def unpack(rows, mixup: bool):
    """``perm`` (B,) int64, ``boxes`` (B, 4) int64, ``lam`` (B,) float32 and ``blend`` (B,) bool
    (None for both without MixUp) from (B, 7) float32 torch ``rows``, on their device."""
    perm, boxes = rows[:, 0].long(), rows[:, 1:5].long()
    return perm, boxes, *((rows[:, 5], rows[:, 6] > 0) if mixup else (None, None))


class TorchMix:
    """Batch callback of ``fn.dl_tensor_python_function``: ``images, packed`` DLPack samples in
    (``packed``: a row of :data:`PACKED` a sample), mixed samples out.

    The same code on both devices: :func:`dali_cutmix.paste.mix_images` in torch (a gather of the
    partners, a paste through row and column masks; MixUp blended in float32 and rounded half away
    from zero explicitly), which never reads a value back to the host. On CUDA tensors it runs on
    DALI's own stream, so nothing blocks on the device. On CPU tensors only the housekeeping
    differs (docs/DESIGN.md, the python backend). It holds the GIL while it runs: 2B DLPack objects
    in and B out a batch.
    """

    def __init__(self, layout: str, size: tuple[int, int] | None = None, dali_stream: Callable[[], int] | None = None,
                 mixup: bool = True, resized: bool = False, salient: bool = False):  # fmt: skip
        self.layout, self.size = layout, size  # size: the (H, W) the parameters were drawn for
        self.dali_stream = dali_stream  # the raw CUDA stream the callback runs on; None: DALI's own
        self.mixup = mixup  # False: the blend column is all zeros, and the blend is skipped
        self.resized = resized  # ResizeMix: the boxes receive the partners' whole images
        self.salient = salient  # SaliencyMix: the boxes are centred here, and returned (PLACED rows)
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

    def __call__(self, images, packed):
        import torch
        from torch.utils.dlpack import to_dlpack

        samples = [torch.from_dlpack(t) for t in images]
        if samples and samples[0].dtype not in (torch.uint8, torch.float16, torch.bfloat16, torch.float32):
            raise ValueError(f"cutmix mixes uint8 or floating-point images, got {samples[0].dtype} (as the native "
                             f"and ops backends do): convert them first")  # fmt: skip
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

        with stream:
            # (B, H, W, C) or (B, C, H, W): one copy, DALI's samples stay untouched; stacked as flat
            # rows (a memcpy each; stacking (H, W, 3) uint8 samples runs an element-wise kernel).
            flat = [s.view(-1) for s in samples]
            x = torch.stack(flat, out=self.reused("images", (len(flat), flat[0].numel()), flat[0]))
            x = x.view(len(samples), *samples[0].shape)
            rows = torch.stack([torch.from_dlpack(t) for t in packed])
            perm, boxes, lam, blend = unpack(rows, self.mixup)
            if self.salient:  # from the batch before mixing, on its device
                boxes, lam = centred_on_peaks(x, perm, boxes, rows[:, 5], blend, self.layout)
            out = mix_images(x, perm, boxes, lam, blend, self.layout, out=self.reused("partners", x.shape, x),
                             resized=self.resized)  # fmt: skip
            mixed = [to_dlpack(o) for o in out]
            if not self.salient:
                return mixed
            placed = torch.cat([boxes.float(), lam[:, None]], 1)
            return mixed, [to_dlpack(row) for row in placed]


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
    first = samples[0].shape
    if spatial_size(tuple(first), layout) == tuple(size) and all(s.shape == first for s in samples):
        return
    for i, s in enumerate(samples):
        if spatial_size(tuple(s.shape), layout) != tuple(size):
            raise ValueError(
                f"cutmix(size={tuple(size)}) got sample {i} of shape {tuple(s.shape)} ({layout}); "
                f"resize or crop to that size first, or leave size out"
            )
    raise ValueError(f"cutmix needs one image shape a batch, got {tuple(first)} and others ({layout})")
