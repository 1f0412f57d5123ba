#!/usr/bin/env bash
# The introspection paper preset on local instruct weights, sized for a short accelerator run.
#
#   MODEL_DIR=/models/SmolLM2-1.7B-Instruct scripts/introspection_paper.sh
#
# What it runs: experiments/introspection.py's "paper" preset (the paper's prompts, 50 concepts, 100
# baseline words, 20 control questions, strengths {1, 2, 4, 8} / {1, 2, 4, 8, 16}, 50 trials per setting,
# T = 1, 100 tokens) on every second layer by default, layer by layer: each layer's trials are appended
# to trials_seed0.jsonl and a "layer_done" line to metrics.jsonl as soon as they are graded, so a run cut
# short by its time limit keeps every finished layer.
#
# Grading: with GRADER_BASE_URL set, the paper's judge prompts go to that OpenAI-compatible server
# (GRADER_MODEL names the judge). Without it the script chooses the deterministic rule grader
# *explicitly* (an accelerator box usually reaches no judge); every response is kept in the trials file
# for grading by a judge later. The experiment itself refuses to run with no grader configured.
#
# Environment (all optional except MODEL_DIR):
#   OUT              record root (default: $OUT if set, else runs)
#   LAYERS           comma-separated layer indices (default: every second layer)
#   STRENGTHS        Experiment 1 strengths (default 1,2,4,8)
#   TRIALS           trials per setting (default 50); PAIRS: Experiment 2-4 pairs (default 50)
#   EXPERIMENTS      subset of exp1,exp2,exp3,exp4 (default all four)
#   PROMPT_FORMAT    chat (default: the model's chat template) or human_assistant (the paper's raw format)
#   POLICY           dtype policy (default bf16)
#   BATCH            rows per call (default 64)
#   TIME_LIMIT       seconds before the run is stopped (default 540, to fit one 10-minute device call)
#
# Sizing (estimates, not measured here): SmolLM2-1.7B has 24 layers -> 12 layers x 4 strengths x
# (50 concept + 50 random + 20 control) trials of 100 tokens = 5,760 sampled replies for Experiment 1.
# For a first 10-minute call use e.g. LAYERS=8,12,16 TRIALS=20 EXPERIMENTS=exp1,exp3.
set -euo pipefail
cd "$(dirname "$0")/.."

: "${MODEL_DIR:?set MODEL_DIR to a local Hugging Face instruct model directory}"
OUT_ROOT="${OUT:-runs}"
PYTHON="${PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"

exec timeout --signal=INT "${TIME_LIMIT:-540}" "$PYTHON" - <<'PY'
import os

import experiments.introspection as m

env = os.environ
overrides = {"model_dir": env["MODEL_DIR"], "out_dir": env.get("OUT") or "runs", "run_name": env.get("RUN_NAME"),
             "show_progress": True}
if env.get("GRADER_BASE_URL"):
    overrides |= {"grader": "llm", "grader_base_url": env["GRADER_BASE_URL"], "grader_model": env.get("GRADER_MODEL")}
else:
    overrides["grader"] = "rule"  # chosen explicitly: no judge server reachable; replies are kept for regrading
    print("[introspection] GRADER_BASE_URL not set: grading with the rule grader (explicit choice)")
if env.get("LAYERS"):
    overrides["layers"] = tuple(int(x) for x in env["LAYERS"].split(","))
if env.get("STRENGTHS"):
    overrides["strengths"] = tuple(float(x) for x in env["STRENGTHS"].split(","))
for key, name in (("TRIALS", "trials"), ("PAIRS", "pairs"), ("BATCH", "batch_size")):
    if env.get(key):
        overrides[name] = int(env[key])
if env.get("EXPERIMENTS"):
    overrides["experiments"] = tuple(env["EXPERIMENTS"].split(","))
if env.get("PROMPT_FORMAT"):
    overrides["prompt_format"] = env["PROMPT_FORMAT"]
if env.get("POLICY"):
    overrides["policy"] = env["POLICY"]
config = m.PRESETS["paper"].replace(**overrides)
print(m.run(config))
PY
