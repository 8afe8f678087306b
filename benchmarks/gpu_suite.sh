#!/usr/bin/env bash
# The GPU checks in one go (about 5 minutes on an H100): the CUDA tests, then every benchmark
# with --device cuda in float32 and bfloat16. Logs go to $OUT (default: bench-results/gpu).
#
#   GLIP_SHARED_DIR=../shared bash benchmarks/gpu_suite.sh
#
# The golden data (GLIP_SHARED_DIR) is needed by the CUDA tests and the LVIS names by lvis.py.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-bench-results/gpu}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
SHARED=${GLIP_SHARED_DIR:-../shared}
PY=${PYTHON:-python3}
run() { echo "### $*"; "$@" 2>&1 | tee -a "$OUT/gpu_suite.log"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu_suite.log"
$PY -c "import torch, torchvision, transformers; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/gpu_suite.log"
run $PY -m pytest -q -p no:cacheprovider tests/test_cuda.py ${CUDA_TEST_ARGS:-}
run $PY benchmarks/infer.py --device cuda --runs 10
run $PY benchmarks/infer.py --device cuda --dtype bfloat16 --baseline-dtype bfloat16 --runs 10
run $PY benchmarks/train_step.py --device cuda --runs 5
run $PY benchmarks/train_step.py --device cuda --dtype bfloat16 --runs 5
run $PY benchmarks/prompt_cache.py --device cuda
run $PY benchmarks/lvis.py --device cuda --names "$SHARED/data/lvis_v1_class_names.txt"
