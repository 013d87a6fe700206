#!/usr/bin/env bash
# Benchmarks (make bench, make bench-quick, make e2e). Results go to bench/results/.
#   full:  corebench (raft-reports, failover of the core, elections without kills), the FSM
#          microbenchmarks, cdnbench, p2pbench (every figure with dfget: origin-egress,
#          scale, single, raft-reports at dfget's batch, failover during distributions,
#          memory), then latest.md and scale.png. About 15 minutes on 2 cores.
#   quick: a guard for CI, under 3 minutes: corebench's smoke run and p2pbench with N up to
#          10 and a small file. It fails when a download was wrong or the origin sent more
#          than 1.05 copies of a file; no figure of time is a threshold.
#   e2e:   end to end on real processes: the demo, then distributions with the leader killed
#          once each (every download must be right).
# Every mode goes on after a failing step, writes what it has, and fails at the end.
set -uo pipefail
cd "$(dirname "$0")/.."
mode=${1:-full}
res=bench/results
mkdir -p "$res" bin
go build -o bin/ ./bench/cmd/corebench ./bench/cmd/cdnbench ./bench/cmd/p2pbench ./bench/cmd/benchreport ./bench/cmd/demo || exit 1
status=0
step() { echo "== $*" >&2; "$@" || { echo "bench: FAILED: $*" >&2; status=1; }; }
# The figures with dfget need bin/dfget (make build); without it they fail, the rest runs.
dfget() {
  if [ -x bin/dfget ]; then step "$@"; else echo "bench: FAILED: bin/dfget is missing, not run: $*" >&2; status=1; fi
}

case "$mode" in
  full)
    step ./bin/corebench --runs 3 --kills 5 --duration 10s --out "$res/core.md"
    go test -run '^$' -bench 'Snapshot10k|ApplyPieceReports|Persist10k' -benchtime 5x ./fsm/ > "$res/fsm.txt" || status=1
    cat "$res/fsm.txt"
    step ./bin/cdnbench --out "$res/cdn.md"
    dfget ./bin/p2pbench --out "$res/p2p.md" --plot "$res/scale.png"
    ./bin/benchreport --out "$res/latest.md" "$res/p2p.md" "$res/core.md" "$res/cdn.md" > /dev/null
    echo "bench: results in $res/latest.md" >&2
    ;;
  quick)
    step ./bin/corebench --runs 1 --kills 2 --duration 3s --out "$res/core-quick.md"
    step ./bin/cdnbench --size 32MiB --runs 1 --out "$res/cdn-quick.md"
    dfget ./bin/p2pbench --figures scale,single --p2p-n 1,5,10 --native-n 1,5 --egress-n 1,10 \
      --runs 1 --native-runs 1 --file-mib 4 --rate-mibps 4 --single-mib 16 --single-runs 1 \
      --max-egress 1.05 --peer-timeout 1m --out "$res/p2p-quick.md"
    ./bin/benchreport --title "make bench-quick" --plot "" --out "$res/latest-quick.md" "$res/p2p-quick.md" "$res/core-quick.md" "$res/cdn-quick.md" > /dev/null
    ;;
  e2e)
    dfget ./bin/demo
    dfget ./bin/p2pbench --figures failover --kills 3 --failover-peers 10 --file-mib 8 --rate-mibps 4 \
      --peer-timeout 2m --out "$res/e2e.md"
    ;;
  *)
    echo "usage: $0 full|quick|e2e" >&2
    exit 2
    ;;
esac
exit $status
