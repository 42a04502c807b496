#!/usr/bin/env bash
# The GPU measurements, in one run, on a machine with NVIDIA GPUs and Hugging Face hub access:
#   1. a one-trial SciBERT smoke study of tune/scibert.yaml (real weights: pickled pytorch_model.bin
#      from the hub, converted once to safetensors), 400 papers, 2 epochs;
#   2. train_throughput (SciBERT on the GPU, `--model auto`);
#   3. eval_throughput (its target on a GPU: Ray Data >= 20x the per-paper loop);
#   4. `arxivcls plan tune/scibert.yaml` with the measured training papers/s of one GPU.
# Tables go to results/benchmarks/gpu_*.md and results/gpu_smoke/. Usage, from the repository root:
#   bash benchmarks/gpu_check.sh [PAPERS_FILE]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/arxiv_papers.parquet}
PY=${PYTHON:-.venv/bin/python}
OUT=results/benchmarks
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu_machine.txt"

$PY -m arxivcls.cli tune tune/scibert.yaml --data "$DATA" \
  --set tune.study=gpu_smoke --set tune.num_samples=1 --set data.max_papers=400 \
  --set train.epochs=2 --set "tune.search_space.epochs={type: int, low: 1, high: 2}" \
  2>&1 | tee "$OUT/gpu_smoke_study.log"

export ARXIVCLS_BENCH_PREFIX=gpu_  # the GPU tables sit beside the CPU ones
$PY -m benchmarks.train_throughput --model auto --cpus "$(nproc)"
$PY -m benchmarks.eval_throughput --cpus "$(nproc)"

PAPERS_PER_S=$($PY - <<'PY'
import re
text = open("results/benchmarks/gpu_train_throughput.md").read()
row = next(line for line in text.splitlines() if "(c)" in line and "|" in line)
print(re.findall(r"\|\s*([0-9.]+)\s*\|", row)[2])
PY
)
$PY -m arxivcls.cli plan tune/scibert.yaml --data "$DATA" --papers-per-s "$PAPERS_PER_S" | tee "$OUT/gpu_plan.txt"
