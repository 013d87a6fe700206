package cluster

import (
	"context"
	"fmt"
	"sync"

	"github.com/dfly-ha/dfha/fsm"
)

// sinkFunc commits a list of commands as one unit (one log entry on the leader, one
// forwarded request on a follower) and returns the index and one result per command.
type sinkFunc func(cmds []fsm.Command) (uint64, []fsm.Result, error)

// batcher merges the commands of concurrent proposals. Each of its workers takes one
// proposal, adds whatever else is already waiting (up to maxCommands commands and maxBytes
// encoded bytes), and commits them together through the sink; while the workers are busy,
// new proposals queue up and form the next, larger, batch. So batches grow with load and a
// lone write is not delayed. A single proposal larger than the bounds goes alone.
type batcher struct {
	in          chan *proposal
	sink        sinkFunc
	maxCommands int
	maxBytes    int
	stop        chan struct{}
	wg          sync.WaitGroup
	onBatch     func(commands int) // metrics hook, may be nil
}

type proposal struct {
	cmds []fsm.Command
	size int                 // encoded bytes
	done chan proposalResult // buffered: a worker never blocks on a caller that gave up
}

type proposalResult struct {
	index   uint64
	results []fsm.Result
	err     error
}

func newBatcher(sink sinkFunc, workers, maxCommands, maxBytes int, onBatch func(int)) *batcher {
	b := &batcher{
		in:          make(chan *proposal, 4*maxCommands),
		sink:        sink,
		maxCommands: maxCommands,
		maxBytes:    maxBytes,
		stop:        make(chan struct{}),
		onBatch:     onBatch,
	}
	b.wg.Add(workers)
	for i := 0; i < workers; i++ {
		go b.work()
	}
	return b
}

// submit proposes cmds and waits for their results. If ctx ends first the commands may
// still be committed later.
func (b *batcher) submit(ctx context.Context, cmds []fsm.Command) (uint64, []fsm.Result, error) {
	p := &proposal{cmds: cmds, size: fsm.EncodedSize(cmds), done: make(chan proposalResult, 1)}
	select {
	case b.in <- p:
	case <-ctx.Done():
		return 0, nil, ctx.Err()
	case <-b.stop:
		return 0, nil, ErrShutdown
	}
	select {
	case r := <-p.done:
		return r.index, r.results, r.err
	case <-ctx.Done():
		return 0, nil, ctx.Err()
	case <-b.stop:
		return 0, nil, ErrShutdown
	}
}

func (b *batcher) work() {
	defer b.wg.Done()
	var batch []*proposal
	var cmds []fsm.Command
	var carry *proposal // taken from the queue but too big for the batch it was drained into
	for {
		if carry != nil {
			batch, carry = append(batch[:0], carry), nil
		} else {
			select {
			case p := <-b.in:
				batch = append(batch[:0], p)
			case <-b.stop:
				return
			}
		}
		n, size := len(batch[0].cmds), batch[0].size
	drain:
		for n < b.maxCommands && size < b.maxBytes {
			select {
			case p := <-b.in:
				if n+len(p.cmds) > b.maxCommands || size+p.size > b.maxBytes {
					carry = p
					break drain
				}
				batch = append(batch, p)
				n, size = n+len(p.cmds), size+p.size
			default:
				break drain
			}
		}
		cmds = cmds[:0]
		for _, p := range batch {
			cmds = append(cmds, p.cmds...)
		}
		if b.onBatch != nil {
			b.onBatch(len(cmds))
		}
		index, results, err := b.sink(cmds)
		if err == nil && len(results) != len(cmds) {
			err = fmt.Errorf("%w: %d results for %d commands", ErrForward, len(results), len(cmds))
		}
		off := 0
		for _, p := range batch {
			r := proposalResult{index: index, err: err}
			if err == nil {
				r.results = results[off : off+len(p.cmds) : off+len(p.cmds)]
			}
			off += len(p.cmds)
			p.done <- r
		}
		clear(batch) // drop references to finished proposals
		clear(cmds)
	}
}

// close stops the workers; proposals still waiting get ErrShutdown.
func (b *batcher) close() {
	close(b.stop)
	b.wg.Wait()
}
