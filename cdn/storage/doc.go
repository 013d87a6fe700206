// Package storage owns the bytes a supernode member caches for the tasks the ring assigns to
// it: one file per piece and one meta.json per task, under a root directory. It answers
// has/missing/write/read and reports usage; it knows nothing of the origin, the ring, Raft or
// eviction policy (the cdn package decides what to fetch and what to evict).
//
// Driver is the interface the CDN codes against; Local is the local-filesystem driver.
// Every write is atomic and crash-safe (temporary file in the same directory, fsync, rename,
// fsync of the directory), every piece is verified against its SHA-256 digest and size
// before it becomes visible, and Open repairs what a crash can leave behind (temporary files,
// empty directories, pieces whose size disagrees with their name or with the task's meta).
// Every method checks the task ID (^[0-9a-f]{64}$) before it touches the disk. See DESIGN.md.
package storage
