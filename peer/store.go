package peer

import (
	"io"
	"sync"
)

// ReaderAtCloser is a file a task's pieces are read from.
type ReaderAtCloser interface {
	io.ReaderAt
	io.Closer
}

// Store knows which pieces of which tasks this peer holds, and where their bytes are: the
// upload server serves from it, downloads add to it. Safe for concurrent use.
type Store struct {
	mu    sync.RWMutex
	tasks map[string]*heldTask
}

// heldTask is one task's file and the pieces of it that are complete and verified.
type heldTask struct {
	file      ReaderAtCloser
	pieceSize int64
	length    int64
	have      []bool
	held      int
}

// NewStore returns an empty store.
func NewStore() *Store { return &Store{tasks: map[string]*heldTask{}} }

// Add makes file the home of a task's pieces (none held yet). A task already present is
// replaced and its file closed. The store closes file in Remove or Close.
func (s *Store) Add(taskID string, file ReaderAtCloser, pieceSize, length int64) {
	count := 0
	if pieceSize > 0 && length > 0 {
		count = int((length + pieceSize - 1) / pieceSize)
	}
	t := &heldTask{file: file, pieceSize: pieceSize, length: length, have: make([]bool, count)}
	s.mu.Lock()
	old := s.tasks[taskID]
	s.tasks[taskID] = t
	s.mu.Unlock()
	if old != nil && old.file != file {
		_ = old.file.Close()
	}
}

// MarkHeld records that piece n of a task is complete and verified: it is served from now on.
func (s *Store) MarkHeld(taskID string, n uint32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if t := s.tasks[taskID]; t != nil && int(n) < len(t.have) && !t.have[n] {
		t.have[n] = true
		t.held++
	}
}

// Held returns the pieces of a task this peer holds, in order.
func (s *Store) Held(taskID string) []uint32 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	t := s.tasks[taskID]
	if t == nil {
		return nil
	}
	out := make([]uint32, 0, t.held)
	for n, ok := range t.have {
		if ok {
			out = append(out, uint32(n))
		}
	}
	return out
}

// Piece returns the bytes of piece n of a task, or false when this peer does not hold it.
func (s *Store) Piece(taskID string, n uint32) (*io.SectionReader, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	t := s.tasks[taskID]
	if t == nil || int(n) >= len(t.have) || !t.have[n] {
		return nil, false
	}
	off := int64(n) * t.pieceSize
	return io.NewSectionReader(t.file, off, min(t.pieceSize, t.length-off)), true
}

// Remove forgets a task and closes its file.
func (s *Store) Remove(taskID string) {
	s.mu.Lock()
	t := s.tasks[taskID]
	delete(s.tasks, taskID)
	s.mu.Unlock()
	if t != nil {
		_ = t.file.Close()
	}
}

// Tasks returns the IDs of the tasks in the store.
func (s *Store) Tasks() []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]string, 0, len(s.tasks))
	for id := range s.tasks {
		out = append(out, id)
	}
	return out
}

// Close forgets every task and closes their files.
func (s *Store) Close() {
	for _, id := range s.Tasks() {
		s.Remove(id)
	}
}
