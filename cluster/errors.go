package cluster

import (
	"errors"
	"fmt"

	"github.com/hashicorp/raft"
)

// Errors of the cluster package. Raft's own errors are translated into these once, here.
var (
	// ErrNotLeader: the write needs the leader and this member is not it (or stopped being
	// it before the write committed). The client may retry, on the leader.
	ErrNotLeader = errors.New("not the leader")
	// ErrNoLeader: no leader is known right now (an election is under way).
	ErrNoLeader = errors.New("no leader")
	// ErrShutdown: this member is shutting down.
	ErrShutdown = errors.New("member is shutting down")
	// ErrTimeout: the write was not committed in time; it may still commit later.
	ErrTimeout = errors.New("write timed out")
	// ErrBadConfig: a Config field is invalid.
	ErrBadConfig = errors.New("bad cluster config")
	// ErrForward: the leader could not be reached or gave an answer that could not be read.
	ErrForward = errors.New("forwarding to the leader failed")
)

// translate maps hashicorp/raft's errors to this package's.
func translate(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipLost),
		errors.Is(err, raft.ErrLeadershipTransferInProgress), errors.Is(err, raft.ErrNotVoter):
		return fmt.Errorf("%w: %v", ErrNotLeader, err)
	case errors.Is(err, raft.ErrRaftShutdown):
		return fmt.Errorf("%w: %v", ErrShutdown, err)
	case errors.Is(err, raft.ErrEnqueueTimeout):
		return fmt.Errorf("%w: %v", ErrTimeout, err)
	}
	return err
}
