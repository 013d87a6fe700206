package source

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// fileSource reads local files named by file:///absolute/path (or file://localhost/...).
type fileSource struct{}

// filePath returns the absolute local path that rawURL names.
func filePath(rawURL string) (string, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrBadURL, stripURLError(err))
	}
	if !strings.EqualFold(u.Scheme, "file") {
		return "", fmt.Errorf("%w: %s: not a file url", ErrBadURL, safeURL(u))
	}
	if u.Host != "" && !strings.EqualFold(u.Host, "localhost") {
		return "", fmt.Errorf("%w: %s: a file url names a local absolute path (file:///path), not host %q", ErrBadURL, safeURL(u), u.Host)
	}
	if u.Opaque != "" || !filepath.IsAbs(u.Path) {
		return "", fmt.Errorf("%w: %s: relative path", ErrBadURL, safeURL(u))
	}
	return filepath.Clean(u.Path), nil
}

// fileError maps an os error to the package's sentinels.
func fileError(err error) error {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("%w: %w", ErrNotFound, err)
	case errors.Is(err, fs.ErrPermission):
		return fmt.Errorf("%w: %w", ErrUnauthorized, err)
	}
	return fmt.Errorf("source: %w", err)
}

// fileInfo describes a regular file; anything else is ErrBadURL.
func fileInfo(path string, st fs.FileInfo) (Info, error) {
	if !st.Mode().IsRegular() {
		return unknownInfo, fmt.Errorf("%w: %s is not a regular file (%v)", ErrBadURL, path, st.Mode().Type())
	}
	return Info{
		ContentLength: st.Size(),
		LastModified:  st.ModTime().UTC().Format(time.RFC3339Nano),
		AcceptRanges:  true,
	}, nil
}

// Probe implements Source with os.Stat.
func (fileSource) Probe(ctx context.Context, req Request) (Info, error) {
	path, err := filePath(req.URL)
	if err != nil {
		return unknownInfo, err
	}
	st, err := os.Stat(path)
	if err != nil {
		return unknownInfo, fileError(err)
	}
	return fileInfo(path, st)
}

// Open implements Source: the file is read from offset up to the size it had when opened.
// If the file's size or modification time differ once that is read, the last Read fails
// with ErrChanged.
func (fileSource) Open(ctx context.Context, req Request, offset int64) (io.ReadCloser, Info, error) {
	if offset < 0 {
		return nil, unknownInfo, fmt.Errorf("source: negative offset %d", offset)
	}
	path, err := filePath(req.URL)
	if err != nil {
		return nil, unknownInfo, err
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, unknownInfo, fileError(err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, unknownInfo, fileError(err)
	}
	info, err := fileInfo(path, st)
	if err != nil {
		f.Close()
		return nil, info, err
	}
	if offset > info.ContentLength {
		f.Close()
		return nil, info, fmt.Errorf("%w: %s is %d bytes, shorter than offset %d", ErrChanged, path, info.ContentLength, offset)
	}
	if offset > 0 {
		if _, err := f.Seek(offset, io.SeekStart); err != nil {
			f.Close()
			return nil, unknownInfo, fileError(err)
		}
	}
	return &fileBody{ctx: ctx, f: f, path: path, info: info, left: info.ContentLength - offset}, info, nil
}

// fileBody reads an open file up to its size at open time.
type fileBody struct {
	ctx  context.Context
	f    *os.File
	path string
	info Info
	left int64
}

func (b *fileBody) Read(p []byte) (int, error) {
	if err := b.ctx.Err(); err != nil {
		return 0, err
	}
	if b.left <= 0 {
		// The end: the file must still be the one that was opened.
		st, err := b.f.Stat()
		if err != nil {
			return 0, fileError(err)
		}
		if now, err := fileInfo(b.path, st); err != nil || now.Changed(b.info) {
			return 0, fmt.Errorf("%w: %s changed while it was read", ErrChanged, b.path)
		}
		return 0, io.EOF
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.f.Read(p)
	b.left -= int64(n)
	if err == io.EOF {
		// Shorter than at open time: truncated while read.
		return n, fmt.Errorf("%w: %s shrank while it was read", ErrChanged, b.path)
	}
	if err != nil {
		err = fileError(err)
	}
	return n, err
}

func (b *fileBody) Close() error { return b.f.Close() }
