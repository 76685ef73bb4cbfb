#!/usr/bin/env bash
# The whole ragtune pipeline for one domain, one `accelerate launch` per training stage.
#
#   scripts/run_domain.sh CONFIG [ACCELERATE_CONFIG] [key=value ...]
#
#   scripts/run_domain.sh configs/demo.yaml                                      # CPU, one process
#   scripts/run_domain.sh configs/my-domain.yaml configs/accelerate/multi_gpu.yaml embed.epochs=2
#
# The training stages (embed, rerank, raft train) run under accelerate with the given config (default:
# configs/accelerate/cpu.yaml); data, raft build (LLM calls, batched scoring, nothing to shard) and eval
# run as one process. Finished, fresh stages are skipped, so rerunning after a crash resumes where it
# stopped. Set FORCE=1 to rerun everything.
set -euo pipefail

if [[ $# -lt 1 ]]; then
  sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
config=$1
shift
accel=configs/accelerate/cpu.yaml
if [[ $# -gt 0 && $1 == *.yaml ]]; then
  accel=$1
  shift
fi
overrides=("$@")
force=()
[[ "${FORCE:-0}" == 1 ]] && force=(--force)
bin=$(dirname "$(command -v python)")
[[ -x .venv/bin/python ]] && bin=.venv/bin

stage() {  # stage MODULE: run one stage under accelerate
  echo "== $1 ($accel)"
  "$bin/accelerate" launch --config_file "$accel" -m "$1" --config "$config" "${force[@]}" "${overrides[@]}"
}

echo "== ragtune.stages.data.prepare"
"$bin/python" -m ragtune.stages.data.prepare --config "$config" "${force[@]}" "${overrides[@]}"
stage ragtune.stages.embed.train
stage ragtune.stages.rerank.train
echo "== ragtune.stages.raft.build"
"$bin/python" -m ragtune.stages.raft.build --config "$config" "${force[@]}" "${overrides[@]}"
stage ragtune.stages.raft.train
echo "== ragtune.eval.harness"
"$bin/python" -m ragtune.eval.harness --config "$config" "${force[@]}" "${overrides[@]}"
