#!/usr/bin/env bash
# Benchmarks of the replicated core (make bench / make bench-quick). Results go to
# bench/results/. No figure here is a pass/fail threshold: only errors fail the run.
#   full:  3 raft-reports runs of 10s, 5 leader kills, Go benchmarks of the FSM.
#   quick: 1 raft-reports run of 3s, 2 leader kills (a smoke run for CI, about a minute).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-full}
mkdir -p bench/results bin
go build -o bin/corebench ./bench/cmd/corebench
case "$mode" in
  full)
    ./bin/corebench --runs 3 --kills 5 --duration 10s --out bench/results/core.md
    go test -run '^$' -bench 'Snapshot10k|ApplyPieceReports|Persist10k' -benchtime 5x ./fsm/ | tee bench/results/fsm.txt
    ;;
  quick)
    ./bin/corebench --runs 1 --kills 2 --duration 3s --out bench/results/core-quick.md
    ;;
  *)
    echo "usage: $0 full|quick" >&2
    exit 2
    ;;
esac
