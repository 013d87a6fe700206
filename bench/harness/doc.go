// Package harness is what the benchmark programs share: a real HTTP origin on loopback
// that counts what it sends, a supernode cluster of real processes (through test/procs),
// dfget processes started together and checked, plain HTTP fetches as the "native"
// baseline, members' /metrics, host CPU and process memory, and the statistics of runs.
//
// Every process it starts is stopped: by the Close of what started it, and on SIGINT or
// SIGTERM by Cleanup (see HandleSignals). Every wait is bounded by a context or a timeout.
package harness
