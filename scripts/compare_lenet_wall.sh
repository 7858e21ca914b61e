#!/usr/bin/env bash
# LeNet's three-config wall time, an earlier revision against the working tree, as whole commands (interpreter
# start and imports included) run alternately so that both sides meet the same machine noise. Run from the
# repository root with ../shared beside it, in the README's environment:
#
#     bash scripts/compare_lenet_wall.sh [REV] [ROUNDS] [JSON]   # default 3ac81a3 (before the experiments
#                                                                 # redesign), 8 rounds, benchmarks/lenet/before_after.json
# Both sides train on the photos folder (--data ../shared/data/cats_dogs): the earlier revision has no embedded
# array file. Both compile everything (JAX_ENABLE_COMPILATION_CACHE=false): since 3ede84e a run loads the programs
# an earlier run compiled (a persistent compilation cache), which a comparison of cold runs must not see;
# scripts/time_lenet.sh measures cold and warm runs.
set -euo pipefail
cd "$(dirname "$0")/.."
rev="${1:-3ac81a3}"
rounds="${2:-8}"
json="${3:-benchmarks/lenet/before_after.json}"
data="$(cd ../shared/data/cats_dogs && pwd)"
scratch="$(mktemp -d)"
trap 'git worktree remove --force "$scratch/before" >/dev/null 2>&1 || true; rm -rf "$scratch"' EXIT
git worktree add --detach "$scratch/before" "$rev" >/dev/null

source scripts/real_seconds.sh
times=()
one() {  # one SIDE DIR: the real time of one run, appended to times as "SIDE SECONDS"
  local seconds
  seconds=$(real_seconds "$scratch/log" env -C "$2" PYTHONPATH="$2" JAX_ENABLE_COMPILATION_CACHE=false \
    python -m experiments.lenet --data "$data" --out "$scratch/out_$1")
  times+=("$1" "$seconds")
  echo "round $round $1: ${times[-1]} s"
}
for round in $(seq "$rounds"); do
  one before "$scratch/before"
  one after "$PWD"
done

python - "$json" "$rev" "$(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo +changes)" "${times[@]}" <<'PY'
import datetime, importlib.metadata, importlib.util, json, platform, statistics, sys
path, rev, head, *pairs = sys.argv[1:]
runs = {"before": [], "after": []}
for side, seconds in zip(pairs[::2], pairs[1::2]):
    runs[side].append(float(seconds))
median = {side: statistics.median(v) for side, v in runs.items()}
paired = statistics.median(a / b for a, b in zip(runs["after"], runs["before"]))  # each round's own ratio
versions = {name: importlib.metadata.version(name) for name in ("jax", "jaxlib", "flax", "optax", "matplotlib")}
environment = {"python": f"{sys.executable} ({platform.python_version()})", **versions,
               # flax.nnx imports IPython when it is installed, which lengthens every command that imports flax.nnx
               "ipython_installed": importlib.util.find_spec("IPython") is not None}
record = {"what": "real time of `python -m experiments.lenet --data ../shared/data/cats_dogs` (three configs), "
                  "alternating runs (scripts/compare_lenet_wall.sh), no persistent compilation cache",
          "date": datetime.date.today().isoformat(), "environment": environment, "before": rev, "after": head,
          "runs": runs, "median": median,
          "after_over_before": round(median["after"] / median["before"], 4),
          "paired_ratio_median": round(paired, 4)}
open(path, "w").write(json.dumps(record, indent=1) + "\n")
print(f"median before {median['before']:.2f} s, after {median['after']:.2f} s: "
      f"x{record['after_over_before']:.3f} (median of the rounds' own ratios x{paired:.3f}); wrote {path}")
PY
