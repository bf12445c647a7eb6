#!/usr/bin/env bash
# DALI and everything it needs, as wheels in .whl/, for a GPU machine without a network (where
# torch and pytest are already installed): scripts/gpu_check.sh installs from there what that
# machine lacks. pip resolves the dependencies; torch is not among them.
#   bash scripts/gpu_wheels.sh 3.12          # the GPU machine's Python version
set -euo pipefail
cd "$(dirname "$0")/.."
pyver="${1:?usage: bash scripts/gpu_wheels.sh PYVER (e.g. 3.12)}"
py=python3
[ -x .venv/bin/python ] && py=.venv/bin/python
# The DALI this checkout is tested with, and what the DALI half runs besides torch.
dali=$($py -c "import importlib.metadata as m; print(m.version('nvidia-dali-cuda120'))" 2>/dev/null || echo "")
mkdir -p .whl
$py -m pip download -q --only-binary=:all: --python-version "$pyver" \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "nvidia-dali-cuda120${dali:+==$dali}" matplotlib tqdm pillow
du -ch .whl/*.whl | tail -n 1 | sed "s|total|in $(ls .whl/*.whl | wc -l) wheels in .whl/ for Python $pyver|"
