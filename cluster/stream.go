package cluster

import (
	"net"
	"time"

	"github.com/hashicorp/raft"
)

// tcpStream is a raft.StreamLayer over a listener we own (so that a caller may hand in a
// bound listener) advertising a given address.
type tcpStream struct {
	ln        net.Listener
	advertise net.Addr
}

var _ raft.StreamLayer = (*tcpStream)(nil)

func (s *tcpStream) Accept() (net.Conn, error) { return s.ln.Accept() }
func (s *tcpStream) Close() error              { return s.ln.Close() }
func (s *tcpStream) Addr() net.Addr            { return s.advertise }
func (s *tcpStream) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	return net.DialTimeout("tcp", string(addr), timeout)
}
