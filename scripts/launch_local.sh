#!/usr/bin/env bash
# Run one command as N JAX processes on this machine (CPU collectives over localhost), the way
# a cluster runs one per host:
#   bash scripts/launch_local.sh N -- python -m experiments.train_lm --mesh=data:4 ...
# Each process gets `--coordinator=localhost:PORT --num_processes=N --process_id=I` appended
# (PORT: a free one), JAX_PLATFORMS=cpu and DEVICES_PER_PROCESS simulated CPU devices
# (default 2, via XLA_FLAGS), so `--mesh` spans N * DEVICES_PER_PROCESS devices. Output lines
# are prefixed with `[pI] `. The exit status is 0 when every process succeeds; when one fails
# the others get GRACE_S seconds (default 5) to notice and are then stopped, and the status is
# the first failure's.
set -uo pipefail
usage="usage: $0 N -- COMMAND [ARGS...]   (N >= 1 processes)"
[[ $# -ge 3 && $1 =~ ^[1-9][0-9]*$ && $2 == "--" ]] || { echo "$usage" >&2; exit 2; }
n=$1
shift 2
per=${DEVICES_PER_PROCESS:-2}
[[ $per =~ ^[1-9][0-9]*$ ]] || { echo "DEVICES_PER_PROCESS=$per is not a positive integer" >&2; exit 2; }
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])')
export JAX_PLATFORMS=cpu
export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=$per"
export PYTHONUNBUFFERED=1

pids=()
for ((i = 0; i < n; i++)); do
  "$@" --coordinator="localhost:$port" --num_processes="$n" --process_id="$i" \
    > >(sed -u "s/^/[p$i] /") 2> >(sed -u "s/^/[p$i] /" >&2) &
  pids+=("$!")
done

stop_all() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
}
trap 'stop_all; exit 130' INT TERM

status=0
killer=
running=("${pids[@]}")
while ((${#running[@]} > 0)); do
  wait -n -p done_pid "${running[@]}"
  rc=$?
  rest=()
  for p in "${running[@]}"; do [[ $p != "$done_pid" ]] && rest+=("$p"); done
  running=("${rest[@]}")
  if ((rc != 0 && status == 0)); then
    for ((i = 0; i < n; i++)); do [[ ${pids[$i]} == "$done_pid" ]] && who=$i; done
    echo "launch_local: process ${who:-?} exited with status $rc" >&2
    status=$rc
    # (its own output closed, and its sleep ended with it: nothing holds the caller's pipes)
    (
      trap 'kill "$sp" 2>/dev/null; exit 0' TERM
      sleep "${GRACE_S:-5}" & sp=$!
      wait "$sp" && stop_all
    ) > /dev/null 2>&1 &
    killer=$!
  fi
done
[[ -n $killer ]] && kill "$killer" 2>/dev/null
wait 2>/dev/null
exit "$status"
