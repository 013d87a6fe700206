#!/usr/bin/env bash
# Starts a 3-member supernode cluster on loopback in the foreground (what `make run` does).
# Data lives under ./.run/{a,b,c}; a second run restarts the same members from it.
# Ctrl-C (or SIGTERM) stops all three the orderly way.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=./bin/supernode
RUN=./.run
mkdir -p "$RUN"

names=(a b c)
http=(127.0.0.1:8002 127.0.0.1:8012 127.0.0.1:8022)
raft=(127.0.0.1:8003 127.0.0.1:8013 127.0.0.1:8023)
pids=()

stop() {
  trap - INT TERM EXIT
  echo "stopping members..." >&2
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  echo "all members stopped" >&2
}
trap stop INT TERM EXIT

for i in 0 1 2; do
  n=${names[$i]}
  args=(--id "$n" --data-dir "$RUN/$n" --http-addr "${http[$i]}" --raft-addr "${raft[$i]}" --log-format console)
  # first run: a bootstraps, b and c join it; later runs: each member restarts from its data
  # dir, where --bootstrap and --join are ignored
  if [ "$i" = 0 ]; then args+=(--bootstrap); else args+=(--join "${http[0]}"); fi
  "$BIN" "${args[@]}" > >(sed -u "s/^/[$n] /") 2>&1 &
  pids+=($!)
  if [ "$i" = 0 ] && [ ! -d "$RUN/b/raft" ]; then
    # a new cluster: the first member must lead before the others ask it to add them
    for _ in $(seq 1 100); do
      curl -fsS "http://${http[0]}/readyz" >/dev/null 2>&1 && break
      kill -0 "${pids[0]}" 2>/dev/null || { echo "member a exited" >&2; exit 1; }
      sleep 0.1
    done
  fi
done

cat >&2 <<MSG

supernode cluster running (data under $RUN):
  members:  curl -s http://${http[0]}/cluster/members
  state:    curl -s http://${http[1]}/cluster/state
  metrics:  curl -s http://${http[2]}/metrics
Ctrl-C stops all three.

MSG
# exit (and stop the others) as soon as any member exits
wait -n "${pids[@]}" || true
