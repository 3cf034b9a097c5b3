#!/usr/bin/env bash
# Every GPU check of dmcpfx in one run (issue 17): PASS/FAIL lines, the step-cost tables and the
# GPU latency table. For a machine with an NVIDIA GPU and no network: it uses the torch installed
# there and installs dmcpfx itself without dependencies. Takes 12-15 minutes; --only splits it.
#   bash benchmarks/gpu_check.sh                 # the GPU checks
#   bash benchmarks/gpu_check.sh --cpu-smoke     # the same plumbing, tiny, on the CPU
# Extra arguments go to benchmarks/gpu_check.py (--out DIR, --only strict,analysis,recipes,steps,budget,latency).
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ]; then PY=.venv/bin/python; fi
if ! "$PY" -c "import dmcpfx" 2>/dev/null; then
  "$PY" -m pip install -q --no-deps --no-build-isolation -e . || { echo "FAIL install: pip install -e . failed"; exit 2; }
fi
exec "$PY" benchmarks/gpu_check.py "$@"
