// Package peer owns the peer engine that dfget (and later dfdaemon) runs: an upload server
// for the pieces the peer holds, piece workers that ask the cluster for work, download and
// verify pieces, and report them in batches through the sdk.
//
// A Peer is started once (Start: upload server, registration, heartbeats) and runs any
// number of downloads (Peer.Download); Close leaves the cluster and stops serving. Every
// call to the supernodes goes through the sdk client, which fails over between members.
//
// One download, in order:
//   - POST /tasks, then GET /tasks/{id}/pieces until the owner has probed the origin.
//   - A coordinator goroutine owns the download's state (pieces held, in flight, queued, the
//     stream window). It asks for work in batches (a few pieces per worker), hands pieces
//     to the workers, and re-asks when its queue runs low; it never asks piece by piece.
//   - Workers fetch a piece from its sources in order, verify its SHA-256 and write it at
//     its offset in a temp file next to the output (or keep it in memory in stream mode).
//     A source that sends bad bytes is reported failed (so that the cluster blacklists it
//     for the task) and blacklisted locally; one that is unreachable or stalls is only
//     blacklisted locally, for a while; a busy one (503) is skipped.
//   - A reporter sends successes and failures as one PUT /tasks/{id}/pieces per batch.
//   - At the end the whole file's digest is checked, the temp file renamed, and the task
//     reported done. A new generation of the task (the origin file changed) starts the
//     download over once.
package peer
