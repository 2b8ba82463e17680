// Package edgebox is the Go client of an edgebox node's InferenceService.
//
// A Client wraps one gRPC connection with what a management system needs around it: a deadline on every
// call, keepalive, retries with exponential back-off and jitter for idempotent calls only, a circuit breaker,
// typed errors (*Error, errors.Is with ErrCameraNotFound and friends) and TLS/mTLS. A Pool keeps one Client
// per node id. The generated messages and raw stubs are in package inferpb.
package edgebox

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/edgebox/edgebox/clients/go/inferpb"
)

// Client calls one edgebox node. It is safe for concurrent use; Close it when done.
type Client struct {
	target  string
	conn    *grpc.ClientConn
	raw     inferpb.InferenceServiceClient
	opts    options
	breaker *Breaker // nil when disabled

	closing  context.Context // cancelled by Close; ends the reconnect watcher
	close    context.CancelFunc
	watching atomic.Bool // a reconnect watcher runs
}

// Dial returns a Client for target ("host:port"). It does not wait for the connection: the first call
// connects, and a node that is down yields UNAVAILABLE errors (see WaitReady).
func Dial(target string, opts ...Option) (*Client, error) {
	o := defaultOptions()
	for _, opt := range opts {
		opt(&o)
	}
	if o.tlsErr != nil {
		return nil, o.tlsErr
	}
	dial := o.grpcDialOptions()
	if o.tls != nil {
		cfg := o.tls.Clone()
		cfg.NextProtos = []string{"h2"}
		dial = append(dial, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	} else {
		dial = append(dial, grpc.WithTransportCredentials(insecure.NewCredentials()))
	}
	conn, err := grpc.NewClient(target, dial...)
	if err != nil {
		return nil, fmt.Errorf("edgebox: dial %s: %w", target, err)
	}
	c := &Client{target: target, conn: conn, raw: inferpb.NewInferenceServiceClient(conn), opts: o}
	c.closing, c.close = context.WithCancel(context.Background())
	if o.breaker != nil {
		cfg := *o.breaker
		user := cfg.OnStateChange
		cfg.OnStateChange = func(from, to BreakerState) {
			o.logger.Warn("edgebox: circuit breaker", "target", target, "from", from.String(), "to", to.String())
			if to == BreakerOpen && c.watching.CompareAndSwap(false, true) {
				go c.watchReconnect()
			}
			if user != nil {
				user(from, to)
			}
		}
		c.breaker = NewBreaker(cfg)
	}
	return c, nil
}

// Target returns the address the client was dialed with.
func (c *Client) Target() string { return c.target }

// Raw returns the generated stub, for calls without this package's deadlines, retries and breaker.
func (c *Client) Raw() inferpb.InferenceServiceClient { return c.raw }

// Conn returns the underlying connection.
func (c *Client) Conn() *grpc.ClientConn { return c.conn }

// Breaker returns the client's circuit breaker, nil if it was disabled with WithoutBreaker.
func (c *Client) Breaker() *Breaker { return c.breaker }

// Close closes the connection; calls in flight fail with codes.Canceled.
func (c *Client) Close() error {
	c.close()
	return c.conn.Close()
}

// watchReconnect runs while the circuit is open: it keeps the connection trying (an idle gRPC connection
// does not reconnect by itself, and an open circuit sends no calls) and lets a probe through as soon as the
// node accepts connections again, instead of waiting out the whole OpenTimeout.
func (c *Client) watchReconnect() {
	defer c.watching.Store(false)
	for c.breaker.State() == BreakerOpen {
		state := c.conn.GetState()
		switch state {
		case connectivity.Ready:
			c.breaker.Probe()
			return
		case connectivity.Shutdown:
			return
		case connectivity.Idle:
			c.conn.Connect()
		}
		ctx, cancel := context.WithTimeout(c.closing, 100*time.Millisecond)
		c.conn.WaitForStateChange(ctx, state)
		cancel()
		if c.closing.Err() != nil {
			return
		}
	}
}

// WaitReady connects and waits until the connection is ready or ctx ends.
func (c *Client) WaitReady(ctx context.Context) error {
	for {
		s := c.conn.GetState()
		switch s {
		case connectivity.Ready:
			return nil
		case connectivity.Shutdown:
			return &Error{GRPCCode: codes.Canceled, Message: "the client is closed"}
		case connectivity.Idle:
			c.conn.Connect()
		}
		if !c.conn.WaitForStateChange(ctx, s) {
			return toError(ctx.Err())
		}
	}
}

// ResetBackoff makes a connection that is waiting out its reconnect back-off try again now.
func (c *Client) ResetBackoff() { c.conn.ResetConnectBackoff() }

// -- the unary calls ----------------------------------------------------------------------------------------

// AddCamera registers a camera and starts decoding it. Never retried.
func (c *Client) AddCamera(ctx context.Context, req *inferpb.AddCameraRequest) (*inferpb.CameraInfo, error) {
	var resp *inferpb.AddCameraResponse
	err := c.invoke(ctx, "AddCamera", false, func(ctx context.Context) (err error) {
		resp, err = c.raw.AddCamera(ctx, req)
		return err
	})
	return resp.GetCamera(), err
}

// RemoveCamera stops and forgets a camera; ErrCameraNotFound if unknown. Never retried.
func (c *Client) RemoveCamera(ctx context.Context, cameraID string) error {
	return c.invoke(ctx, "RemoveCamera", false, func(ctx context.Context) error {
		_, err := c.raw.RemoveCamera(ctx, &inferpb.RemoveCameraRequest{CameraId: cameraID})
		return err
	})
}

// ListCameras returns every camera with its live state, sorted by id.
func (c *Client) ListCameras(ctx context.Context) ([]*inferpb.CameraInfo, error) {
	var resp *inferpb.ListCamerasResponse
	err := c.invoke(ctx, "ListCameras", true, func(ctx context.Context) (err error) {
		resp, err = c.raw.ListCameras(ctx, &inferpb.ListCamerasRequest{})
		return err
	})
	return resp.GetCameras(), err
}

// DeployWorkflow creates a workflow (version 1). Never retried.
func (c *Client) DeployWorkflow(ctx context.Context, spec *inferpb.WorkflowSpec) (*inferpb.WorkflowInfo, error) {
	var resp *inferpb.DeployWorkflowResponse
	err := c.invoke(ctx, "DeployWorkflow", false, func(ctx context.Context) (err error) {
		resp, err = c.raw.DeployWorkflow(ctx, &inferpb.DeployWorkflowRequest{Workflow: spec})
		return err
	})
	return resp.GetWorkflow(), err
}

// UpdateWorkflow replaces a workflow with a new version. Never retried.
func (c *Client) UpdateWorkflow(ctx context.Context, spec *inferpb.WorkflowSpec) (*inferpb.WorkflowInfo, error) {
	var resp *inferpb.UpdateWorkflowResponse
	err := c.invoke(ctx, "UpdateWorkflow", false, func(ctx context.Context) (err error) {
		resp, err = c.raw.UpdateWorkflow(ctx, &inferpb.UpdateWorkflowRequest{Workflow: spec})
		return err
	})
	return resp.GetWorkflow(), err
}

// DeleteWorkflow deletes a workflow; ErrFailedPrecondition while a camera uses it. Never retried.
func (c *Client) DeleteWorkflow(ctx context.Context, workflowID string) error {
	return c.invoke(ctx, "DeleteWorkflow", false, func(ctx context.Context) error {
		_, err := c.raw.DeleteWorkflow(ctx, &inferpb.DeleteWorkflowRequest{WorkflowId: workflowID})
		return err
	})
}

// ListWorkflows returns every deployed workflow, sorted by id.
func (c *Client) ListWorkflows(ctx context.Context) ([]*inferpb.WorkflowInfo, error) {
	var resp *inferpb.ListWorkflowsResponse
	err := c.invoke(ctx, "ListWorkflows", true, func(ctx context.Context) (err error) {
		resp, err = c.raw.ListWorkflows(ctx, &inferpb.ListWorkflowsRequest{})
		return err
	})
	return resp.GetWorkflows(), err
}

// InferSingleFrame runs one frame through a workflow or a single plugin.
func (c *Client) InferSingleFrame(ctx context.Context, req *inferpb.InferRequest) (*inferpb.InferResult, error) {
	var resp *inferpb.InferResponse
	err := c.invoke(ctx, "InferSingleFrame", true, func(ctx context.Context) (err error) {
		resp, err = c.raw.InferSingleFrame(ctx, req)
		return err
	})
	return resp.GetResult(), err
}

// InferBatch runs up to 64 frames; one item per frame, in order, each with its own error code.
func (c *Client) InferBatch(ctx context.Context, req *inferpb.InferBatchRequest) ([]*inferpb.BatchItem, error) {
	var resp *inferpb.InferBatchResponse
	err := c.invoke(ctx, "InferBatch", true, func(ctx context.Context) (err error) {
		resp, err = c.raw.InferBatch(ctx, req)
		return err
	})
	return resp.GetItems(), err
}

// HealthCheck returns the engine's serving state, version, plugins and backends.
func (c *Client) HealthCheck(ctx context.Context) (*inferpb.HealthCheckResponse, error) {
	var resp *inferpb.HealthCheckResponse
	err := c.invoke(ctx, "HealthCheck", true, func(ctx context.Context) (err error) {
		resp, err = c.raw.HealthCheck(ctx, &inferpb.HealthCheckRequest{})
		return err
	})
	return resp, err
}

// GetMetrics returns the engine's counters and gauges.
func (c *Client) GetMetrics(ctx context.Context) (*inferpb.MetricsResponse, error) {
	var resp *inferpb.MetricsResponse
	err := c.invoke(ctx, "GetMetrics", true, func(ctx context.Context) (err error) {
		resp, err = c.raw.GetMetrics(ctx, &inferpb.MetricsRequest{})
		return err
	})
	return resp, err
}

// invoke runs one unary call under the call deadline, the breaker and, for idempotent calls, the retry
// policy. Every error it returns is an *Error.
func (c *Client) invoke(ctx context.Context, method string, idempotent bool, call func(context.Context) error) error {
	timeout, ok := c.opts.methodTimeouts[method]
	if !ok {
		timeout = c.opts.callTimeout
	}
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	attempts := 1
	if idempotent {
		attempts = max(1, c.opts.retry.MaxAttempts)
	}
	for n := 1; ; n++ {
		err := c.attempt(ctx, call)
		if err == nil {
			return nil
		}
		e := err.(*Error)
		if n >= attempts {
			return e
		}
		wait, retry := c.opts.retry.retryDelay(e, n)
		if !retry {
			return e
		}
		if deadline, ok := ctx.Deadline(); ok && time.Until(deadline) < wait {
			return e // the retry could not finish in time: report the real failure, not a deadline
		}
		c.opts.logger.Debug("edgebox: retrying", "target", c.target, "method", method, "attempt", n+1,
			"wait", wait, "error", e.Message)
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return e
		case <-timer.C:
		}
	}
}

func (c *Client) attempt(ctx context.Context, call func(context.Context) error) error {
	if c.breaker == nil {
		return toError(call(ctx))
	}
	done, err := c.breaker.Allow()
	if err != nil {
		return err
	}
	err = toError(call(ctx))
	done(breakerOutcome(err))
	return err
}
