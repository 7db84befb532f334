#!/usr/bin/env bash
# Rebuilds the packaged routing classifier from the coding outcomes in ../shared/routing-data/code (CRUXEval,
# labelled gpt_4o vs deepseek_instruct_6.7b; SWE-bench Verified train part, sweagent_gpt4 vs rag_swellama13b).
# Deterministic: the same data gives the same file. `--full` also re-runs the evaluation (about 8 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${ROUTING_DATA:-../shared/routing-data/code}
if [ "${1:-}" = "--full" ]; then
  python3 bench/router_coding_eval.py --data-dir "$DATA" --train-shipped
else
  python3 bench/router_coding_eval.py --data-dir "$DATA" --only-train
fi
