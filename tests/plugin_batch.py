"""One fixed batch through the compiled operator, written to an ``.npz``: the same inputs and draws
whatever compiler built the operator or whichever compiled copy writes the pixels, so that two
runs can be compared byte for byte (``tests/test_plugin.py``).

    python tests/plugin_batch.py OUT.npz [ISA]
"""

from __future__ import annotations

import sys

import numpy as np
from nvidia.dali import fn, pipeline_def, types

from dali_cutmix import plugin

MEAN, STD = [123.7, 116.3, 103.5], [58.4, 57.1, 57.4]
# CutMix and MixUp per sample (both kinds in one batch), the fused resize from crops of many shapes.
RECIPE = dict(alpha=1.0, mixup_alpha=0.4, switch_prob=0.5, mode="elem")
OUTPUTS = ("chw_float", "hwc_uint8", "chw_float_cutmix_only", "boxes", "lam", "mirror")


def batch(isa: str = "auto", batch_size: int = 16) -> dict[str, np.ndarray]:
    plugin.load()
    rng = np.random.default_rng(7)
    crops = [rng.integers(0, 256, (int(rng.integers(20, 90)), int(rng.integers(20, 90)), 3), np.uint8)
             for _ in range(batch_size)]  # fmt: skip
    labels = [np.array([i], np.int32) for i in range(batch_size)]

    @pipeline_def(batch_size=batch_size, num_threads=2, device_id=None, seed=11)
    def pipe():
        images = fn.external_source(source=[crops], cycle=True, layout="HWC")
        label = fn.external_source(source=[labels], cycle=True)
        entropy = fn.random.uniform(range=[0.0, 1.0], shape=[2])
        mirror = fn.random.coin_flip()
        common = dict(size=[48, 56], mirror=mirror, isa=isa)
        mixed = fn.dali_cutmix.mix(images, label, entropy, **common, **RECIPE, mean=MEAN, std=STD,
                                   output_layout="CHW", dtype=types.FLOAT)  # fmt: skip
        uint8 = fn.dali_cutmix.mix(images, label, entropy, **common, **RECIPE)
        cut = fn.dali_cutmix.mix(images, label, entropy, **common, mean=MEAN, std=STD, output_layout="CHW",
                                 dtype=types.FLOAT, mode="elem", prob=0.7)  # fmt: skip
        return mixed[0], uint8[0], cut[0], mixed[4], mixed[2], mirror

    p = pipe(prefetch_queue_depth=1)
    p.build()
    arrays = [np.concatenate([o.as_array() for o in outs]) for outs in zip(p.run(), p.run())]  # two batches
    return dict(zip(OUTPUTS, arrays))


if __name__ == "__main__":
    np.savez(sys.argv[1], **batch(*sys.argv[2:3]))
