// Command dfget downloads a file through a supernode cluster and its peers, serving the
// pieces it holds to other peers meanwhile. `dfget --help` lists every flag and default.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	"go.uber.org/zap"

	"github.com/dfly-ha/dfha/cmd/internal/logging"
	"github.com/dfly-ha/dfha/cmd/internal/units"
	"github.com/dfly-ha/dfha/peer"
	"github.com/dfly-ha/dfha/sdk/api"
)

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1 // the download failed
	exitUsage   = 2 // bad flags or arguments
)

// Environment variables read when the flags do not say.
const (
	envSupernodes = "DFGET_SUPERNODES"
	envToken      = "DFGET_TOKEN"
)

func main() {
	// A write to a closed stdout (dfget -o - | head) must fail with EPIPE, so that the
	// download cleans up and leaves the cluster, instead of killing the process.
	signal.Ignore(syscall.SIGPIPE)
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// usageError is a bad flag or argument: exit 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return &usageError{fmt.Sprintf(format, args...)}
}

// options are the parsed command line.
type options struct {
	peer      peer.Config
	req       peer.Request
	stdout    bool // -o -: the file goes to stdout
	timeout   time.Duration
	seedFor   time.Duration
	json      bool
	quiet     bool
	logLevel  string
	logFormat string
}

func run(args []string, stdout, stderr io.Writer) int {
	opts, err := parse(args, stdout)
	if errors.Is(err, pflag.ErrHelp) {
		return exitOK
	}
	if err == nil {
		err = download(opts, stdout, stderr)
	}
	var ue *usageError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "dfget: %v\n", err)
		return exitUsage
	}
	fmt.Fprintf(stderr, "dfget: %v\n", err)
	return exitFailure
}

func parse(args []string, stdout io.Writer) (*options, error) {
	fs := pflag.NewFlagSet("dfget", pflag.ContinueOnError)
	fs.SortFlags = false
	fs.SetOutput(io.Discard) // errors are reported in one line by run
	var (
		o                       options
		url, output, supernodes string
		node, digest, md5Hex    string
		filter, localLimit      string
		uploadLimit, timeout    string
		tokenFile               string
		headers                 []string
		peerAddr, advertiseIP   string
		workers                 int
	)
	fs.StringVarP(&url, "url", "u", "", "source `URL` (http, https)")
	fs.StringVarP(&output, "output", "o", "", "output file (`PATH`); '-' streams the file to stdout in order")
	fs.StringVar(&supernodes, "supernodes", "", "supernode endpoints (a `LIST` of HOST:PORT); one is enough, the others are discovered (also $"+envSupernodes+")")
	fs.StringVarP(&node, "node", "n", "", "the same as --supernodes (Dragonfly's spelling; a `LIST` of HOST:PORT)")
	fs.StringVar(&digest, "digest", "", "expected digest of the whole file (`ALGO:HEX`, sha256 or md5); a mismatch is an error")
	fs.StringVarP(&md5Hex, "md5", "m", "", "the same as --digest md5:`HEX`")
	fs.StringArrayVarP(&headers, "header", "H", nil, "header sent to the origin (`'K: V'`; repeatable)")
	fs.StringVarP(&filter, "filter", "f", "", "query parameters ignored when identifying the task (a `LIST` separated by ',' or '&')")
	fs.StringVarP(&localLimit, "locallimit", "s", "none", "download rate limit (`RATE`: 20MiB/s, 50MB/s, bytes per second)")
	fs.StringVar(&uploadLimit, "upload-limit", "none", "upload rate limit (`RATE`)")
	fs.StringVarP(&timeout, "timeout", "e", "none", "give up after this long (a `DURATION` such as 90s or 5m, or seconds)")
	fs.StringVar(&peerAddr, "peer-addr", peer.DefaultPeerAddr, "where this peer serves pieces to other peers (`HOST:PORT`; port 0: any free port)")
	fs.StringVar(&advertiseIP, "advertise-ip", "", "address other peers use (an `IP`; default: the local address that reaches the supernodes)")
	fs.DurationVar(&o.seedFor, "seed-for", 0, "keep serving pieces this long after finishing (a `DURATION`; default 0s: leave at once)")
	fs.StringVar(&tokenFile, "token-file", "", "`PATH` of a file holding the bearer token of a cluster started with --token-file (also $"+envToken+")")
	fs.BoolVar(&o.json, "json", false, "print one JSON summary line when done (on stdout; on stderr with -o -)")
	fs.BoolVarP(&o.quiet, "quiet", "q", false, "no progress bar (there is none when stderr is not a terminal)")
	fs.IntVar(&workers, "workers", peer.DefaultWorkers, "`N` pieces fetched at once")
	fs.StringVar(&o.logLevel, "log-level", "warn", "log `LEVEL`: debug, info, warn or error (logs go to stderr)")
	fs.StringVar(&o.logFormat, "log-format", "console", "log `FORMAT`: console or json")
	fs.Usage = func() {}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			fmt.Fprintf(stdout, "Usage: dfget -u URL -o PATH --supernodes HOST:PORT[,HOST:PORT...] [flags]\n\n%s\n"+
				"Environment: $%s (supernode endpoints), $%s (bearer token).\n", fs.FlagUsages(), envSupernodes, envToken)
			return nil, err
		}
		return nil, usagef("%v (see dfget --help)", err)
	}
	if fs.NArg() > 0 {
		return nil, usagef("unexpected arguments: %s (see dfget --help)", strings.Join(fs.Args(), " "))
	}

	switch {
	case url == "":
		return nil, usagef("no URL: give -u/--url")
	case output == "":
		return nil, usagef("no output: give -o/--output PATH, or -o - for stdout")
	}
	if _, err := api.CanonicalURL(url, nil); err != nil {
		return nil, usagef("--url %q: want an absolute http or https URL with a host", url)
	}
	o.req.URL = url
	if output == "-" {
		o.stdout = true
	} else {
		o.req.Output = output
	}

	eps, err := endpoints(supernodes, node)
	if err != nil {
		return nil, err
	}
	o.peer.Supernodes = eps

	if o.req.Digest, err = expectedDigest(digest, md5Hex); err != nil {
		return nil, err
	}
	if o.req.Headers, err = parseHeaders(headers); err != nil {
		return nil, err
	}
	for _, f := range strings.FieldsFunc(filter, func(r rune) bool { return r == ',' || r == '&' }) {
		if f = strings.TrimSpace(f); f != "" {
			o.req.Filter = append(o.req.Filter, f)
		}
	}
	if o.peer.DownloadLimit, err = parseRate("--locallimit", localLimit); err != nil {
		return nil, err
	}
	if o.peer.UploadLimit, err = parseRate("--upload-limit", uploadLimit); err != nil {
		return nil, err
	}
	if o.timeout, err = parseTimeout(timeout); err != nil {
		return nil, err
	}
	if o.seedFor < 0 {
		return nil, usagef("--seed-for %s: want a duration of 0 or more", o.seedFor)
	}
	if _, _, err := net.SplitHostPort(peerAddr); err != nil {
		return nil, usagef("--peer-addr %q: want HOST:PORT", peerAddr)
	}
	o.peer.PeerAddr = peerAddr
	if advertiseIP != "" && net.ParseIP(advertiseIP) == nil {
		return nil, usagef("--advertise-ip %q: want an IP address", advertiseIP)
	}
	o.peer.AdvertiseIP = advertiseIP
	if workers < 1 || workers > 64 {
		return nil, usagef("--workers %d: want 1 to 64", workers)
	}
	o.peer.Workers = workers
	if o.peer.Token, err = token(tokenFile); err != nil {
		return nil, err
	}
	return &o, nil
}

