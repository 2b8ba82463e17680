// Package refmanager is a small reference implementation of the manager side of proto/manager.proto.
//
// It records registrations, heartbeats and metrics samples in memory with their arrival times, calls back
// into each node's InferenceService after it registers (HealthCheck, ListCameras, ListWorkflows, through an
// edgebox.Pool), and shows what it knows through a Go API (Nodes, Node, Wait) and an optional JSON view
// (HTTPHandler). It is what the Go tests run the engine's manager link against, and a starting point for a
// real management system; it stores nothing on disk, so a restart forgets every node (which makes the nodes
// register again: see the NOT_FOUND rule in manager.proto).
package refmanager

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"net"
	"sort"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/edgebox/edgebox/clients/go/edgebox"
	"github.com/edgebox/edgebox/clients/go/inferpb"
	"github.com/edgebox/edgebox/clients/go/managerpb"
)

// APIVersion is the revision of manager.proto this manager speaks.
const APIVersion = 1

// Options tune a Server; zero fields take the defaults in brackets.
type Options struct {
	// Pool holds the clients used to call nodes back [a new pool with default options, closed by Stop].
	Pool *edgebox.Pool
	// History is how many heartbeats and metrics samples are kept per node [1000].
	History int
	// CallbackTimeout bounds the calls made into a node after it registers [10s].
	CallbackTimeout time.Duration
	// NoCallback disables calling nodes back.
	NoCallback bool
	// Logger [discard].
	Logger *slog.Logger
	// Now is the clock [time.Now].
	Now func() time.Time
}

// Heartbeat is one heartbeat as received.
type Heartbeat struct {
	ReceivedAt time.Time
	Request    *managerpb.HeartbeatRequest
}

// MetricsSample is one metrics report as received.
type MetricsSample struct {
	ReceivedAt time.Time
	Request    *managerpb.ReportMetricsRequest
}

// Inventory is what the manager learnt by calling the node back after its last registration.
type Inventory struct {
	At        time.Time
	Health    *inferpb.HealthCheckResponse
	Cameras   []*inferpb.CameraInfo
	Workflows []*inferpb.WorkflowInfo
	// Err is why the callback failed, empty if it succeeded.
	Err string
}

// Node is a copy of what the manager knows about one node; it is safe to keep and read.
type Node struct {
	ID string
	// Address is where the manager calls the node (the registered grpc_address, its host resolved).
	Address      string
	Registration *managerpb.RegisterNodeRequest
	SessionID    string
	// RegisteredAt is the time of the last registration; Registrations counts them all.
	RegisteredAt  time.Time
	Registrations int
	Heartbeats    []Heartbeat
	Metrics       []MetricsSample
	Inventory     *Inventory
}

// LastHeartbeat returns the most recent heartbeat, nil if none arrived since the manager started.
func (n *Node) LastHeartbeat() *Heartbeat {
	if len(n.Heartbeats) == 0 {
		return nil
	}
	return &n.Heartbeats[len(n.Heartbeats)-1]
}

type node struct {
	Node
	reRegister bool // the next heartbeat or metrics reply asks the node to register again
}

// Server implements managerpb.ManagerServiceServer. Its methods are safe for concurrent use.
type Server struct {
	managerpb.UnimplementedManagerServiceServer
	opts     Options
	ownsPool bool

	mu      sync.Mutex
	nodes   map[string]*node
	changed chan struct{}
	servers []*grpc.Server

	ctx       context.Context // cancelled by Stop; ends the callbacks
	cancel    context.CancelFunc
	callbacks sync.WaitGroup
}

