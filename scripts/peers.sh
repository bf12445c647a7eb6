#!/usr/bin/env bash
# The peers the profiler compares with, beyond torchvision and timm: FFCV 1.0.2, in a virtual
# environment of its own (.venv-peers: it pins its own numpy and numba), with torch, torchvision
# and this project. Safe to run again. Then:
#   .venv-peers/bin/python -m dali_cutmix_bench.bench --data DIR --sections peers ...   # FFCV rows appear
# The project and its tests do not need it.
set -euo pipefail
cd "$(dirname "$0")/.."

# FFCV compiles against OpenCV and libjpeg-turbo and finds them with pkg-config.
packages=(libopencv-dev libturbojpeg0-dev pkg-config g++)
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi

python3 -m venv .venv-peers
# torch first and on its own, as scripts/setup.sh does (pip honours the machine's pins and wheels).
.venv-peers/bin/python -m pip install -q torch torchvision
.venv-peers/bin/python -m pip install -q -e '.[test]'
.venv-peers/bin/python -m pip install -q 'ffcv==1.0.2'
.venv-peers/bin/python -c "import ffcv; print('ffcv', ffcv.__version__, 'ready in .venv-peers')"
