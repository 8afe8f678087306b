#!/usr/bin/env bash
# The GPU checks in one go, about 7 minutes on an H200 at most (each part has its own time limit,
# and a part that fails or runs out of time leaves the others to run):
#   1. the CUDA tests (tests/test_cuda.py, the CUDA-graph tests first: graphed = golden, graphed =
#      eager, replays read new images, a new size is captured; then golden detections through
#      torchvision's kernel, reduced precision, batched = one by one, batched chunks);
#   2. GLIP-T eager and from CUDA graphs vs Grounding DINO-T, batch 1 / batch 8, float32 then
#      bfloat16, timed interleaved in one process (benchmarks/gpu_latency.py --cuda-graphs; the
#      graphs' first call, the capture, is reported apart);
#   3. where GLIP-T's batch-1 time goes: preprocessing, backbone, head, post-processing, eager and
#      graphed, and the busiest operators (benchmarks/gpu_phases.py);
#   with SUITE_EXTRAS=1 also (about 2.5 minutes more):
#   4. LVIS, 1203 classes: chunks batched in the head vs one after another vs whole model per chunk;
#   5. `glip label` images/s on the GPU (benchmarks/label.py).
# Everything printed goes to $OUT/gpu_suite.log (default OUT: bench-results/gpu), the latency
# rows also to $OUT/latency_*.json.
#
#   bash benchmarks/gpu_pack_shared.sh        # once, beside the checkout: copies ../shared's needed files to ./shared
#   bash benchmarks/gpu_suite.sh              # GLIP_SHARED_DIR: default ./shared if present, else ../shared
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-bench-results/gpu}
mkdir -p "$OUT"
LOG=$OUT/gpu_suite.log
: > "$LOG"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
if [ -z "${GLIP_SHARED_DIR:-}" ]; then
    if [ -d shared/golden ]; then GLIP_SHARED_DIR=$PWD/shared; else GLIP_SHARED_DIR=$PWD/../shared; fi
fi
export GLIP_SHARED_DIR
PY=${PYTHON:-python3}
START=$SECONDS

# part LIMIT_S COMMAND...: run it with a time limit, log it, never stop the suite
part() {
    local limit=$1; shift
    echo "### [$((SECONDS - START)) s] $* (limit ${limit} s)" | tee -a "$LOG"
    timeout -k 10 "$limit" "$@" 2>&1 | tee -a "$LOG"
    echo "### exit ${PIPESTATUS[0]} at $((SECONDS - START)) s" | tee -a "$LOG"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee -a "$LOG"
$PY -c "import torch, torchvision, transformers; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())" 2>&1 | tee -a "$LOG"
echo "GLIP_SHARED_DIR=$GLIP_SHARED_DIR" | tee -a "$LOG"

# 1. CUDA tests; cases whose reference files were not carried are deselected.
DESELECT=()
[ -d "$GLIP_SHARED_DIR/golden/tiny_a" ] || DESELECT+=(-k "not tiny_a")
[ -f "$GLIP_SHARED_DIR/golden/tiny/loss.safetensors" ] || DESELECT+=(--deselect "tests/test_cuda.py::test_golden_training_loss_on_cuda")
part 200 $PY -m pytest -q -p no:cacheprovider --durations=8 tests/test_cuda.py ${DESELECT[@]+"${DESELECT[@]}"} \
    ${CUDA_TEST_ARGS:-}

# 2. Latency, eager and CUDA graphs: float32 (batch 1 and 8, 6 classes), then bfloat16 (batch 1,
#    6 and 80 classes).
part 130 $PY benchmarks/gpu_latency.py --cuda-graphs --dtypes float32 --cases short-1,short-8 --runs 10 \
    --json "$OUT/latency_fp32.json"
part 100 $PY benchmarks/gpu_latency.py --cuda-graphs --dtypes bfloat16 --cases short-1,coco80-1 --runs 10 \
    --json "$OUT/latency_bf16.json"

# 3. Phases of the batch-1 time, float32.
part 90 $PY benchmarks/gpu_phases.py --cuda-graphs --runs 10 --top 10

if [ "${SUITE_EXTRAS:-0}" = 1 ]; then
    # 4. LVIS chunks (eager), batched vs one after another, same run.
    part 60 $PY benchmarks/lvis.py --device cuda --runs 3 --names "$GLIP_SHARED_DIR/data/lvis_v1_class_names.txt"

    # 5. Labelling throughput on the GPU (one process, batch 8, GLIP-T at the official test size).
    part 75 $PY benchmarks/label.py --device cuda --processes 1 --images 32 --batch-size 8 --min-size 800 \
        --max-size 1333
fi

echo "### done in $((SECONDS - START)) s" | tee -a "$LOG"
