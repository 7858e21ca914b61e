# Sourced by the timing scripts (time_lenet.sh, compare_lenet_wall.sh): one helper, the real time of a command.

real_seconds() {  # real_seconds LOG COMMAND...: run COMMAND (its output into LOG), print its real time in seconds;
  local log="$1"; shift  # on failure show LOG and fail
  local start end
  start=$(date +%s.%N)
  "$@" > "$log" 2>&1 || { cat "$log" >&2; return 1; }
  end=$(date +%s.%N)
  python -c "print(round($end - $start, 3))"
}
