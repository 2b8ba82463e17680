package edgebox

import (
	"errors"
	"sort"
	"sync"

	"google.golang.org/grpc/connectivity"
)

// Pool keeps one Client per node id, as a manager does for the nodes that registered with it. It is safe for
// concurrent use.
//
// Reconnection: a Client reconnects by itself (with back-off capped by WithMaxReconnectBackoff). Get also
// nudges a connection that is waiting out its back-off to try at once, and replaces a client whose node
// registered again from another address or that was closed.
type Pool struct {
	opts []Option

	mu      sync.Mutex
	clients map[string]*Client
	closed  bool
}

// ErrPoolClosed is returned by Get after Close.
var ErrPoolClosed = errors.New("edgebox: pool is closed")

// NewPool returns an empty pool whose clients are dialed with opts.
func NewPool(opts ...Option) *Pool {
	return &Pool{opts: opts, clients: map[string]*Client{}}
}

// Get returns the client of nodeID, dialing address if there is none yet or if the node moved to another
// address (the old client is then closed, failing its calls in flight with codes.Canceled).
func (p *Pool) Get(nodeID, address string) (*Client, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, ErrPoolClosed
	}
	if c, ok := p.clients[nodeID]; ok {
		switch {
		case c.Target() != address || c.conn.GetState() == connectivity.Shutdown:
			_ = c.Close()
			delete(p.clients, nodeID)
		case c.conn.GetState() == connectivity.TransientFailure:
			c.ResetBackoff() // the caller believes the node is back (it registered again): try now
			return c, nil
		default:
			return c, nil
		}
	}
	c, err := Dial(address, p.opts...)
	if err != nil {
		return nil, err
	}
	p.clients[nodeID] = c
	return c, nil
}

// Lookup returns the client of nodeID if the pool has one.
func (p *Pool) Lookup(nodeID string) (*Client, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	c, ok := p.clients[nodeID]
	return c, ok
}

// Nodes returns the node ids that have a client, sorted.
func (p *Pool) Nodes() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	ids := make([]string, 0, len(p.clients))
	for id := range p.clients {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

// Remove closes and forgets the client of nodeID (no error if there is none).
func (p *Pool) Remove(nodeID string) error {
	p.mu.Lock()
	c, ok := p.clients[nodeID]
	delete(p.clients, nodeID)
	p.mu.Unlock()
	if !ok {
		return nil
	}
	return c.Close()
}

// Close closes every client; later Gets fail with ErrPoolClosed.
func (p *Pool) Close() error {
	p.mu.Lock()
	clients := p.clients
	p.clients, p.closed = map[string]*Client{}, true
	p.mu.Unlock()
	var errs []error
	for _, c := range clients {
		errs = append(errs, c.Close())
	}
	return errors.Join(errs...)
}
