#!/usr/bin/env bash
# Copy the reference data that benchmarks/gpu_suite.sh needs into ./shared (ignored by git; a
# shared/ folder inside the checkout travels with the working tree to a lent GPU machine, where
# ../shared does not). The golden tiny model and its detection/grounding outputs (about 42 MB),
# the LVIS class names, and the tiny training-loss reference when the whole tree stays under
# 60 MB. The GLIP-T (A) reference (tiny_a) is left out; the suite deselects what is missing.
#
#   bash benchmarks/gpu_pack_shared.sh [SOURCE]      # SOURCE: default ../shared
set -eu
cd "$(dirname "$0")/.."
SRC=${1:-../shared}
DST=shared
mkdir -p "$DST/golden/tiny" "$DST/data"
cp "$SRC/golden/README.md" "$DST/golden/"
for f in bert_config.json config.yaml image.png inputs.safetensors prompts.json vocab.txt weights.safetensors \
         outputs_det.safetensors outputs_grounding.safetensors; do
    cp "$SRC/golden/tiny/$f" "$DST/golden/tiny/"
done
cp "$SRC/data/lvis_v1_class_names.txt" "$DST/data/"
tree_bytes() { { git ls-files -z; git ls-files -z --others --exclude-standard; } | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1; }
total=$(( $(tree_bytes) + $(du -sb "$DST" | cut -f1) ))
loss=$(( $(stat -c %s "$SRC/golden/tiny/loss.safetensors") + $(stat -c %s "$SRC/golden/tiny/loss.json") ))
if [ $(( total + loss )) -lt 60000000 ]; then
    cp "$SRC/golden/tiny/loss.safetensors" "$SRC/golden/tiny/loss.json" "$DST/golden/tiny/"
    total=$(( total + loss ))
fi
echo "shared/: $(du -sh "$DST" | cut -f1); working tree with it: $(( total / 1000000 )) MB (limit 64 MiB)"
