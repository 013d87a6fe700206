package source

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

var testMod = time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)

func TestProbeAndOpen(t *testing.T) {
	data := randomBytes(100_000, 1)
	o := newOrigin(t, &testOrigin{v: version{data: data, etag: `"v1"`, mod: testMod}})
	src, err := NewSources(Config{}).For(o.url("/f.bin"))
	if err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t, 10*time.Second)
	req := Request{URL: o.url("/f.bin")}
	want := Info{ContentLength: int64(len(data)), ETag: `"v1"`, LastModified: testMod.Format(http.TimeFormat), AcceptRanges: true}

	info, err := src.Probe(ctx, req)
	if err != nil || info != want {
		t.Fatalf("Probe = %+v, %v; want %+v", info, err, want)
	}
	if got := o.sent.Load(); got != 0 {
		t.Fatalf("Probe made the origin send %d body bytes", got)
	}

	for _, offset := range []int64{0, 1, 65_537, int64(len(data)) - 1, int64(len(data))} {
		body, info, err := src.Open(ctx, req, offset)
		if err != nil {
			t.Fatalf("Open(%d): %v", offset, err)
		}
		got, err := io.ReadAll(body)
		body.Close()
		if err != nil || !bytes.Equal(got, data[offset:]) {
			t.Fatalf("Open(%d) read %d bytes, %v; want %d bytes of the file", offset, len(got), err, len(data)-int(offset))
		}
		// At the very end the origin answers 416, which carries no validators.
		if info != want && (offset != int64(len(data)) || info.ContentLength != want.ContentLength) {
			t.Fatalf("Open(%d) Info = %+v, want %+v", offset, info, want)
		}
	}
	if _, _, err := src.Open(ctx, req, int64(len(data))+1); !errors.Is(err, ErrChanged) {
		t.Fatalf("Open past the end: %v, want ErrChanged", err)
	}
}

func TestHeadersAndStatuses(t *testing.T) {
	data := randomBytes(10_000, 2)
	const secret = "Bearer s3cr3t-token"
	var seen atomic.Value // the last request's headers
	o := &testOrigin{v: version{data: data, etag: `"a"`}, auth: secret}
	mux := http.NewServeMux()
	mux.Handle("/file", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen.Store(r.Header.Clone())
		o.ServeHTTP(w, r)
	}))
	for path, code := range map[string]int{"/missing": 404, "/gone": 410, "/boom": 500, "/teapot": 418} {
		mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) { http.Error(w, "no", code) })
	}
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	s := NewSources(Config{UserAgent: "dfha-test"})
	ctx := testCtx(t, 10*time.Second)

	cases := []struct {
		name    string
		path    string
		headers map[string]string
		want    error
		code    int
	}{
		{"credentials accepted", "/file", map[string]string{"Authorization": secret, "X-Trace": "42"}, nil, 0},
		{"no credentials", "/file", nil, ErrUnauthorized, 401},
		{"wrong credentials", "/file", map[string]string{"Authorization": "Bearer wrong-s3cr3t"}, ErrUnauthorized, 403},
		{"not found", "/missing", nil, ErrNotFound, 404},
		{"gone", "/gone", nil, ErrNotFound, 410},
		{"server error", "/boom", nil, ErrOrigin, 500},
		{"other status", "/teapot", nil, ErrOrigin, 418},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			req := Request{URL: srv.URL + c.path + "?sig=query-s3cr3t", Headers: c.headers}
			src, err := s.For(req.URL)
			if err != nil {
				t.Fatal(err)
			}
			_, perr := src.Probe(ctx, req)
			body, info, oerr := src.Open(ctx, req, 0)
			for what, err := range map[string]error{"Probe": perr, "Open": oerr} {
				if c.want == nil {
					if err != nil {
						t.Fatalf("%s: %v", what, err)
					}
					continue
				}
				var se *StatusError
				if !errors.Is(err, c.want) || !errors.As(err, &se) || se.Code != c.code {
					t.Fatalf("%s: %v; want %v with status %d", what, err, c.want, c.code)
				}
				if strings.Contains(err.Error(), "s3cr3t") {
					t.Fatalf("%s error shows a secret: %v", what, err)
				}
			}
			if c.want != nil {
				return
			}
			got, err := io.ReadAll(body)
			body.Close()
			if err != nil || !bytes.Equal(got, data) || info.ContentLength != int64(len(data)) {
				t.Fatalf("read %d bytes (%v), Info %+v", len(got), err, info)
			}
			h := seen.Load().(http.Header)
			if h.Get("X-Trace") != "42" || h.Get("User-Agent") != "dfha-test" || h.Get("Accept-Encoding") != "identity" {
				t.Fatalf("origin saw headers %v", h)
			}
		})
	}
}

