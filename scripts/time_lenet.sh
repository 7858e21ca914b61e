#!/usr/bin/env bash
# The raw results behind README's LeNet timing table (benchmarks/lenet/): the JAX run and the PyTorch lesson script in
# both modes, one after the other on the same machine, each as a whole command (interpreter start and imports
# included). Run from the repository root with ../shared beside it, on a quiet machine:
#
#     bash scripts/time_lenet.sh [OUT_DIR]        # default benchmarks/lenet
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-benchmarks/lenet}"
mkdir -p "$out"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

source scripts/real_seconds.sh
declare -A seconds
run() {  # run LABEL COMMAND...: the command's real time in seconds, into seconds[LABEL]
  local label="$1"; shift
  seconds["$label"]=$(real_seconds "$scratch/log" "$@")
  echo "$label: ${seconds[$label]} s"
}

jax_cmd="python -m experiments.lenet --out OUT"
run "$jax_cmd" python -m experiments.lenet --out "$scratch/lenet"
cp "$scratch/lenet/timing.json" "$out/jax_timing.json"
cp "$scratch/lenet/metrics.json" "$out/jax_metrics.json"
predecoded_cmd="python scripts/torch_lenet_baseline.py --mode predecoded --json $out/torch_predecoded.json"
run "$predecoded_cmd" python scripts/torch_lenet_baseline.py --mode predecoded --json "$out/torch_predecoded.json"
lesson_cmd="python scripts/torch_lenet_baseline.py --mode lesson --data ../shared/data/cats_dogs --json $out/torch_lesson.json"
run "$lesson_cmd" python scripts/torch_lenet_baseline.py --mode lesson --data ../shared/data/cats_dogs \
  --json "$out/torch_lesson.json"

python - "$out/process_seconds.json" "$jax_cmd" "${seconds[$jax_cmd]}" "$predecoded_cmd" \
  "${seconds[$predecoded_cmd]}" "$lesson_cmd" "${seconds[$lesson_cmd]}" <<'PY'
import datetime, json, sys
path, *pairs = sys.argv[1:]
record = {"what": "real time of each whole command (scripts/time_lenet.sh), interpreter start and imports included; "
                  f"same machine, one after the other, {datetime.date.today().isoformat()}"}
record.update({pairs[i]: float(pairs[i + 1]) for i in range(0, len(pairs), 2)})
open(path, "w").write(json.dumps(record, indent=1))
PY
echo "wrote $out/{jax_timing,jax_metrics,torch_predecoded,torch_lesson,process_seconds}.json"
