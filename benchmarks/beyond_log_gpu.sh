#!/usr/bin/env bash
# The beyond-log benchmark on one GPU: GBR at the benchmark's size and at larger sizes, and SASRec at its config's
# size and a larger one, each trained for the same time budget, all at once on the GPU. Start NVIDIA MPS first
# (`nvidia-cuda-mps-control -d`) so that the processes share the GPU instead of time-slicing it. Every row lands in
# WORK_DIR's cache; the results files are then assembled from it, one per GBR size (the same popularity, item-kNN,
# EASE and SASRec rows):
#
#     bash benchmarks/beyond_log_gpu.sh                      # BUDGET_S=240 WORK_DIR=runs/bench/beyond_log_gpu
#     python benchmarks/beyond_log.py --device cuda --budget-s 240 --work-dir runs/bench/beyond_log_gpu --gbr dim=256 ...   # re-assemble one
#
# Which GBR size goes in the table is decided on the validation users' recall (each row's `valid_curve`), never on
# the targets. docs/protocols.md has the results.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
BUDGET_S=${BUDGET_S:-240}
WORK_DIR=${WORK_DIR:-runs/bench/beyond_log_gpu}
OUT_DIR=${OUT_DIR:-$WORK_DIR/results}
THREADS=${THREADS:-2}
DEVICE=${DEVICE:-cuda}
LOGS=$WORK_DIR/logs
mkdir -p "$LOGS" "$OUT_DIR"
RUN=("$PY" benchmarks/beyond_log.py --device "$DEVICE" --budget-s "$BUDGET_S" --threads "$THREADS" --work-dir "$WORK_DIR")

# GBR sizes (the benchmark's own first); each line is a name and its --gbr overrides.
GBR_SIZES=(
  "d64:"
  "d128:dim=128 heads=4 batch_size=64 lr=0.001"
  "d256:dim=256 layers=4 heads=4 batch_size=128 lr=0.001 dropout=0.2"
  "d256w:dim=256 layers=2 heads=4 batch_size=256 lr=0.002"
)
SASREC_LARGE=(--set model.embedding_dim=256 --set model.num_layers=4 --set model.num_heads=4)

gbr_flags() { local flags=() f; for f in ${1#*:}; do flags+=(--gbr "$f"); done; echo "${flags[@]}"; }

# Prepare the data and the counting rows once, so the parallel processes find them done.
"${RUN[@]}" --compute-only --rows popularity itemknn ease >"$LOGS/counting.log" 2>&1
pids=()
for size in "${GBR_SIZES[@]}"; do
  # shellcheck disable=SC2046
  "${RUN[@]}" --compute-only --rows gbr $(gbr_flags "$size") >"$LOGS/gbr_${size%%:*}.log" 2>&1 & pids+=($!)
done
"${RUN[@]}" --compute-only --rows autoregressive >"$LOGS/sasrec.log" 2>&1 & pids+=($!)
"${RUN[@]}" --compute-only --rows autoregressive "${SASREC_LARGE[@]}" >"$LOGS/sasrec_large.log" 2>&1 & pids+=($!)
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
pids=()
for size in "${GBR_SIZES[@]}"; do
  # shellcheck disable=SC2046
  "${RUN[@]}" --rows $(gbr_flags "$size") --out "$OUT_DIR/beyond_log_${size%%:*}.json" >"$LOGS/assemble_${size%%:*}.log" 2>&1 & pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
exit $status
