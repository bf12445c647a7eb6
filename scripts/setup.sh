#!/usr/bin/env bash
# Fresh machine -> ready checkout: Debian data packages and compilers (where apt can run), a virtual
# environment in .venv, this project (editable) with its test extras and the other trainers its
# tests drive (Lightning, Accelerate), and the native operator built ahead. Safe to run again; it
# skips what is already there. Without root or apt (a cluster login node, a container) it does what
# it can, says in one line each what it skipped and what that costs, and still leaves a working venv.
set -euo pipefail
cd "$(dirname "$0")/.."

# What each Debian package gives, and what its absence costs.
declare -A COST=(
    [dataset-fashion-mnist]="the demo data: give train.py --data DIR; the test of the real export skips"
    [mate-backgrounds]="the benchmark's photos: benchdata and the GPU check use synthetic photos instead"
    [g++]="the compiler of the native CPU operator: CutMix runs on backend python (same mixing, slower) until a compiler is installed"
    [g++-11]="the GCC 11 build check: its test skips"
    [python3-venv]="the virtual environment: install python3-venv (or virtualenv) and run this again"
)
packages=(dataset-fashion-mnist mate-backgrounds g++ g++-11)
python3 -c "import ensurepip, venv" 2>/dev/null || packages+=(python3-venv)  # Debian splits venv out
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 && [ "$p" != python3-venv ] || missing+=("$p"); done
if ((${#missing[@]})); then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo -n"
    why=""
    if ! command -v apt-get >/dev/null; then
        why="no apt-get on this machine"
    elif [ -n "$sudo" ] && ! sudo -n true 2>/dev/null; then
        why="no root and no password-less sudo"
    else
        apt() { $sudo env DEBIAN_FRONTEND=noninteractive apt-get "$@" >/dev/null; }
        apt update -q || true
        if ! apt install -y -q "${missing[@]}"; then  # one at a time: a release may lack one of them
            for p in "${missing[@]}"; do
                apt install -y -q "$p" || echo "setup: skipped Debian's $p (apt-get could not install it): ${COST[$p]}" >&2
            done
        fi
    fi
    if [ -n "$why" ]; then
        for p in "${missing[@]}"; do echo "setup: skipped Debian's $p ($why): ${COST[$p]}" >&2; done
    fi
fi
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv 2>/dev/null || { python3 -m pip install -q --user virtualenv && python3 -m virtualenv -q .venv; }
fi
# torch first and on its own: pip (not uv) honours the machine's torch pins and local wheels.
.venv/bin/python -m pip install -q torch torchvision
.venv/bin/python -m pip install -q -e '.[test,lightning,accelerate]'  # the other trainers the tests drive
# The native backend's compiled DALI operator (dali_cutmix/csrc): DALI's headers need CUDA's for
# type names; without a CUDA toolkit on the machine, PyPI's header packages do.
if ! .venv/bin/python -m dali_cutmix.plugin --headers >/dev/null 2>&1; then
    .venv/bin/python -m pip install -q nvidia-cuda-runtime-cu12 nvidia-cuda-nvcc-cu12 nvidia-cuda-cccl-cu12
fi
if ! built=$(.venv/bin/python -m dali_cutmix.plugin 2>&1); then
    echo "setup: skipped the native operator (${built#*error: }): CutMix on the CPU runs on backend python" >&2
fi
