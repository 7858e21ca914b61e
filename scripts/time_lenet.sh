#!/usr/bin/env bash
# The raw results behind README's LeNet timing table (benchmarks/lenet/): `python -m experiments.lenet` against the
# lesson's PyTorch script (scripts/torch_lenet_baseline.py), each a whole command (interpreter start and imports
# included), split into data, compilation, training and evaluation by the commands themselves. ROUNDS alternating
# rounds, each of: JAX with an empty compilation cache (cold), JAX again with the cache that run filled (warm, as a
# second run on a machine is), PyTorch on the same 32x32 arrays (--mode predecoded); the order turns every round so
# that a drift of the machine's load meets every side. Then PyTorch's lesson pipeline once (--mode lesson: every JPEG
# decoded every epoch, 40 s of data loading; LESSON=0 leaves it out). Run from the repository root with ../shared
# beside it, on a quiet machine:
#
#     bash scripts/time_lenet.sh [OUT_DIR] [ROUNDS]        # default benchmarks/lenet, 4 rounds
#
# Writes OUT_DIR/process_seconds.json (each command's median real time; every run with the load before it and its
# split; the medians; the paired ratios to PyTorch), jax_timing.json (the cold runs' median split, the warm runs'
# under "warm"), jax_metrics.json (the runs' metrics, checked identical), torch_predecoded.json (the script's JSON,
# its split the rounds' medians) and torch_lesson.json.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-benchmarks/lenet}"
rounds="${2:-4}"
mkdir -p "$out"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

source scripts/real_seconds.sh
runs="$scratch/runs.tsv"  # side, round, real seconds, 1-minute load before, its split (a JSON file)
one() {  # one SIDE ROUND: run that side once, append a line to $runs
  local side="$1" round="$2" load seconds split
  load=$(cut -d' ' -f1 /proc/loadavg)
  case "$side" in
    jax_cold|jax_warm)
      [ "$side" = jax_cold ] && rm -rf "$scratch/xla"  # an empty cache: everything compiles
      seconds=$(real_seconds "$scratch/log" python -m experiments.lenet --out "$scratch/$side" \
        --compile-cache "$scratch/xla")
      split="$scratch/$side.$round.json"
      cp "$scratch/$side/timing.json" "$split"
      cp "$scratch/$side/metrics.json" "$scratch/metrics.$side.$round.json" ;;
    torch_predecoded)
      split="$scratch/$side.$round.json"
      seconds=$(real_seconds "$scratch/log" python scripts/torch_lenet_baseline.py --mode predecoded --json "$split")
      cp "$split" "$out/torch_predecoded.json" ;;
  esac
  printf '%s\t%s\t%s\t%s\t%s\n' "$side" "$round" "$seconds" "$load" "$split" >> "$runs"
  echo "round $round $side: $seconds s (load before: $load)"
}
for round in $(seq "$rounds"); do
  if (( round % 2 )); then order="jax_cold jax_warm torch_predecoded"; else order="torch_predecoded jax_cold jax_warm"; fi
  for side in $order; do one "$side" "$round"; done
done
lesson_seconds=""
if [ "${LESSON:-1}" != 0 ]; then
  lesson_seconds=$(real_seconds "$scratch/log" python scripts/torch_lenet_baseline.py --mode lesson \
    --data ../shared/data/cats_dogs --json "$out/torch_lesson.json")
  echo "torch_lenet_baseline.py --mode lesson: $lesson_seconds s"
fi

python - "$out" "$runs" "$scratch" "$rounds" "$lesson_seconds" <<'PY'
import datetime, glob, json, os, statistics, subprocess, sys
out, runs_file, scratch, rounds, lesson = sys.argv[1:]
PHASES = ("wall", "data", "compile", "train", "eval", "bn_extras", "other", "train_images_per_s")
# The keys README's table test reads (tests/experiments/test_readme.py): a command line per key, cold first.
COMMANDS = {"jax_cold": "python -m experiments.lenet --out OUT --compile-cache EMPTY_DIR (cold)",
            "jax_warm": "python -m experiments.lenet --out OUT --compile-cache DIR (warm: the cold run's cache)",
            "torch_predecoded": "python scripts/torch_lenet_baseline.py --mode predecoded --json FILE",
            "torch_lesson": "python scripts/torch_lenet_baseline.py --mode lesson --data ../shared/data/cats_dogs "
                            "--json FILE"}
