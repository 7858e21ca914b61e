#!/usr/bin/env bash
# The GPU results (benchmarks/gpu/): jaxnorm against float64 on the GPU (scripts/gpu_check.py), then the benchmark
# at GPU-filling sizes (--scale 16) against Flax, PyTorch CUDA (where torch sees the GPU) and a copy of the same data
# (--copy-baseline: the memory floor), on well-conditioned and on offset data. Run from the repository root on a
# machine whose JAX backend is a GPU, as one command (a lent machine's time is short):
#
#     bash scripts/gpu_benchmark.sh OUT_DIR COMMIT
#
# COMMIT names the clean commit the tree was copied from (a lent machine receives the working tree without .git,
# so the results files cannot read it themselves): it goes into each file's meta.caveat. Each step has its own time
# limit and a failed step does not stop the next; what every step printed is in OUT_DIR/*.log. Writes
# OUT_DIR/gpu_check.json, OUT_DIR/gpu.json, OUT_DIR/gpu_offset.json and OUT_DIR/env.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:?usage: bash scripts/gpu_benchmark.sh OUT_DIR COMMIT}"
commit="${2:?usage: bash scripts/gpu_benchmark.sh OUT_DIR COMMIT}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
# JAX preallocates 75 % of the GPU by default; PyTorch shares the card in the same process.
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.5
py="${PYTHON:-python3}"
# A smoke test on a CPU: BENCH_ARGS="--quick --scale 1" GPU_CHECK_ARGS=--allow-cpu bash scripts/gpu_benchmark.sh ...
# Ten steps per wait (--calls-per-sync): per-step times without the dispatch-and-synchronize cost of each step.
read -r -a bench_args <<< "${BENCH_ARGS:---scale 16 --calls-per-sync 10}"
read -r -a check_args <<< "${GPU_CHECK_ARGS:-}"

{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv
  "$py" -c "import sys, jax, flax, numpy; print(sys.version); print('jax', jax.__version__, jax.devices()); \
print('flax', flax.__version__, 'numpy', numpy.__version__)"
  "$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
} > "$out/env.txt" 2>&1
cat "$out/env.txt"

caveat="taken on a lent GPU machine from a copy of the clean tree at commit $commit (the copy carries no .git, so \
git_commit is unknown); the load average is the host CPU's, which does not time the GPU's kernels"
status=0
step() {  # step NAME LIMIT_S CMD...: run CMD with a time limit, its output in $out/NAME.log
  local name="$1" limit="$2"
  shift 2
  echo "== $name"
  timeout "$limit" "$@" > "$out/$name.log" 2>&1 || { echo "$name: exit $?"; status=1; }
  tail -n 40 "$out/$name.log"
}
step bench_normal 270 "$py" -m experiments.benchmark "${bench_args[@]}" --copy-baseline --json "$out/gpu.json" \
  --caveat "$caveat"
step gpu_check 120 "$py" scripts/gpu_check.py --out "$out" "${check_args[@]}"
step bench_offset 150 "$py" -m experiments.benchmark "${bench_args[@]}" --copy-baseline --data offset \
  --json "$out/gpu_offset.json" --caveat "$caveat"
exit "$status"