// endpoints merges --supernodes and --node, else $DFGET_SUPERNODES.
func endpoints(flags ...string) ([]string, error) {
	list := strings.Join(flags, ",")
	from := "--supernodes/--node"
	if strings.Trim(list, ", ") == "" {
		list, from = os.Getenv(envSupernodes), "$"+envSupernodes
	}
	var out []string
	for _, ep := range strings.Split(list, ",") {
		if ep = strings.TrimSpace(ep); ep == "" {
			continue
		}
		host, port, err := net.SplitHostPort(ep)
		if p, perr := strconv.Atoi(port); err != nil || host == "" || perr != nil || p < 1 || p > 65535 {
			return nil, usagef("%s: %q: want HOST:PORT", from, ep)
		}
		out = append(out, ep)
	}
	if len(out) == 0 {
		return nil, usagef("no supernodes: give --supernodes, -n/--node or $%s", envSupernodes)
	}
	return out, nil
}

// expectedDigest combines --digest and --md5 into one normalized ALGO:HEX.
func expectedDigest(digest, md5Hex string) (string, error) {
	d, err := api.NormalizeDigest(digest)
	if err != nil {
		return "", usagef("--digest %q: want sha256:<64 hex> or md5:<32 hex>", digest)
	}
	if md5Hex == "" {
		return d, nil
	}
	m, err := api.NormalizeDigest("md5:" + md5Hex)
	if err != nil {
		return "", usagef("--md5 %q: want 32 hex characters", md5Hex)
	}
	if d != "" && d != m {
		return "", usagef("--digest and --md5 disagree")
	}
	return m, nil
}