// New returns a manager that knows no node.
func New(opts Options) *Server {
	s := &Server{opts: opts, nodes: map[string]*node{}, changed: make(chan struct{})}
	if s.opts.Pool == nil {
		s.opts.Pool, s.ownsPool = edgebox.NewPool(), true
	}
	if s.opts.History <= 0 {
		s.opts.History = 1000
	}
	if s.opts.CallbackTimeout <= 0 {
		s.opts.CallbackTimeout = 10 * time.Second
	}
	if s.opts.Logger == nil {
		s.opts.Logger = slog.New(slog.DiscardHandler)
	}
	if s.opts.Now == nil {
		s.opts.Now = time.Now
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	return s
}

// Serve serves ManagerService on lis until Stop (it returns nil then).
func (s *Server) Serve(lis net.Listener, opts ...grpc.ServerOption) error {
	gs := grpc.NewServer(opts...)
	managerpb.RegisterManagerServiceServer(gs, s)
	s.mu.Lock()
	if s.ctx.Err() != nil {
		s.mu.Unlock()
		return grpc.ErrServerStopped
	}
	s.servers = append(s.servers, gs)
	s.mu.Unlock()
	err := gs.Serve(lis)
	if err == grpc.ErrServerStopped {
		return nil
	}
	return err
}

// Stop stops serving (calls in flight are cut off, as when a manager dies), waits for the callbacks to end,
// and closes the pool if the server created it.
func (s *Server) Stop() {
	s.mu.Lock()
	servers := s.servers
	s.servers = nil
	s.cancel()
	s.mu.Unlock()
	for _, gs := range servers {
		gs.Stop()
	}
	s.callbacks.Wait()
	if s.ownsPool {
		_ = s.opts.Pool.Close()
	}
}

// Pool returns the pool of node clients.
func (s *Server) Pool() *edgebox.Pool { return s.opts.Pool }

// Nodes returns copies of every known node, sorted by id.
func (s *Server) Nodes() []Node {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Node, 0, len(s.nodes))
	for _, n := range s.nodes {
		out = append(out, n.copy())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Node returns a copy of one node.
func (s *Server) Node(id string) (Node, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n, ok := s.nodes[id]
	if !ok {
		return Node{}, false
	}
	return n.copy(), true
}

// Wait calls cond after every change until it returns true or ctx ends.
func (s *Server) Wait(ctx context.Context, cond func(*Server) bool) error {
	for {
		s.mu.Lock()
		changed := s.changed
		s.mu.Unlock()
		if cond(s) {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changed:
		}
	}
}

// RequestReregister makes the next heartbeat (or metrics) reply to the node ask it to register again, e.g.
// to get a fresh inventory. It reports whether the node is known.
func (s *Server) RequestReregister(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	n, ok := s.nodes[id]
	if ok {
		n.reRegister = true
	}
	return ok
}

// Forget drops a node, as a restarted manager would have; its next heartbeat gets NOT_FOUND.
func (s *Server) Forget(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.nodes, id)
	s.notifyLocked()
}

func (s *Server) notifyLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// RegisterNode implements ManagerService.
func (s *Server) RegisterNode(ctx context.Context, req *managerpb.RegisterNodeRequest) (*managerpb.RegisterNodeResponse, error) {
	if req.GetNodeId() == "" || len(req.GetNodeId()) > 128 {
		return nil, status.Error(codes.InvalidArgument, "node_id must be 1..128 characters")
	}
	if req.GetApiVersion() == 0 {
		return nil, status.Error(codes.InvalidArgument, "api_version is not set; this manager speaks 1")
	}
	address, err := callbackAddress(ctx, req.GetGrpcAddress())
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "grpc_address %q: %v", req.GetGrpcAddress(), err)
	}
	now := s.opts.Now()
	session := newSessionID()
	s.mu.Lock()
	n, ok := s.nodes[req.GetNodeId()]
	if !ok {
		n = &node{Node: Node{ID: req.GetNodeId()}}
		s.nodes[n.ID] = n
	}
	n.Address, n.Registration, n.SessionID = address, proto.Clone(req).(*managerpb.RegisterNodeRequest), session
	n.RegisteredAt, n.reRegister = now, false
	n.Registrations++
	n.Inventory = nil
	s.notifyLocked()
	s.mu.Unlock()
	s.opts.Logger.Info("node registered", "node", n.ID, "address", address, "version", req.GetVersion(),
		"api_version", req.GetApiVersion())
	if !s.opts.NoCallback {
		s.callbacks.Add(1)
		go s.callBack(req.GetNodeId(), address, session)
	}
	return &managerpb.RegisterNodeResponse{ApiVersion: APIVersion, SessionId: session,
		ServerTimeMs: now.UnixMilli()}, nil
}

