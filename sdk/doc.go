// Package sdk is the typed Go client of the supernode HTTP API. It owns the routing of
// requests over the members of a cluster, failover and retries, and the translation of
// answers into sdk/api types and typed errors; dfget, the benchmarks and the tests all use it.
//
// Routing:
//   - Writes (POST, PUT, DELETE) go to the leader when it is known (learned from the
//     X-Raft-Leader header of any answer, or from Refresh), else to the current endpoint; a
//     follower forwards writes itself, so the leader is only the faster choice.
//   - Reads (GET) are spread round-robin over the known members and carry ?min_index=N, N
//     being the highest X-Raft-Index of this client's write answers, so a client always reads
//     its own writes on any member.
//   - A client configured with a single endpoint learns the others: after its first
//     successful answer, and on a failover, it calls Refresh (at most once every 5s, inline;
//     the sdk starts no goroutine of its own).
//
// Retries: a connection error (refused, timeout, reset) or a 502/503/504 answer moves on to
// the next member, and forgets the leader if the failure was at the leader; a member that
// could not be reached is avoided for a second. Once every member has failed in a round,
// the client sleeps a jittered exponential backoff (BackoffBase doubling up to BackoffMax,
// at least the Retry-After of a 503) before the next round. Retries stop after RetryFor
// (default 20s, longer than an election, so losing a member delays a call but does not fail
// it) or MaxAttempts attempts; the call then fails with ErrNoLeader (some member answered
// 503) or ErrUnavailable. Pinned clients talk only to their configured endpoints. Other
// 4xx/5xx answers are not retried and come back as *APIError. A cancelled context stops the
// retries at once; an attempt already on the wire is bounded by RequestTimeout and the
// context's deadline.
//
// Every request is safe to repeat: RegisterPeer picks the peer ID client-side before the
// first attempt, task registration is keyed by the URL, and a DELETE that is retried after
// an ambiguous failure (the first attempt may have been applied) treats 404 as success.
package sdk
