// Package fsm owns the replicated state of the supernode cluster: members, peers, tasks
// (with their per-piece digests), the piece map (which peer holds which piece, as bitsets)
// and preheats, and the typed commands that change it.
//
// The FSM implements raft.BatchingFSM. Apply is deterministic: no clock, randomness, I/O or
// network; the leader stamps the time into each log entry (a Batch of commands). Snapshot
// is a copy-on-write view taken in time proportional to the number of objects; Persist
// encodes it while Apply continues. See DESIGN.md.
package fsm
