#!/usr/bin/env bash
# Every GPU check of dmcpfx in one run (issue 17): PASS/FAIL lines, the step-cost tables and the
# GPU latency table. For a machine with an NVIDIA GPU and no network: it uses the torch installed
# there and installs dmcpfx itself without dependencies. Issue 17 sets it 8 minutes on one GPU (not
# measured yet); the latency-budget check of issue 20 runs only when named (--only budget).
#   bash benchmarks/gpu_check.sh                 # the GPU checks of issue 17
#   bash benchmarks/gpu_check.sh --only budget   # issue 20's GPU row (ResNet-50, bf16, batch 256)
#   bash benchmarks/gpu_check.sh --cpu-smoke     # the same plumbing, tiny, on the CPU (all six checks)
# Extra arguments go to benchmarks/gpu_check.py (--out DIR, --only strict,analysis,recipes,steps,latency,budget).
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ]; then PY=.venv/bin/python; fi
if ! "$PY" -c "import dmcpfx" 2>/dev/null; then
  "$PY" -m pip install -q --no-deps --no-build-isolation -e . || { echo "FAIL install: pip install -e . failed"; exit 2; }
fi
exec "$PY" benchmarks/gpu_check.py "$@"
