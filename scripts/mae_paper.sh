#!/usr/bin/env bash
# Multi-Agent Evolve, paper preset, on one accelerator (prepared; not run in CI).
#
#   scripts/mae_paper.sh MODEL_DIR SEED_FILE EVAL_FILE[,EVAL_FILE...] [--field=value ...]
#
# MODEL_DIR: a local Qwen2.5-3B-Instruct (or 1.5B) directory (config.json, *.safetensors, tokenizer.json,
#   tokenizer_config.json with its chat template); nothing is downloaded.
# SEED_FILE: local seed questions, one {"question": ...} JSON object per line (the paper seeds with 967
#   questions from 14 public datasets; bring your own copy).
# EVAL_FILE: local benchmark files, one {"question": ..., "answer": ...} per line, graded by exact match of
#   the solver's <answer> (the paper grades with a 70B LLM judge; exact match is stricter).
#
# The preset (experiments/mae.py PRESETS["paper"]): lr 1e-6, 64 proposer + 64 solver prompts per step (128
# rollout-1 rows, one sample each), T = 1.0, no KL, entropy 0.001 per role, bf16-mixed engines with float32
# masters, KV-cache decode, prompt / response budgets 1024 / 1024 (the paper: 8192 / 8192, which does not fit
# one GPU with this loop), 200 steps, evaluation every 50. Extra flags override fields, e.g.
# --mae.steps=50 --mae.micro_rows=2 --eval_limit=200.
set -euo pipefail
if [[ $# -lt 3 ]]; then
  sed -n '2,20p' "$0"
  exit 2
fi
MODEL_DIR=$1 SEED_FILE=$2 EVAL_FILES=$3
shift 3
for path in "$MODEL_DIR" "$SEED_FILE"; do
  [[ -e "$path" ]] || { echo "mae_paper.sh: $path does not exist" >&2; exit 2; }
done
cd "$(dirname "$0")/.."
# One process owns the GPU; let XLA take most of its memory up front.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}
exec .venv/bin/jaxstack run mae --preset paper --init_from="$MODEL_DIR" --seed_file="$SEED_FILE" \
  --eval_files="$EVAL_FILES" "$@"
