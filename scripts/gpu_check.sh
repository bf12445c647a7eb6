#!/usr/bin/env bash
# Every GPU check in one run (scripts/gpu_check.py says which), one report folder: $OUT if set,
# else runs/gpu_check. Under 8 minutes on one GPU; CI runs it with --cpu on every submission.
#   bash scripts/gpu_check.sh            # on a machine with CUDA, after scripts/setup.sh
#   bash scripts/gpu_check.sh --cpu      # every check that has a CPU meaning, small, on the CPU
#
# A machine without DALI and without a network takes it as wheels in .whl/ (git-ignored),
# installed to /tmp/site; DALI's wheel is about 425 MB. From a machine with pip:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
#       -d .whl nvidia-dali-cuda120==2.4.0 nvidia-nvimgcodec-cu12 nvidia-nvjpeg2k-cu12 nvidia-nvtiff-cu12 \
#       astunparse gast makefun libcst optree nvtx
# The demo data (Fashion-MNIST) and the benchmark photos come from Debian packages; where those are
# missing, set DALI_CUTMIX_CACHE to a folder holding fashion-mnist-* exports made elsewhere.
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

status=0
if [ "${1:-}" != "--cpu" ]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$out/env.txt"
    # The gpu-marked tests first: they compare every GPU path with the oracle.
    timeout 150 $py -m pytest -q -m gpu -rs -p no:cacheprovider 2>&1 | tee "$out/gpu_tests.txt"
    status=${PIPESTATUS[0]}
fi
timeout 420 $py scripts/gpu_check.py --output "$out" "$@" 2>&1 | tee "$out/gpu_check.txt"
check=${PIPESTATUS[0]}
echo "gpu tests rc=$status, checks rc=$check; report: $out/report.md" | tee "$out/summary.txt"
[ "$status" -eq 0 ] && [ "$check" -eq 0 ]