runs = {side: [] for side in ("jax_cold", "jax_warm", "torch_predecoded")}
for line in open(runs_file):
    side, round_, seconds, load, split = line.rstrip("\n").split("\t")
    timing = json.load(open(split))
    runs[side].append({"round": int(round_), "real": float(seconds), "load_before": float(load),
                       "split": {k: timing[k] for k in PHASES if k in timing}})
metrics = {json.dumps(json.load(open(f)), sort_keys=True) for f in glob.glob(f"{scratch}/metrics.*.json")}
if len(metrics) != 1:
    sys.exit(f"time_lenet.sh: the JAX runs' metrics differ ({len(metrics)} versions): nothing written")


def median(side, key):
    values = [r["real"] if key == "real" else r["split"][key] for r in runs[side] if key == "real" or key in r["split"]]
    return round(statistics.median(values), 3) if values else None


medians = {side: {k: v for k in ("real", *PHASES) if (v := median(side, k)) is not None} for side in runs}


def paired(side, key):  # the median of each round's own ratio JAX / PyTorch
    torch = {r["round"]: r for r in runs["torch_predecoded"]}
    pick = lambda r: r["real"] if key == "real" else r["split"][key]  # noqa: E731
    return round(statistics.median(pick(r) / pick(torch[r["round"]]) for r in runs[side]), 4)


git = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True).stdout.strip()
record = {"what": "real time of each whole command (scripts/time_lenet.sh), interpreter start and imports included: "
                  f"the median of {rounds} alternating rounds (the lesson mode: one run); every run below",
          **{COMMANDS[side]: medians[side]["real"] for side in runs}}
if lesson:
    record[COMMANDS["torch_lesson"]] = float(lesson)
record.update({"date": datetime.date.today().isoformat(), "git": git, "cpu_count": os.cpu_count(),
               "jax_over_torch_predecoded": {side: {"whole_command": paired(side, "real"),
                                                    "training": paired(side, "train")}
                                             for side in ("jax_cold", "jax_warm")},
               "median": medians, "runs": runs})
open(f"{out}/process_seconds.json", "w").write(json.dumps(record, indent=1) + "\n")
# jax_timing.json: the cold runs' median split, and the warm runs' under "warm"
jax = {k: v for k, v in medians["jax_cold"].items() if k != "real"}
open(f"{out}/jax_timing.json", "w").write(json.dumps({**jax, "warm": {k: v for k, v in medians["jax_warm"].items()
                                                                      if k != "real"}}, indent=1) + "\n")
open(f"{out}/jax_metrics.json", "w").write(json.dumps(json.loads(metrics.pop()), indent=1))
# torch_predecoded.json: the last run as the script writes it, its split replaced by the rounds' medians
torch = json.load(open(f"{out}/torch_predecoded.json"))
torch.update({k: v for k, v in medians["torch_predecoded"].items() if k != "real"}, median_of_rounds=int(rounds))
open(f"{out}/torch_predecoded.json", "w").write(json.dumps(torch, indent=1))
for side, m in medians.items():
    print(f"{side:17s} median real {m['real']:7.3f} s  " + "  ".join(f"{k} {m[k]}" for k in PHASES if k in m))
for side, r in record["jax_over_torch_predecoded"].items():
    print(f"{side} / torch_predecoded, median of the rounds' own ratios: whole command x{r['whole_command']}, "
          f"training phase x{r['training']}")
print(f"wrote {out}/process_seconds.json, jax_timing.json, jax_metrics.json, torch_predecoded.json"
      + (", torch_lesson.json" if lesson else ""))
PY
