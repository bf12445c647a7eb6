"""The GPU pipelines' boundaries, walked on a machine without a GPU.

DALI builds the Python graph of a ``device_id=0`` pipeline without touching a GPU
(``Pipeline._build_graph``; nothing is built or run), so every GPU training pipeline (each recipe
and backend the GPU allows) and the validation pipeline are checked here for: every output on the
GPU; no operator with a GPU input and a CPU output (a GPU -> CPU edge makes the CPU stage wait for
the GPU's); and exactly the Python operators docs/DESIGN.md documents.
"""

import dataclasses
from collections import Counter

import pytest

pytest.importorskip("nvidia.dali")

from dali_cutmix import ops  # noqa: E402
from dali_cutmix.recipe import MixConfig  # noqa: E402
from pipelines.graphs import train_pipeline, val_pipeline  # noqa: E402

RECIPES = {
    "cutmix": MixConfig(),
    "elem-prob": MixConfig(prob=0.5, mode="elem"),
    "mixup-switch": MixConfig(mixup_alpha=0.4),
    "mixup-only": MixConfig(alpha=0.0, mixup_alpha=0.2),
    "minmax-no-self": MixConfig(minmax=(0.2, 0.8), no_self=True, mode="elem"),
}
GPU_BACKENDS = [b for b in ops.BACKENDS if (b, "gpu") not in ops.REFUSED]
# The Python operators of a GPU pipeline, as docs/DESIGN.md lists them: the python
# backend's sampler (CPU) and its torch callback (GPU); none without mixing.
MIXING = Counter({("PythonFunction", "cpu"): 1, ("DLTensorPythonFunction", "gpu"): 1})


def walk(pipe):
    """(operators as (schema, device, input devices, output devices), output devices)."""
    pipe._build_graph()  # DALI's Python graph only: nothing is built on a device or run
    operators = [
        (
            getattr(o._op, "schema_name", type(o._op).__name__),
            o._op.device,
            [i.device for i in o.inputs],
            [x.device for x in o.outputs],
        )  # fmt: skip
        for o in pipe._ops
    ]
    return operators, [n.device for n in pipe._graph_outputs]


def assert_boundaries(operators, outputs, python_ops: Counter):
    assert outputs and all(d == "gpu" for d in outputs), f"outputs on {outputs}"
    edges = [(name, dev) for name, dev, ins, outs in operators if "gpu" in ins and "cpu" in outs]
    assert not edges, f"GPU -> CPU edges: {edges}"
    found = Counter((name, dev) for name, dev, _, _ in operators if "PythonFunction" in name)
    assert found == python_ops


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("recipe", list(RECIPES.values()), ids=list(RECIPES))
@pytest.mark.parametrize("schedule", [False, True], ids=["fixed-prob", "prob-schedule"])
def test_gpu_training_graphs_keep_every_output_on_the_gpu(jpeg_tree, recipe, backend, schedule):
    if schedule:
        recipe = dataclasses.replace(recipe, prob_schedule={1: 0.5}, off_epoch=3)
    pipe = train_pipeline(jpeg_tree / "train", batch_size=4, image_size=32, device="gpu", recipe=recipe,
                          backend=backend, fp16=True, steps_per_epoch=3)  # fmt: skip
    assert_boundaries(*walk(pipe), MIXING)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_a_gpu_graph_with_a_size_schedule_feeds_the_sampler_from_the_cpu(jpeg_tree, backend):
    """Progressive resizing: the side comes from a CPU external source into the resize and the
    sampler, so the images' shapes never travel GPU -> CPU."""
    from pipelines.settings import SizeSchedule

    pipe = train_pipeline(jpeg_tree / "train", batch_size=4, image_size=32, device="gpu", backend=backend,
                          fp16=True, steps_per_epoch=3, size_schedule=SizeSchedule(((1, 48),)))  # fmt: skip
    assert_boundaries(*walk(pipe), MIXING)