func TestProbeFallsBackToRangedGet(t *testing.T) {
	data := randomBytes(1<<20, 3)
	o := newOrigin(t, &testOrigin{v: version{data: data, etag: `"x"`, mod: testMod}, headRefused: true})
	src, _ := NewSources(Config{}).For(o.url("/f"))
	info, err := src.Probe(testCtx(t, 10*time.Second), Request{URL: o.url("/f")})
	want := Info{ContentLength: int64(len(data)), ETag: `"x"`, LastModified: testMod.Format(http.TimeFormat), AcceptRanges: true}
	if err != nil || info != want {
		t.Fatalf("Probe = %+v, %v; want %+v", info, err, want)
	}
	if got := o.sent.Load(); got > 1 {
		t.Fatalf("a probe made the origin send %d body bytes", got)
	}

	empty := newOrigin(t, &testOrigin{v: version{data: nil, etag: `"e"`}, headRefused: true})
	info, err = src.Probe(testCtx(t, 10*time.Second), Request{URL: empty.url("/e")})
	if err != nil || info.ContentLength != 0 || info.ETag != `"e"` {
		t.Fatalf("Probe of an empty file = %+v, %v", info, err)
	}
}

func TestRedirects(t *testing.T) {
	data := randomBytes(50_000, 4)
	const secret = "Basic cmVkaXJlY3Q="
	o := &testOrigin{v: version{data: data, etag: `"r"`}, auth: secret}
	var loops atomic.Int64
	mux := http.NewServeMux()
	mux.Handle("/new", o)
	mux.HandleFunc("/old", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/new", http.StatusFound) })
	mux.HandleFunc("/loop", func(w http.ResponseWriter, r *http.Request) {
		loops.Add(1)
		http.Redirect(w, r, "/loop", http.StatusFound)
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	ctx := testCtx(t, 10*time.Second)
	src, _ := NewSources(Config{}).For(srv.URL)
	req := Request{URL: srv.URL + "/old", Headers: map[string]string{"Authorization": secret}}

	info, err := src.Probe(ctx, req)
	if err != nil || info.ContentLength != int64(len(data)) || info.ETag != `"r"` {
		t.Fatalf("Probe through a redirect = %+v, %v", info, err)
	}
	body, _, err := src.Open(ctx, req, 1000)
	if err != nil {
		t.Fatalf("Open through a redirect: %v", err)
	}
	got, err := io.ReadAll(body)
	body.Close()
	if err != nil || !bytes.Equal(got, data[1000:]) {
		t.Fatalf("ranged read through a redirect: %d bytes, %v", len(got), err)
	}

	_, err = src.Probe(ctx, Request{URL: srv.URL + "/loop"})
	if !errors.Is(err, ErrOrigin) {
		t.Fatalf("redirect loop: %v, want ErrOrigin", err)
	}
	if n := loops.Load(); n != MaxRedirects+1 {
		t.Fatalf("redirect loop asked %d times, want %d", n, MaxRedirects+1)
	}
}

func TestHTTPS(t *testing.T) {
	data := randomBytes(200_000, 5)
	o := &testOrigin{v: version{data: data, etag: `"tls"`}}
	srv := httptest.NewUnstartedServer(o)
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the rejected handshakes
	srv.StartTLS()
	t.Cleanup(srv.Close)
	ctx := testCtx(t, 10*time.Second)
	req := Request{URL: srv.URL + "/secure.bin"}

	// The default client verifies certificates: httptest's CA is unknown to it.
	src, _ := NewSources(Config{}).For(req.URL)
	_, err := src.Probe(ctx, req)
	var cve *tls.CertificateVerificationError
	if !errors.As(err, &cve) {
		t.Fatalf("untrusted certificate: %v, want a certificate verification error", err)
	}
	if errors.Is(err, ErrUnauthorized) || errors.Is(err, ErrNotFound) || retryable(err) {
		t.Fatalf("certificate error misclassified: %v", err)
	}
	if _, _, err := src.Open(ctx, req, 0); !errors.As(err, &cve) {
		t.Fatalf("Open with an untrusted certificate: %v", err)
	}

	// Trusting the server's certificate, the same defaults work.
	pool := x509.NewCertPool()
	pool.AddCert(srv.Certificate())
	src, _ = NewSources(Config{Client: NewHTTPClient(&tls.Config{RootCAs: pool})}).For(req.URL)
	info, err := src.Probe(ctx, req)
	if err != nil || info.ContentLength != int64(len(data)) {
		t.Fatalf("Probe with a trusted certificate = %+v, %v", info, err)
	}
	r := NewResumingReader(ctx, src, req, 0, info, fastResume)
	defer r.Close()
	got, err := readAll(t, r)
	if err != nil || sum(got) != sum(data) {
		t.Fatalf("read %d bytes over TLS, %v", len(got), err)
	}
}

func TestChunked(t *testing.T) {
	data := randomBytes(300_000, 6)
	o := newOrigin(t, &testOrigin{v: version{data: data, etag: `"c"`}, chunked: true})
	ctx := testCtx(t, 10*time.Second)
	req := Request{URL: o.url("/stream")}
	src, _ := NewSources(Config{}).For(req.URL)

	info, err := src.Probe(ctx, req)
	if err != nil || info.ContentLength != -1 || info.ETag != `"c"` {
		t.Fatalf("Probe of a chunked origin = %+v, %v", info, err)
	}
	body, info, err := src.Open(ctx, req, 0)
	if err != nil || info.ContentLength != -1 {
		t.Fatalf("Open = %+v, %v", info, err)
	}
	got, err := io.ReadAll(body)
	body.Close()
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read %d bytes, %v", len(got), err)
	}

	r := NewResumingReader(ctx, src, req, 0, Info{ContentLength: -1}, fastResume)
	defer r.Close()
	if got, err := readAll(t, r); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("resuming read of a chunked body: %d bytes, %v", len(got), err)
	}
}

func TestIdleTimeoutResumes(t *testing.T) {
	data := randomBytes(100_000, 7)
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	o := &testOrigin{v: version{data: data, etag: `"i"`}}
	var gets atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && gets.Add(1) == 1 {
			// The first answer sends 1000 bytes and then nothing, without closing.
			w.Header().Set("Content-Length", "100000")
			w.Header().Set("ETag", `"i"`)
			w.Write(data[:1000])
			http.NewResponseController(w).Flush()
			select {
			case <-release:
			case <-r.Context().Done():
			}
			return
		}
		o.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	req := Request{URL: srv.URL + "/stall"}
	src, _ := NewSources(Config{ReadIdleTimeout: 200 * time.Millisecond}).For(req.URL)
	r := NewResumingReader(testCtx(t, 20*time.Second), src, req, 0, Info{ContentLength: -1}, fastResume)
	defer r.Close()
	got, err := readAll(t, r)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read %d bytes, %v", len(got), err)
	}
	if n := gets.Load(); n != 2 {
		t.Fatalf("%d GETs, want 2 (the stalled one and its resume)", n)
	}
}

