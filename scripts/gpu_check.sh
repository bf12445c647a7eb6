#!/usr/bin/env bash
# Every GPU check in one run (scripts/gpu_check.py says which), one report folder: $OUT if set,
# else runs/gpu_check. Under 6 minutes on one GPU; CI runs it with --cpu on every submission.
#   bash scripts/gpu_check.sh            # on a machine with CUDA: torch half first, then DALI's
#   bash scripts/gpu_check.sh --cpu      # both halves, small, on the CPU
#
# Its first half needs only torch. A machine without DALI and without a network takes DALI as
# wheels in .whl/ (git-ignored), made elsewhere by `bash scripts/gpu_wheels.sh 3.12` and installed
# to /tmp/site. Where the Debian data packages are missing, synthetic JPEGs stand in.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-runs/gpu_check}"
mkdir -p "$out"
py=python3
[ -x .venv/bin/python ] && py=.venv/bin/python
export PYTHONUNBUFFERED=1
if [ "${1:-}" != "--cpu" ]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$out/env.txt"
fi
# The parts' own limits add up to 345 s (6x that with --cpu); this one only catches the orchestrator.
limit=360
[ "${1:-}" = "--cpu" ] && limit=2160
timeout "$limit" $py scripts/gpu_check.py --output "$out" "$@" 2>&1 | tee "$out/gpu_check.txt"
check=${PIPESTATUS[0]}
echo "checks rc=$check; report: $out/report.md" | tee "$out/summary.txt"
[ "$check" -eq 0 ]
