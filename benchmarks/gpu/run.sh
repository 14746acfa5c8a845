#!/usr/bin/env bash
# The GPU check in one call (about 8 minutes on one H100 / H200):
#   bash benchmarks/gpu/run.sh [--device cuda|cpu] [--quick] [--out DIR]
# Installs the wheels that prepare.sh put in .whl/ (no index needed), then runs
# benchmarks/gpu/check.py: throughput + MFU, framework overhead, the MLO-MAE step cost of
# ViT-B in bf16, the on-device vs DataLoader data path, and 2 minutes of real mlo_mae_derma on
# PneumoniaMNIST at 32 px. Writes gpu_check.json and gpu_check.md to --out (default: $OUT when
# set, as on the device machine, else benchmarks/results/gpu). `--device cpu --quick` is the
# CPU smoke of the same steps.
set -euo pipefail
cd "$(dirname "$0")/../.."
if compgen -G ".whl/*.whl" >/dev/null; then
  site=/tmp/medmae-site
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
data=../shared/data
[ -f .whl/data/pneumoniamnist.npz ] && data=.whl/data
exec python3 benchmarks/gpu/check.py --data-root "$data" --out "${OUT:-benchmarks/results/gpu}" "$@"
