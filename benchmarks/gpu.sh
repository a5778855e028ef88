#!/usr/bin/env bash
# The GPU check, as one short script for a machine with an NVIDIA GPU:
#   1. the CUDA provider is there and a worker's session picks it (IO binding on);
#   2. benchmarks/ceiling.py with the CUDA provider: raw ORT-CUDA at several batch sizes
#      (best ÷ batch 1 = the batching gain) against the served model (served ÷ raw).
# Needs: a venv with `pip install -e '.[gpu,loadtest]'` (onnxruntime-gpu, not onnxruntime),
# wrk on PATH. Results land in $OUT (or benchmarks/results/) as ceiling.json.
#
#   bash benchmarks/gpu.sh [python]
set -euo pipefail
PY=${1:-.venv/bin/python}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
"$PY" - <<'PYEOF'
import onnxruntime as ort
from worker.runtime import CUDA, choose_providers
available = ort.get_available_providers()
print("onnxruntime", ort.__version__, "providers", available)
assert CUDA in available, "this onnxruntime has no CUDA provider: install onnxruntime-gpu"
print("a worker would use", choose_providers())
PYEOF
FUSIONSERVE_IO_BINDING=1 "$PY" -m pytest -q tests/test_runtime.py
"$PY" -m benchmarks.ceiling --models demo,large --batch-sizes 1,8,32,64,256 \
  --ort-threads 4 --duration 10 --connections 128
if [ -n "${OUT:-}" ]; then cp benchmarks/results/ceiling.json "$OUT/"; fi
