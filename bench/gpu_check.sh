#!/usr/bin/env bash
# One prepared GPU run (issue 20): official-size SE streaming capacity, eager vs compiled + CUDA graphs, in bf16,
# within 8 minutes including model construction. Writes gpu_check.json + gpu_check.md into OUT_DIR.
#
#   bash bench/gpu_check.sh OUT_DIR [--dry-run] [bench/gpu_check.py options]
#
# On a lent device machine (see bench/RESULTS.md, "A GPU run ready to go"): the image has torch and transformers
# but not soxr / soundfile / cffi / pycparser, so carry them as wheels in .whl (ignored by git; README of the device
# tool), then run
#   run(command="bash bench/gpu_check.sh $OUT", carry=[".whl"], timeout_s=540)
# The Python side stops starting points after --budget-s (400 s) and the whole run is capped at
# GPU_CHECK_TIMEOUT_S (480 s); rows are written after every point, so a cut-short run still reports.
set -euo pipefail
out=${1:?usage: bash bench/gpu_check.sh OUT_DIR [--dry-run] [options]}
shift
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
# carried wheels (cp312, for the device image) only where the interpreter lacks what they bring
if compgen -G ".whl/*.whl" > /dev/null && ! "$python" -c "import soxr, soundfile" 2> /dev/null; then
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
mkdir -p "$out"
if command -v nvidia-smi > /dev/null; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt" || true; fi
timeout --signal=INT --kill-after=20 "${GPU_CHECK_TIMEOUT_S:-480}" "$python" bench/gpu_check.py --out "$out" "$@" \
  2>&1 | tee "$out/gpu_check.log"
