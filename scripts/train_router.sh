#!/usr/bin/env bash
# Rebuilds the packaged routing classifier from RouteLLM's per-prompt outcomes (../shared/routing-data),
# contaminated prompts left out. Deterministic: the same data gives the same file.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${ROUTING_DATA:-../shared/routing-data/routellm-evals}
python3 -m tokenctl router train \
  --data "$DATA/mmlu_responses.csv" --drop "$DATA/mmlu_contaminated_prompts.jsonl" \
  --data "$DATA/gsm8k_responses.csv" --drop "$DATA/gsm8k_contaminated_prompts.jsonl" \
  --prompt-col prompt --strong-col gpt-4-1106-preview --weak-col mistralai/Mixtral-8x7B-Instruct-v0.1 \
  --premium-share 0.3 --out src/tokenctl/routing/model/router.json.gz
