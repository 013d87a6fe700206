package storage

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
)

// On-disk names (see DESIGN.md):
//
//	ROOT/<id[0:2]>/<id>/meta.json
//	ROOT/<id[0:2]>/<id>/g<gen>/<n>-<size>-<sha256 hex>.piece
//	.tmp-* in a task or generation directory: a write in progress (or cut by a crash)
//	ROOT/<id[0:2]>/.del-*: a task or generation being deleted (renamed away first)
//	ROOT/.lock: held (flock) by the driver that has the root open
const (
	lockName    = ".lock"
	metaName    = "meta.json"
	pieceSuffix = ".piece"
	tmpPrefix   = ".tmp-"
	trashPrefix = ".del-"
	dirMode     = 0o700 // the cache may hold credentialed content: owner only
	fileMode    = 0o600
)

// fanout is the index of the task's fan-out directory (its first byte), also the index of
// the lock that guards it. id must be valid.
func fanout(id string) int {
	return hexVal(id[0])<<4 | hexVal(id[1])
}

func hexVal(c byte) int {
	if c <= '9' {
		return int(c - '0')
	}
	return int(c-'a') + 10
}

func isFanoutName(s string) bool {
	return len(s) == 2 && isLowerHex(s[0]) && isLowerHex(s[1])
}

func isLowerHex(c byte) bool { return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' }

func genName(gen uint64) string { return "g" + strconv.FormatUint(gen, 10) }

// parseGenName parses "g<gen>" in canonical decimal, gen >= 1.
func parseGenName(s string) (uint64, bool) {
	rest, ok := strings.CutPrefix(s, "g")
	if !ok {
		return 0, false
	}
	g, ok := parseCanonicalUint(rest, 64)
	return g, ok && g >= 1
}

func pieceName(n uint32, size int64, digest [32]byte) string {
	return strconv.FormatUint(uint64(n), 10) + "-" + strconv.FormatInt(size, 10) + "-" +
		hex.EncodeToString(digest[:]) + pieceSuffix
}

// parsePieceName parses "<n>-<size>-<64 lowercase hex>.piece" in canonical form.
func parsePieceName(s string) (n uint32, size int64, digest [32]byte, ok bool) {
	rest, ok := strings.CutSuffix(s, pieceSuffix)
	if !ok {
		return 0, 0, digest, false
	}
	parts := strings.Split(rest, "-")
	if len(parts) != 3 || len(parts[2]) != 64 {
		return 0, 0, digest, false
	}
	nn, ok1 := parseCanonicalUint(parts[0], 32)
	sz, ok2 := parseCanonicalUint(parts[1], 63)
	if !ok1 || !ok2 || sz > MaxPieceSize {
		return 0, 0, digest, false
	}
	for i := 0; i < 64; i++ {
		if !isLowerHex(parts[2][i]) {
			return 0, 0, digest, false
		}
	}
	if _, err := hex.Decode(digest[:], []byte(parts[2])); err != nil {
		return 0, 0, digest, false
	}
	return uint32(nn), int64(sz), digest, true
}

// parseCanonicalUint accepts only the form strconv.FormatUint writes (no sign, no leading
// zero), so that one piece has exactly one name.
func parseCanonicalUint(s string, bits int) (uint64, bool) {
	v, err := strconv.ParseUint(s, 10, bits)
	if err != nil || strconv.FormatUint(v, 10) != s {
		return 0, false
	}
	return v, true
}

// syncDir makes the names in dir (created, renamed, removed) durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// mkdirDurable creates dir (its parent must exist) and, when it created it, fsyncs the
// parent so that the new name survives a crash. An existing directory is fine.
func mkdirDurable(dir string) error {
	err := os.Mkdir(dir, dirMode)
	if err == nil {
		return syncDir(filepath.Dir(dir))
	}
	if errors.Is(err, fs.ErrExist) {
		if st, serr := os.Stat(dir); serr == nil && st.IsDir() {
			return nil
		}
	}
	return err
}

// removeQuiet removes a file we own and no longer want; a missing file is fine.
func removeQuiet(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// writeFileDurable writes data to dir/name atomically: a temporary file in dir, fsync,
// rename, fsync dir. After a crash dir/name is the old file or the new one, never a mix.
func writeFileDurable(dir, name string, data []byte) error {
	f, err := os.CreateTemp(dir, tmpPrefix+name+"-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(data) // CreateTemp made it 0600
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(dir, name))
	}
	if err != nil {
		_ = removeQuiet(tmp)
		return err
	}
	return syncDir(dir)
}

const copyBufSize = 256 << 10

var copyBufs = sync.Pool{New: func() any { b := make([]byte, copyBufSize); return &b }}

// copyHashed copies r to w (w may be nil: hash only), reading at most size+1 bytes, checks
// that exactly size bytes came and, when want is set, that they hash to it, and returns
// their SHA-256. n is for messages.
func copyHashed(w io.Writer, r io.Reader, size int64, want *[32]byte, n uint32) ([32]byte, error) {
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	buf := *bp
	h := sha256.New()
	lr := io.LimitedReader{R: r, N: size + 1}
	var got int64
	for {
		k, rerr := lr.Read(buf)
		if k > 0 {
			got += int64(k)
			h.Write(buf[:k])
			if w != nil {
				if _, werr := w.Write(buf[:k]); werr != nil {
					return [32]byte{}, werr
				}
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return [32]byte{}, fmt.Errorf("storage: reading piece %d: %w", n, rerr)
		}
	}
	if got != size {
		if got > size {
			return [32]byte{}, fmt.Errorf("%w: piece %d: more than %d bytes", ErrSizeMismatch, n, size)
		}
		return [32]byte{}, fmt.Errorf("%w: piece %d: %d bytes, want %d", ErrSizeMismatch, n, got, size)
	}
	var sum [32]byte
	h.Sum(sum[:0])
	if want != nil && sum != *want {
		return sum, fmt.Errorf("%w: piece %d: sha256 %x, want %x", ErrDigestMismatch, n, sum, *want)
	}
	return sum, nil
}

// hashFile returns the size and SHA-256 of the file at path.
func hashFile(path string) (int64, [32]byte, error) {
	var sum [32]byte
	f, err := os.Open(path)
	if err != nil {
		return 0, sum, err
	}
	defer f.Close()
	h := sha256.New()
	k, err := io.Copy(h, f)
	if err != nil {
		return 0, sum, err
	}
	h.Sum(sum[:0])
	return k, sum, nil
}
