package harness

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Fetch is one plain HTTP download of the native baseline.
type Fetch struct {
	Start, End time.Time
	Bytes      int64
	SHA256     string
	Err        error
}

// Duration is the fetch's own time.
func (f Fetch) Duration() time.Duration { return f.End.Sub(f.Start) }

// Native downloads url n times at once, each capped at bps bytes per second (0: none),
// the way n clients without P2P would: each on its own connection, hashing the body and
// discarding it. It returns when all have finished or ctx is done.
func Native(ctx context.Context, url string, n int, bps float64) Run[Fetch] {
	tr := &http.Transport{MaxConnsPerHost: 0, MaxIdleConnsPerHost: n, DisableCompression: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	out := Run[Fetch]{Items: make([]Fetch, n)}
	cpu := StartCPU()
	out.Start = time.Now()
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			out.Items[i] = fetch(ctx, client, url, bps)
		}(i)
	}
	wg.Wait()
	out.End = time.Now()
	out.CPU = cpu.Stop()
	return out
}

func fetch(ctx context.Context, client *http.Client, url string, bps float64) (f Fetch) {
	f.Start = time.Now()
	defer func() { f.End = time.Now() }()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		f.Err = err
		return f
	}
	resp, err := client.Do(req)
	if err != nil {
		f.Err = err
		return f
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		f.Err = fmt.Errorf("GET %s: %s", url, resp.Status)
		return f
	}
	var body io.Reader = resp.Body
	if bps > 0 {
		body = &pacedReader{r: resp.Body, lim: newLimiter(bps), ctx: ctx}
	}
	h := sha256.New()
	f.Bytes, f.Err = io.Copy(h, body)
	f.SHA256 = hex.EncodeToString(h.Sum(nil))
	return f
}

// pacedReader reads at most lim's rate.
type pacedReader struct {
	r   io.Reader
	lim *rate.Limiter
	ctx context.Context
}

func (p *pacedReader) Read(b []byte) (int, error) {
	if len(b) > chunk {
		b = b[:chunk]
	}
	n, err := p.r.Read(b)
	if n > 0 {
		if werr := p.lim.WaitN(p.ctx, n); werr != nil {
			return n, werr
		}
	}
	return n, err
}
