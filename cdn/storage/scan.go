package storage

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/dfly-ha/dfha/sdk/api"
	"go.uber.org/zap"
)

// scanReport counts what Open found and repaired.
type scanReport struct {
	tasks, pieces       int
	temps, badPieces    int
	badMetas, emptyDirs int
	unknown, trash      int
}

// scan rebuilds the index from the layout and repairs what a crash (or a damaged disk) left:
//
//   - .tmp-* files in task and generation directories: writes that never reached their
//     rename. Removed (their content was never visible).
//   - pieces whose name does not parse as ours: left alone, not counted (logged).
//   - pieces whose size differs from the size in their name, or disagrees with the task's
//     meta for that generation (truncated, extended, past the end), or whose content does
//     not hash to their name when verify is set: removed.
//   - two files for one piece number (impossible with the write order WritePiece uses, but a
//     copied or restored tree may have them): all removed, the piece is fetched again.
//   - meta.json that does not decode or validate: removed (the pieces stay).
//   - .del-* in fan-out directories: a task or generation whose delete was cut after its
//     rename. Removed (it was already gone from every listing).
//   - task, generation and fan-out directories left empty: removed.
//
// Anything that does not match the layout (other names at the root, in fan-out
// directories, in task directories) is left alone: the root might not be ours alone.
func (l *Local) scan(verify bool) error {
	start := time.Now()
	var rep scanReport
	entries, err := os.ReadDir(l.root)
	if err != nil {
		return fmt.Errorf("storage: reading root: %w", err)
	}
	for _, e := range entries {
		if e.Name() == lockName {
			continue
		}
		if !e.IsDir() || !isFanoutName(e.Name()) {
			l.unknown(&rep, filepath.Join(l.root, e.Name()))
			continue
		}
		if err := l.scanFanout(e.Name(), verify, &rep); err != nil {
			return err
		}
	}
	var used int64
	for _, t := range l.tasks {
		used += t.bytes
	}
	l.used.Store(used)
	l.log.Info("cache opened",
		zap.String("root", l.root), zap.Int("tasks", rep.tasks), zap.Int("pieces", rep.pieces),
		zap.Int64("bytes", used), zap.Int("removed_temp_files", rep.temps),
		zap.Int("removed_bad_pieces", rep.badPieces), zap.Int("removed_bad_metas", rep.badMetas),
		zap.Int("removed_empty_dirs", rep.emptyDirs), zap.Int("removed_deletions", rep.trash),
		zap.Int("unknown_entries", rep.unknown),
		zap.Duration("took", time.Since(start)))
	return nil
}

func (l *Local) unknown(rep *scanReport, path string) {
	rep.unknown++
	l.log.Warn("not part of the cache layout: left alone", zap.String("path", path))
}

// removeEmptyDir removes dir if it is empty (a non-empty one fails harmlessly).
func (l *Local) removeEmptyDir(dir string, rep *scanReport) {
	if err := os.Remove(dir); err == nil {
		rep.emptyDirs++
	}
}

func (l *Local) scanFanout(name string, verify bool, rep *scanReport) error {
	dir := filepath.Join(l.root, name)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("storage: reading %s: %w", dir, err)
	}
	for _, e := range entries {
		id := e.Name()
		if strings.HasPrefix(id, trashPrefix) {
			// A delete cut short after its rename: finish it.
			if err := os.RemoveAll(filepath.Join(dir, id)); err != nil {
				return fmt.Errorf("storage: removing %s: %w", filepath.Join(dir, id), err)
			}
			rep.trash++
			continue
		}
		if !e.IsDir() || !api.ValidTaskID(id) || id[:2] != name {
			l.unknown(rep, filepath.Join(dir, id))
			continue
		}
		if err := l.scanTask(id, verify, rep); err != nil {
			return err
		}
	}
	l.removeEmptyDir(dir, rep) // fails harmlessly when tasks remain
	return nil
}

