#!/usr/bin/env bash
# Stress-testing model specs, paper preset, on one accelerator (prepared; not run in CI or on this machine).
#
#   scripts/spec_stress_paper.sh DATASET_DIR JUDGE_URL NAME=MODEL_DIR [NAME=MODEL_DIR ...] [-- --field=value ...]
#
# DATASET_DIR: a local copy of the released dataset (huggingface-cli download jifanz/stress_testing_model_spec
#   --repo-type dataset --local-dir DATASET_DIR); nothing is downloaded here. 1,000 scenarios are sampled
#   from its `all_models` split (--num_scenarios, --seed).
# JUDGE_URL: an OpenAI-compatible endpoint of the judge model (B.3 rubrics, B.4 classification); set
#   --judge_model=NAME if it serves several. Another `jaxstack serve` on a large local instruct model works.
# NAME=MODEL_DIR: local instruct models of several families and sizes (Qwen2.5 0.5B-7B, SmolLM2 360M/1.7B,
#   Llama 3.2 1B/3B, ...), served together by one `jaxstack serve` on port 8000 and addressed by NAME.
#
# Every stage appends to JSONL under runs/spec-stress/<stamp>/; rerun with --run_name=<stamp> to resume.
set -euo pipefail
if [[ $# -lt 3 ]]; then
  sed -n '2,15p' "$0"
  exit 2
fi
DATASET_DIR=$1 JUDGE_URL=$2
shift 2
[[ -e "$DATASET_DIR" ]] || { echo "spec_stress_paper.sh: $DATASET_DIR does not exist" >&2; exit 2; }
MODELS=() NAMES=()
while [[ $# -gt 0 && "$1" != "--" ]]; do
  [[ "$1" == *=* ]] || { echo "spec_stress_paper.sh: expected NAME=MODEL_DIR, got $1" >&2; exit 2; }
  MODELS+=(--model "$1"); NAMES+=("${1%%=*}")
  shift
done
[[ "${1:-}" == "--" ]] && shift
cd "$(dirname "$0")/.."
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
.venv/bin/jaxstack serve "${MODELS[@]}" --port 8000 --policy bf16 &
SERVER=$!
trap 'kill $SERVER' EXIT
for _ in $(seq 600); do curl -sf http://127.0.0.1:8000/health > /dev/null && break; sleep 1; done
PANEL=$(IFS=,; echo "${NAMES[*]}")
.venv/bin/jaxstack run spec-stress --preset paper --dataset_path="$DATASET_DIR" --judge_url="$JUDGE_URL" \
  --server_url=http://127.0.0.1:8000 --panel_models="$PANEL" "$@"
