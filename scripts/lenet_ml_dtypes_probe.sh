#!/usr/bin/env bash
# What ml_dtypes' import costs LeNet's whole command. ml_dtypes (imported by jax) registers its NumPy ufunc loops at
# import; version 0.7.0 registers enough of them that NumPy's linear search in PyUFunc_AddLoop dominates (perf: most
# samples in PyUFunc_AddLoop and the tuple comparisons it makes). This runs the warm `python -m experiments.lenet`
# (the compilation cache of a first run, as scripts/time_lenet.sh's warm rounds) alternately with the installed
# ml_dtypes and with ml_dtypes 0.6.0 first on PYTHONPATH, and times `import ml_dtypes` (after numpy) in both.
# A probe, not a change: the project does not pin ml_dtypes. Run from the repository root on a quiet machine, with
# pip able to download ml_dtypes 0.6.0:
#
#     bash scripts/lenet_ml_dtypes_probe.sh [ROUNDS] [JSON]   # default 6, benchmarks/probes/lenet_ml_dtypes.json
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-6}"
json="${2:-benchmarks/probes/lenet_ml_dtypes.json}"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
python -m pip install -q --no-deps --target "$scratch/ml_dtypes_0.6.0" "ml_dtypes==0.6.0"
source scripts/real_seconds.sh

python -m experiments.lenet --out "$scratch/first" --compile-cache "$scratch/xla" > /dev/null 2>&1  # fill the cache
runs=()
for round in $(seq "$rounds"); do
  for side in installed 0.6.0; do
    path=""
    [ "$side" = 0.6.0 ] && path="$scratch/ml_dtypes_0.6.0"
    load=$(cut -d' ' -f1 /proc/loadavg)
    seconds=$(real_seconds "$scratch/log" env PYTHONPATH="$path" python -m experiments.lenet --out "$scratch/$side" \
      --compile-cache "$scratch/xla")
    import_s=$(env PYTHONPATH="$path" python -c "import time, numpy; t = time.perf_counter(); import ml_dtypes; \
print(ml_dtypes.__version__, round(time.perf_counter() - t, 4))")
    runs+=("$side" "$round" "$seconds" "$load" "$import_s")
    echo "round $round ml_dtypes $side: $seconds s, import ${import_s#* } s (load before: $load)"
  done
done

python - "$json" "$(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo +changes)" "${runs[@]}" <<'PY'
import datetime, json, statistics, sys
path, head, *fields = sys.argv[1:]
runs = [{"ml_dtypes": side, "round": int(r), "seconds": float(s), "load_before": float(load),
         "ml_dtypes_version": imp.split()[0], "import_seconds": float(imp.split()[1])}
        for side, r, s, load, imp in zip(*[iter(fields)] * 5)]
sides = {side: [run for run in runs if run["ml_dtypes"] == side] for side in ("installed", "0.6.0")}
median = {side: statistics.median(run["seconds"] for run in rs) for side, rs in sides.items()}
imports = {side: statistics.median(run["import_seconds"] for run in rs) for side, rs in sides.items()}
paired = statistics.median(b["seconds"] / a["seconds"] for a, b in zip(sides["installed"], sides["0.6.0"]))
record = {"what": "warm `python -m experiments.lenet` (filled compilation cache), installed ml_dtypes vs ml_dtypes 0.6.0 "
                  "first on PYTHONPATH, alternating (scripts/lenet_ml_dtypes_probe.sh)",
          "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "git": head,
          "versions": {side: rs[0]["ml_dtypes_version"] for side, rs in sides.items()},
          "median_seconds": median, "median_import_seconds": imports, "paired_ratio_0.6.0_over_installed": paired,
          "runs": runs}
with open(path, "w") as f:
    json.dump(record, f, indent=1)
print(f"median whole command: installed {median['installed']:.3f} s, 0.6.0 {median['0.6.0']:.3f} s "
      f"(paired x{paired:.3f}); import ml_dtypes {imports['installed']:.3f} s vs {imports['0.6.0']:.3f} s; wrote {path}")
PY