// parseHeaders reads repeated 'K: V' headers.
func parseHeaders(hs []string) (map[string]string, error) {
	if len(hs) == 0 {
		return nil, nil
	}
	out := make(map[string]string, len(hs))
	for _, h := range hs {
		k, v, ok := strings.Cut(h, ":")
		k = strings.TrimSpace(k)
		if !ok || k == "" || strings.ContainsAny(k, " \t\r\n") || strings.ContainsAny(v, "\r\n") {
			return nil, usagef("--header %q: want 'Name: value'", h)
		}
		out[k] = strings.TrimSpace(v)
	}
	return out, nil
}

// parseRate reads "none" or a positive RATE.
func parseRate(flag, s string) (float64, error) {
	if s == "none" {
		return 0, nil
	}
	r, err := units.ParseRate(s)
	if err != nil || r <= 0 {
		return 0, usagef("%s %q: want none or a positive rate such as 20MiB/s", flag, s)
	}
	return r, nil
}

// parseTimeout reads "none", a duration, or a number of seconds (Dragonfly's form).
func parseTimeout(s string) (time.Duration, error) {
	if s == "none" || s == "0" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		secs, serr := strconv.ParseUint(s, 10, 32)
		if serr != nil {
			return 0, usagef("--timeout %q: want none, a duration such as 90s, or seconds", s)
		}
		d = time.Duration(secs) * time.Second
	}
	if d <= 0 {
		return 0, usagef("--timeout %q: want a positive duration", s)
	}
	return d, nil
}

// token reads --token-file, else $DFGET_TOKEN.
func token(file string) (string, error) {
	if file == "" {
		return strings.TrimSpace(os.Getenv(envToken)), nil
	}
	p, err := os.ReadFile(file)
	if err != nil {
		return "", usagef("--token-file: %v", err)
	}
	t := strings.TrimSpace(string(p))
	if t == "" {
		return "", usagef("--token-file %s is empty", file)
	}
	return t, nil
}

// shutdownTimeout bounds leaving after a signal: the download's cleanup (its last reports,
// telling the cluster it failed) ends at most this long after the signal, and so does
// leaving the cluster (give or take the second the engine always allows DELETE /peers).
const shutdownTimeout = peer.DefaultShutdownTimeout

// leave closes the peer; after a signal, within shutdownTimeout of the signal.
func leave(p *peer.Peer, sigCtx context.Context, signalled *atomic.Int64) error {
	if sigCtx.Err() == nil {
		return p.Close()
	}
	ctx, cancel := context.WithDeadline(context.Background(), time.Unix(0, signalled.Load()).Add(shutdownTimeout))
	defer cancel()
	return p.Shutdown(ctx)
}

// download runs the peer: start, download, seed, leave.
func download(o *options, stdout, stderr io.Writer) error {
	log, err := logging.New(o.logLevel, o.logFormat)
	if err != nil {
		return &usageError{err.Error()}
	}
	defer log.Sync() //nolint:errcheck
	o.peer.Logger = log

	// The first SIGINT/SIGTERM/SIGHUP cancels the download (which removes its temp file)
	// and the peer leaves the cluster, all within about shutdownTimeout of the signal; a
	// second one kills the process at once.
	sigc := make(chan os.Signal, 1)
	signal.Notify(sigc, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	sigCtx, cancelSig := context.WithCancel(context.Background())
	defer cancelSig()
	defer signal.Stop(sigc)
	var signalled atomic.Int64 // when the signal came (unix ns), set before sigCtx ends
	go func() {
		select {
		case <-sigc:
			signalled.Store(time.Now().UnixNano())
			signal.Stop(sigc) // the default action again: a second signal kills
			cancelSig()
		case <-sigCtx.Done():
		}
	}()
	ctx := sigCtx
	if o.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(sigCtx, o.timeout)
		defer cancel()
	}
	explain := func(err error) error {
		switch {
		case sigCtx.Err() != nil:
			return errors.New("interrupted")
		case errors.Is(err, context.DeadlineExceeded) && ctx.Err() != nil:
			return fmt.Errorf("timed out after %s", o.timeout)
		}
		return err
	}

	p, err := peer.Start(ctx, o.peer)
	if err != nil {
		return explain(err)
	}
	out := stdout
	if o.stdout {
		o.req.Stream, out = stdout, stderr
	}
	bar := newProgress(stderr, o.quiet)
	o.req.Progress = bar.update
	res, err := p.Download(ctx, o.req)
	bar.finish(err == nil)
	if err == nil && o.seedFor > 0 {
		log.Info("seeding", zap.Duration("for", o.seedFor))
		t := time.NewTimer(o.seedFor)
		select {
		case <-t.C:
		case <-sigCtx.Done():
		}
		t.Stop()
	}
	if cerr := leave(p, sigCtx, &signalled); cerr != nil {
		log.Warn("leaving the cluster: " + cerr.Error())
	}
	if err != nil {
		return explain(err)
	}
	if o.json {
		line, _ := json.Marshal(res)
		fmt.Fprintf(out, "%s\n", line)
	}
	return nil
}