def test_gpu_graphs_without_mixing_and_for_validation(jpeg_tree):
    plain = train_pipeline(jpeg_tree / "train", batch_size=4, image_size=32, device="gpu", recipe=None)
    assert_boundaries(*walk(plain), Counter())
    val = val_pipeline(jpeg_tree / "val", batch_size=4, image_size=32, device="gpu", fp16=True)
    assert_boundaries(*walk(val), Counter())


def test_the_walk_finds_a_gpu_to_cpu_edge_and_cpu_outputs(jpeg_tree):
    """The fallback without ``size`` has the edge the training pipelines avoid, and a CPU pipeline's
    outputs are on the CPU: the checks above can fail."""
    from nvidia.dali import fn, pipeline_def

    @pipeline_def(batch_size=4, num_threads=1, device_id=0)
    def unsized():
        images = fn.external_source(name="images", device="gpu", layout="HWC")
        labels = fn.external_source(name="labels")
        return ops.cutmix(images, labels, backend="python")

    operators, outputs = walk(unsized())
    with pytest.raises(AssertionError, match="outputs on"):
        assert_boundaries(operators, outputs, MIXING)
    with pytest.raises(AssertionError, match=r"GPU -> CPU edges: \[\('_Shape', 'cpu'\)\]"):
        assert_boundaries(operators, ["gpu"] * len(outputs), MIXING)


def _ops_named(pipe, name: str) -> list[dict]:
    """The arguments of ``pipe``'s operators whose schema name contains ``name`` (graph built)."""
    pipe._build_graph()
    return [o._op._init_args for o in pipe._ops if name in getattr(o._op, "schema_name", "")]


def test_the_gpu_decoder_is_sized_for_imagenet_and_offloads_to_the_hardware_decoder(jpeg_tree):
    """nvJPEG's hardware decoder preallocates for ImageNet's largest image (the sampled largest
    when larger), takes HW_DECODER_LOAD of the JPEGs, and the buffers follow the data."""
    from pipelines.graphs import DALI_PADDINGS, HW_DECODER_LOAD, IMAGENET_LARGEST

    train = train_pipeline(jpeg_tree / "train", batch_size=4, image_size=32, device="gpu", fp16=True)
    val = val_pipeline(jpeg_tree / "val", batch_size=4, image_size=32, device="gpu", fp16=True)
    for pipe, decoder in ((train, "ImageRandomCrop"), (val, "decoders__Image")):
        (args,) = _ops_named(pipe, decoder)
        assert args["hw_decoder_load"] == HW_DECODER_LOAD
        assert {k: args[k] for k in DALI_PADDINGS} == DALI_PADDINGS  # small JPEGs: DALI's defaults
        hints = (args.get("preallocate_width_hint"), args.get("preallocate_height_hint"))
        assert hints == (IMAGENET_LARGEST if pipe is train else (None, None))  # validation: none, as DALI's example


@pytest.mark.parametrize("split", ["train", "val"])
def test_gpu_float_images_leave_the_pipeline_hwc_for_a_channels_last_view(jpeg_tree, split):
    """On the GPU crop_mirror_normalize writes HWC (fp16 for AMP): the loader's NCHW view of it is
    channels_last, so the training step copies nothing. The CPU pipelines keep CHW."""
    from nvidia.dali import types

    def build(device: str, **kwargs):
        if split == "train":
            return train_pipeline(jpeg_tree / "train", batch_size=4, image_size=32, device=device, **kwargs)
        return val_pipeline(jpeg_tree / "val", batch_size=4, image_size=32, device=device,
                            **{k: v for k, v in kwargs.items() if k == "fp16"})  # fmt: skip

    (args,) = _ops_named(build("gpu", fp16=True, backend="python"), "CropMirrorNormalize")
    assert args["output_layout"] == "HWC" and args["dtype"] == types.FLOAT16
    cpu = build("cpu", recipe=None)
    layouts = [a.get("output_layout") for a in _ops_named(cpu, "CropMirrorNormalize") + _ops_named(cpu, "Mix")]
    assert layouts and all(layout == "CHW" for layout in layouts)
