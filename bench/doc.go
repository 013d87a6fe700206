// Package bench holds the benchmark suite: tools that start real supernode processes on
// loopback, drive them, and write figures with their baselines to bench/results/.
package bench
