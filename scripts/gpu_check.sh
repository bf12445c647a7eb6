#!/usr/bin/env bash
# Every GPU check in one go, for a machine with CUDA (under 5 minutes on one modern GPU):
# the `gpu`-marked tests, then the profiler with GPU decode, every CutMix backend and an AMP
# ResNet-50 end to end. Results land in one folder: $OUT if set, else runs/gpu_check.
#   bash scripts/gpu_check.sh            # after scripts/setup.sh, or with DALI and torch installed
#
# On a machine that has torch but no DALI and no network (such as a lent GPU machine), carry the
# wheels in .whl/ (git-ignored); they are installed to /tmp/site below. From a machine with pip:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
#       -d .whl nvidia-dali-cuda120==2.4.0 nvidia-nvimgcodec-cu12 nvidia-libnvcomp-cu12 nvidia-nvjpeg2k-cu12 \
#       nvidia-nvtiff-cu12 astunparse gast makefun libcst optree nvtx
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-runs/gpu_check}"
mkdir -p "$out"
py=python3
[ -x .venv/bin/python ] && py=.venv/bin/python
if [ -d .whl ] && ! $py -c "import nvidia.dali" 2>/dev/null; then
    $py -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the project itself, installed or not
export PYTHONUNBUFFERED=1

{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    $py -c "import torch, nvidia.dali as d; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'dali', d.__version__)"
} 2>&1 | tee "$out/env.txt"

# 1. the gpu-marked tests (and the rest of the suite's CUDA-aware paths)
timeout 150 $py -m pytest -q -m gpu -rs 2>&1 | tee "$out/gpu_tests.txt"
tests_rc=${PIPESTATUS[0]}

# 2. the profiler on real-photo benchmark data: GPU decode, every backend, AMP ResNet-50
timeout 120 $py -m dali_cutmix.benchdata --out /tmp/dali-cutmix-bench --images 2560 --classes 20 2>&1 | tee "$out/benchdata.txt"
timeout 240 $py -m dali_cutmix.bench --data /tmp/dali-cutmix-bench --device gpu --batch-size 128 \
    --workers "$(nproc)" --reps 5 --steps 10 --trainer-steps 10 --arch resnet50 \
    --output "$out" 2>&1 | tee "$out/bench.txt"
bench_rc=${PIPESTATUS[0]}

echo "gpu tests rc=$tests_rc, bench rc=$bench_rc" | tee "$out/summary.txt"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
