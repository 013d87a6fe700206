// Command benchreport assembles bench/results/latest.md from the benchmark programs'
// Markdown results: the first table of each file whose first column is "figure" becomes
// rows of one table (figure, ours, baseline, ratio, target, notes), under the machine and
// the date. Columns a file lacks are "-"; a unit in a column's header, as in
// "ours (MiB/s)", moves into the figure's name.
//
//	benchreport --out bench/results/latest.md bench/results/p2p.md bench/results/core.md ...
//
// Missing input files are listed, not fatal: a partial run still gets its summary.
package main

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/dfly-ha/dfha/bench/harness"
)

var columns = []string{"figure", "ours", "baseline", "ratio", "target", "notes"}

func main() {
	fs := pflag.NewFlagSet("benchreport", pflag.ContinueOnError)
	out := fs.String("out", "bench/results/latest.md", "file to write")
	title := fs.String("title", "make bench", "what produced the inputs, for the header")
	plot := fs.String("plot", "scale.png", "image to show under the table (relative to --out; empty: none)")
	if err := fs.Parse(os.Args[1:]); err != nil {
		os.Exit(2)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# Benchmark results (%s)\n\n", *title)
	fmt.Fprintf(&b, "machine: %s; date: %s\n\n", harness.Machine(), time.Now().UTC().Format("2006-01-02 15:04 UTC"))
	fmt.Fprintf(&b, "Every process on the same host, over 127.0.0.1. A run is marked **CPU-bound** when the host CPU was busy at least 90%% of it. ")
	fmt.Fprintf(&b, "Figures are medians with the spread (min–max) over the runs named; the details, and every flag the binaries were run with, are in the files listed below.\n\n")
	fmt.Fprintf(&b, "| %s |\n|%s\n", strings.Join(columns, " | "), strings.Repeat(" --- |", len(columns)))
	var sources, missing []string
	for _, path := range fs.Args() {
		rows, err := table(path)
		if err != nil {
			missing = append(missing, fmt.Sprintf("%s (%v)", path, err))
			continue
		}
		sources = append(sources, fmt.Sprintf("[%s](%s)", filepath.Base(path), filepath.Base(path)))
		for _, r := range rows {
			fmt.Fprintf(&b, "| %s |\n", strings.Join(r, " | "))
		}
	}
	fmt.Fprintf(&b, "\nFrom: %s.\n", strings.Join(sources, ", "))
	if len(missing) > 0 {
		fmt.Fprintf(&b, "\nNot available: %s.\n", strings.Join(missing, "; "))
	}
	if *plot != "" {
		if _, err := os.Stat(filepath.Join(filepath.Dir(*out), *plot)); err == nil {
			fmt.Fprintf(&b, "\n![distribution time against N](%s)\n", *plot)
		}
	}
	if err := os.WriteFile(*out, []byte(b.String()), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "benchreport:", err)
		os.Exit(1)
	}
	fmt.Print(b.String())
}

// table reads the first results table of a Markdown file, mapped onto columns.
func table(path string) ([][]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var (
		idx  []int    // input column of each output column, -1: none
		unit []string // unit of each output column from its header, e.g. "MiB/s"
		rows [][]string
	)
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if !strings.HasPrefix(line, "|") {
			if idx != nil {
				break // the end of the table
			}
			continue
		}
		cells := splitRow(line)
		if idx == nil {
			if len(cells) == 0 || !strings.EqualFold(cells[0], "figure") {
				continue
			}
			idx, unit = make([]int, len(columns)), make([]string, len(columns))
			for o, name := range columns {
				idx[o] = -1
				for i, h := range cells {
					base, u, _ := strings.Cut(h, " (")
					if strings.EqualFold(strings.TrimSpace(base), name) {
						idx[o], unit[o] = i, strings.TrimSuffix(u, ")")
					}
				}
			}
			continue
		}
		if strings.Trim(strings.Join(cells, ""), "-: ") == "" {
			continue // the separator row
		}
		row := make([]string, len(columns))
		for o := range columns {
			row[o] = "-"
			if i := idx[o]; i >= 0 && i < len(cells) && cells[i] != "" {
				row[o] = cells[i]
			}
		}
		for o, u := range unit {
			if u != "" && o > 0 && idx[o] >= 0 && !strings.Contains(row[0], "("+u+")") {
				row[0] += " (" + u + ")"
			}
		}
		rows = append(rows, row)
	}
	if idx == nil {
		return nil, fmt.Errorf("no table with a figure column")
	}
	return rows, sc.Err()
}

// splitRow splits "| a | b |" into its trimmed cells.
func splitRow(line string) []string {
	line = strings.TrimSuffix(strings.TrimPrefix(line, "|"), "|")
	parts := strings.Split(line, "|")
	for i := range parts {
		parts[i] = strings.TrimSpace(parts[i])
	}
	return parts
}
