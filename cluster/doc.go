// Package cluster owns the Raft side of a supernode member: the hashicorp/raft node with
// raft-boltdb logs and file snapshots, the member's persisted identity, joining and removing
// members, the leader's committed verdict on member liveness, and the write path: commands
// from concurrent requests are merged into few log entries on the leader, and a follower
// forwards its writes to the leader once, merged the same way. Only this package touches
// *raft.Raft. See DESIGN.md.
package cluster
