package source

import (
	"bytes"
	"errors"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func fileURL(path string) string { return (&url.URL{Scheme: "file", Path: path}).String() }

func TestFileSource(t *testing.T) {
	dir := t.TempDir()
	data := randomBytes(300_000, 20)
	path := filepath.Join(dir, "a file with spaces.bin")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	s := NewSources(Config{})
	ctx := testCtx(t, 10*time.Second)
	req := Request{URL: fileURL(path)}
	src, err := s.For(req.URL)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(path)
	want := Info{ContentLength: int64(len(data)), LastModified: st.ModTime().UTC().Format(time.RFC3339Nano), AcceptRanges: true}
	info, err := src.Probe(ctx, req)
	if err != nil || info != want {
		t.Fatalf("Probe = %+v, %v; want %+v", info, err, want)
	}

	for _, offset := range []int64{0, 77_777, int64(len(data))} {
		body, info, err := src.Open(ctx, req, offset)
		if err != nil || info != want {
			t.Fatalf("Open(%d) = %+v, %v", offset, info, err)
		}
		got, err := io.ReadAll(body)
		body.Close()
		if err != nil || !bytes.Equal(got, data[offset:]) {
			t.Fatalf("Open(%d): %d bytes, %v", offset, len(got), err)
		}
	}
	if _, _, err := src.Open(ctx, req, int64(len(data))+1); !errors.Is(err, ErrChanged) {
		t.Fatalf("Open past the end: %v, want ErrChanged", err)
	}

	// file://localhost/path is the same file.
	r := NewResumingReader(ctx, src, Request{URL: "file://localhost" + (&url.URL{Path: path}).EscapedPath()}, 1000, want, fastResume)
	got, err := readAll(t, r)
	r.Close()
	if err != nil || !bytes.Equal(got, data[1000:]) {
		t.Fatalf("resuming read of a file: %d bytes, %v", len(got), err)
	}

	bad := []struct {
		name string
		url  string
		want error
	}{
		{"missing", fileURL(filepath.Join(dir, "nope")), ErrNotFound},
		{"relative", "file:relative/path.bin", ErrBadURL},
		{"host", "file://relative/path.bin", ErrBadURL},
		{"directory", fileURL(dir), ErrBadURL},
	}
	for _, c := range bad {
		if _, err := src.Probe(ctx, Request{URL: c.url}); !errors.Is(err, c.want) {
			t.Errorf("%s: Probe: %v, want %v", c.name, err, c.want)
		}
		if _, _, err := src.Open(ctx, Request{URL: c.url}, 0); !errors.Is(err, c.want) {
			t.Errorf("%s: Open: %v, want %v", c.name, err, c.want)
		}
	}
}

func TestFileChangedWhileRead(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "f")
	data := randomBytes(100_000, 21)
	os.WriteFile(path, data, 0o644)
	src, _ := NewSources(Config{}).For("file:///")
	ctx := testCtx(t, 10*time.Second)
	req := Request{URL: fileURL(path)}

	cases := []struct {
		name   string
		change func() error
	}{
		{"grew", func() error {
			f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
			if err != nil {
				return err
			}
			defer f.Close()
			_, err = f.Write([]byte("more"))
			return err
		}},
		{"shrank", func() error { return os.Truncate(path, 50_000) }},
		{"rewritten", func() error {
			os.WriteFile(path, randomBytes(100_000, 22), 0o644)
			return os.Chtimes(path, time.Now(), time.Now().Add(time.Hour))
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			os.WriteFile(path, data, 0o644)
			want, _ := src.Probe(ctx, req)
			r := NewResumingReader(ctx, src, req, 0, want, fastResume)
			defer r.Close()
			first := make([]byte, 10_000)
			if _, err := io.ReadFull(r, first); err != nil {
				t.Fatal(err)
			}
			if err := c.change(); err != nil {
				t.Fatal(err)
			}
			rest, err := readAll(t, r)
			if !errors.Is(err, ErrChanged) {
				t.Fatalf("read %d more bytes, %v; want ErrChanged", len(rest), err)
			}
		})
	}
}