func (l *Local) scanTask(id string, verify bool, rep *scanReport) error {
	dir := l.taskDir(id)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("storage: reading %s: %w", dir, err)
	}
	t := &task{gens: make(map[uint64]*generation)}
	var gens []uint64
	for _, e := range entries {
		name := e.Name()
		path := filepath.Join(dir, name)
		switch {
		case strings.HasPrefix(name, tmpPrefix) && !e.IsDir():
			if err := removeQuiet(path); err != nil {
				return fmt.Errorf("storage: removing %s: %w", path, err)
			}
			rep.temps++
		case name == metaName && e.Type().IsRegular():
			m, size, err := readMeta(path)
			if err != nil {
				l.log.Warn("unreadable meta removed", zap.String("task", id), zap.Error(err))
				if err := removeQuiet(path); err != nil {
					return fmt.Errorf("storage: removing %s: %w", path, err)
				}
				rep.badMetas++
				continue
			}
			t.meta, t.metaBytes, t.bytes = &m, size, size
			t.lastAccess, t.savedAccess = m.LastAccess, m.LastAccess
		case e.IsDir():
			gen, ok := parseGenName(name)
			if !ok {
				l.unknown(rep, path)
				continue
			}
			gens = append(gens, gen)
		default:
			l.unknown(rep, path)
		}
	}
	var newest time.Time
	for _, gen := range gens {
		g, latest, err := l.scanGen(id, gen, t.meta, verify, rep)
		if err != nil {
			return err
		}
		if len(g.pieces) == 0 {
			continue
		}
		t.gens[gen] = g
		for _, p := range g.pieces {
			t.bytes += p.size
			t.pieces++
		}
		if latest.After(newest) {
			newest = latest
		}
	}
	if t.meta == nil && t.pieces == 0 {
		l.removeEmptyDir(dir, rep)
		return nil
	}
	if t.meta == nil {
		// Without a meta, the newest piece is the best last-access estimate (and the same
		// at every Open, since Open writes nothing).
		t.lastAccess = newest.UTC()
	}
	l.tasks[id] = t
	rep.tasks++
	rep.pieces += t.pieces
	return nil
}

// scanGen indexes one generation directory. It returns the generation (empty when nothing
// valid is left, its directory then removed) and the newest piece's modification time.
func (l *Local) scanGen(id string, gen uint64, meta *Meta, verify bool, rep *scanReport) (*generation, time.Time, error) {
	dir := l.genDir(id, gen)
	g := &generation{pieces: make(map[uint32]pieceInfo)}
	var newest time.Time
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, newest, fmt.Errorf("storage: reading %s: %w", dir, err)
	}
	names := make(map[uint32][]string) // piece number -> valid files for it
	remove := func(path, why string) error {
		l.log.Warn("piece removed", zap.String("path", path), zap.String("reason", why))
		rep.badPieces++
		if err := removeQuiet(path); err != nil {
			return fmt.Errorf("storage: removing %s: %w", path, err)
		}
		return nil
	}
	for _, e := range entries {
		name := e.Name()
		path := filepath.Join(dir, name)
		if strings.HasPrefix(name, tmpPrefix) && !e.IsDir() {
			if err := removeQuiet(path); err != nil {
				return nil, newest, fmt.Errorf("storage: removing %s: %w", path, err)
			}
			rep.temps++
			continue
		}
		n, size, digest, ok := parsePieceName(name)
		if !ok || !e.Type().IsRegular() {
			l.unknown(rep, path)
			continue
		}
		info, err := e.Info()
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, newest, fmt.Errorf("storage: stat %s: %w", path, err)
		}
		if info.Size() != size {
			if err := remove(path, fmt.Sprintf("file is %d bytes, its name says %d", info.Size(), size)); err != nil {
				return nil, newest, err
			}
			continue
		}
		if err := meta.checkPiece(gen, n, size); err != nil {
			if err := remove(path, err.Error()); err != nil {
				return nil, newest, err
			}
			continue
		}
		if verify {
			k, sum, err := hashFile(path)
			if err != nil {
				return nil, newest, fmt.Errorf("storage: verifying %s: %w", path, err)
			}
			if k != size || sum != digest {
				if err := remove(path, "content does not match its digest"); err != nil {
					return nil, newest, err
				}
				continue
			}
		}
		names[n] = append(names[n], name)
		g.pieces[n] = pieceInfo{size: size, digest: digest}
		if mt := info.ModTime(); mt.After(newest) {
			newest = mt
		}
	}
	for n, list := range names {
		if len(list) < 2 {
			continue
		}
		delete(g.pieces, n)
		for _, name := range list {
			if err := remove(filepath.Join(dir, name), "several files for one piece"); err != nil {
				return nil, newest, err
			}
		}
	}
	if len(g.pieces) == 0 {
		l.removeEmptyDir(dir, rep)
	}
	return g, newest, nil
}

// readMeta reads and checks meta.json; it returns the meta and the file's size.
func readMeta(path string) (Meta, int64, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Meta{}, 0, err
	}
	var mf metaFile
	if err := json.Unmarshal(data, &mf); err != nil {
		return Meta{}, 0, err
	}
	if mf.V != metaVersion {
		return Meta{}, 0, fmt.Errorf("meta version %d, want %d", mf.V, metaVersion)
	}
	if err := mf.Meta.Validate(); err != nil {
		return Meta{}, 0, err
	}
	mf.Meta.LastAccess = mf.Meta.LastAccess.UTC()
	return mf.Meta, int64(len(data)), nil
}
