#!/usr/bin/env bash
# Fresh machine -> ready checkout: Debian data packages, a virtual environment in .venv, this
# project (editable) with its test extras and the other trainers its tests drive (Lightning,
# Accelerate). Safe to run again; it skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

# Real data for the demo (Fashion-MNIST), real photos for the benchmark builder, and a C++
# compiler for the native backend's DALI operator.
packages=(dataset-fashion-mnist mate-backgrounds g++)
python3 -c "import ensurepip, venv" 2>/dev/null || packages+=(python3-venv)  # Debian splits venv out
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 && [ "$p" != python3-venv ] || missing+=("$p"); done
if ((${#missing[@]})); then
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi

python3 -m venv .venv
# torch first and on its own: pip (not uv) honours the machine's torch pins and local wheels.
.venv/bin/python -m pip install -q torch torchvision
.venv/bin/python -m pip install -q -e '.[test,lightning,accelerate]'  # the other trainers the tests drive
# The native backend's compiled DALI operator (dali_cutmix/csrc): DALI's headers need CUDA's for
# type names; without a CUDA toolkit on the machine, PyPI's header packages do.
if ! .venv/bin/python -m dali_cutmix.plugin --headers >/dev/null 2>&1; then
    .venv/bin/python -m pip install -q nvidia-cuda-runtime-cu12 nvidia-cuda-nvcc-cu12 nvidia-cuda-cccl-cu12
fi
.venv/bin/python -m dali_cutmix.plugin >/dev/null
