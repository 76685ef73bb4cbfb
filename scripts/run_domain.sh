#!/usr/bin/env bash
# The whole ragtune pipeline for one domain, one `accelerate launch` per stage.
#
#   scripts/run_domain.sh CONFIG [ACCELERATE_CONFIG] [key=value ...]
#
#   scripts/run_domain.sh configs/demo.yaml                                      # CPU, one process
#   scripts/run_domain.sh configs/my-domain.yaml configs/accelerate/multi_gpu.yaml embed.epochs=2
#
# The data stage (LLM calls, no training) and eval run as one process; the training stages run under
# accelerate with the given config (default: configs/accelerate/cpu.yaml). Finished, fresh stages are
# skipped, so rerunning after a crash resumes where it stopped. Set FORCE=1 to rerun everything.
set -euo pipefail

if [[ $# -lt 1 ]]; then
  sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
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

echo "== stages.data.prepare"
"$bin/python" -m stages.data.prepare --config "$config" "${force[@]}" "${overrides[@]}"
stage stages.embed.train
stage stages.rerank.train
stage stages.raft.build
stage stages.raft.train
echo "== eval.harness"
"$bin/python" -m eval.harness --config "$config" "${force[@]}" "${overrides[@]}"
