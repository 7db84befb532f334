#!/usr/bin/env bash
# Reproduces the routing figures in docs/routing.md from ../shared/routing-data (RouteLLM's outcomes of
# GPT-4 vs Mixtral-8x7B on MMLU and GSM8K, contaminated prompts left out): in-benchmark 5-fold,
# leave-one-benchmark-out both ways, and the packaged model. Writes bench/results/router-eval-*.json and PNGs.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${ROUTING_DATA:-../shared/routing-data/routellm-evals}
OUT=bench/results
COLS=(--prompt-col prompt --strong-col gpt-4-1106-preview --weak-col mistralai/Mixtral-8x7B-Instruct-v0.1)
COST=(--strong-cost 24.7 --weak-cost 0.24)  # USD per million tokens quoted for the RouteLLM paper's two models
for bench in mmlu gsm8k; do
  other=$([ "$bench" = mmlu ] && echo gsm8k || echo mmlu)
  python3 -m tokenctl router eval --data "$DATA/${bench}_responses.csv" --drop "$DATA/${bench}_contaminated_prompts.jsonl" \
    "${COLS[@]}" "${COST[@]}" --kfold 5 --plot "$OUT/router-${bench}-kfold.png" --format json > "$OUT/router-eval-${bench}-kfold.json"
  python3 -m tokenctl router eval --data "$DATA/${bench}_responses.csv" --drop "$DATA/${bench}_contaminated_prompts.jsonl" \
    "${COLS[@]}" "${COST[@]}" --train-on "$DATA/${other}_responses.csv" --train-drop "$DATA/${other}_contaminated_prompts.jsonl" \
    --format json > "$OUT/router-eval-${bench}-from-${other}.json"
done