func TestParseContentRange(t *testing.T) {
	cases := []struct {
		in   string
		want contentRange
		ok   bool
	}{
		{"bytes 0-0/10", contentRange{0, 0, 10}, true},
		{"bytes 5-9/10", contentRange{5, 9, 10}, true},
		{"bytes 5-9/*", contentRange{5, 9, -1}, true},
		{"bytes */10", contentRange{-1, -1, 10}, true},
		{"bytes 5-10/10", contentRange{}, false},
		{"bytes 9-5/10", contentRange{}, false},
		{"bytes */*", contentRange{}, false},
		{"items 0-1/2", contentRange{}, false},
		{"bytes -1-2/3", contentRange{}, false},
		{"", contentRange{}, false},
	}
	for _, c := range cases {
		got, err := parseContentRange(c.in)
		if (err == nil) != c.ok || (c.ok && got != c.want) {
			t.Errorf("parseContentRange(%q) = %+v, %v", c.in, got, err)
		}
	}
}

func TestInfoChanged(t *testing.T) {
	base := Info{ContentLength: 10, ETag: `"a"`, LastModified: "Mon"}
	cases := []struct {
		name string
		b    Info
		want bool
	}{
		{"same", base, false},
		{"length", Info{ContentLength: 11, ETag: `"a"`, LastModified: "Mon"}, true},
		{"etag", Info{ContentLength: 10, ETag: `"b"`, LastModified: "Mon"}, true},
		{"last-modified", Info{ContentLength: 10, ETag: `"a"`, LastModified: "Tue"}, true},
		{"nothing known", Info{ContentLength: -1}, false},
		{"only ranges differ", Info{ContentLength: 10, ETag: `"a"`, LastModified: "Mon", AcceptRanges: true}, false},
		{"unknown length, same etag", Info{ContentLength: -1, ETag: `"a"`}, false},
	}
	for _, c := range cases {
		if got := base.Changed(c.b); got != c.want {
			t.Errorf("%s: Changed = %v, want %v", c.name, got, c.want)
		}
		if got := c.b.Changed(base); got != c.want {
			t.Errorf("%s (reversed): Changed = %v, want %v", c.name, got, c.want)
		}
	}
}

func TestSourcesRegistry(t *testing.T) {
	s := NewSources(Config{})
	for _, u := range []string{"http://h/x", "HTTPS://h/x", "file:///x"} {
		if _, err := s.For(u); err != nil {
			t.Errorf("For(%q): %v", u, err)
		}
	}
	for _, u := range []string{"ftp://h/x", "relative/path", "oci://r/i"} {
		if _, err := s.For(u); !errors.Is(err, ErrUnsupported) {
			t.Errorf("For(%q): %v, want ErrUnsupported", u, err)
		}
	}
	if _, err := s.For("http://[::1"); !errors.Is(err, ErrBadURL) {
		t.Errorf("unparsable url: %v, want ErrBadURL", err)
	}
	s.Register("OCI", fileSource{})
	if _, err := s.For("oci://r/i"); err != nil {
		t.Errorf("registered scheme: %v", err)
	}
	s.Register("oci", nil)
	if _, err := s.For("oci://r/i"); !errors.Is(err, ErrUnsupported) {
		t.Errorf("unregistered scheme: %v", err)
	}
	src, _ := s.For("http://h/x")
	if _, err := src.Probe(context.Background(), Request{URL: "http:///nohost"}); !errors.Is(err, ErrBadURL) {
		t.Errorf("url without host: %v, want ErrBadURL", err)
	}
}