// Heartbeat implements ManagerService.
func (s *Server) Heartbeat(ctx context.Context, req *managerpb.HeartbeatRequest) (*managerpb.HeartbeatResponse, error) {
	now := s.opts.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	n, ok := s.nodes[req.GetNodeId()]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "node %q is not registered with this manager; call RegisterNode",
			req.GetNodeId())
	}
	n.Heartbeats = appendCapped(n.Heartbeats, Heartbeat{now, proto.Clone(req).(*managerpb.HeartbeatRequest)},
		s.opts.History)
	s.notifyLocked()
	return &managerpb.HeartbeatResponse{ReRegister: n.reRegister || req.GetSessionId() != n.SessionID,
		ServerTimeMs: now.UnixMilli()}, nil
}

// ReportMetrics implements ManagerService.
func (s *Server) ReportMetrics(ctx context.Context, req *managerpb.ReportMetricsRequest) (*managerpb.ReportMetricsResponse, error) {
	now := s.opts.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	n, ok := s.nodes[req.GetNodeId()]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "node %q is not registered with this manager; call RegisterNode",
			req.GetNodeId())
	}
	n.Metrics = appendCapped(n.Metrics, MetricsSample{now, proto.Clone(req).(*managerpb.ReportMetricsRequest)},
		s.opts.History)
	s.notifyLocked()
	return &managerpb.ReportMetricsResponse{ReRegister: n.reRegister || req.GetSessionId() != n.SessionID}, nil
}

// callBack reads the node's state through its InferenceService and stores it as the node's inventory, unless
// the node registered again meanwhile.
func (s *Server) callBack(id, address, session string) {
	defer s.callbacks.Done()
	ctx, cancel := context.WithTimeout(s.ctx, s.opts.CallbackTimeout)
	defer cancel()
	inv := &Inventory{}
	err := func() error {
		client, err := s.opts.Pool.Get(id, address)
		if err != nil {
			return err
		}
		if inv.Health, err = client.HealthCheck(ctx); err != nil {
			return err
		}
		if inv.Cameras, err = client.ListCameras(ctx); err != nil {
			return err
		}
		inv.Workflows, err = client.ListWorkflows(ctx)
		return err
	}()
	if err != nil {
		inv.Err = err.Error()
		s.opts.Logger.Warn("calling the node back failed", "node", id, "address", address, "error", err)
	}
	inv.At = s.opts.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if n, ok := s.nodes[id]; ok && n.SessionID == session {
		n.Inventory = inv
		s.notifyLocked()
	}
}

// callbackAddress is the registered address, with an unspecified host replaced by the caller's IP.
func callbackAddress(ctx context.Context, registered string) (string, error) {
	host, port, err := net.SplitHostPort(registered)
	if err != nil {
		return "", err
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		p, ok := peer.FromContext(ctx)
		if !ok {
			return "", status.Error(codes.InvalidArgument, "unspecified host and no peer address")
		}
		peerHost, _, err := net.SplitHostPort(p.Addr.String())
		if err != nil {
			return "", err
		}
		host = peerHost
	}
	return net.JoinHostPort(host, port), nil
}

func newSessionID() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func appendCapped[T any](list []T, item T, limit int) []T {
	list = append(list, item)
	if len(list) > limit {
		list = append(list[:0:0], list[len(list)-limit:]...)
	}
	return list
}

func (n *node) copy() Node {
	c := n.Node
	c.Heartbeats = append([]Heartbeat(nil), n.Heartbeats...)
	c.Metrics = append([]MetricsSample(nil), n.Metrics...)
	if n.Inventory != nil {
		inv := *n.Inventory
		c.Inventory = &inv
	}
	return c
}
