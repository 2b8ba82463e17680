package edgebox_test

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/edgebox/edgebox/clients/go/edgebox"
	"github.com/edgebox/edgebox/clients/go/inferpb"
)

// faultyNode is a fault-injecting InferenceService: each call takes the next error of its script (nil =
// answer normally) and counts attempts. It stands in for the network peer only, to drive the retry policy.
type faultyNode struct {
	inferpb.UnimplementedInferenceServiceServer
	script   []error
	attempts atomic.Int32
}

func (f *faultyNode) next() error {
	n := int(f.attempts.Add(1)) - 1
	if n < len(f.script) {
		return f.script[n]
	}
	return nil
}

func (f *faultyNode) ListCameras(context.Context, *inferpb.ListCamerasRequest) (*inferpb.ListCamerasResponse, error) {
	return &inferpb.ListCamerasResponse{}, f.next()
}

func (f *faultyNode) AddCamera(context.Context, *inferpb.AddCameraRequest) (*inferpb.AddCameraResponse, error) {
	return &inferpb.AddCameraResponse{}, f.next()
}

func (f *faultyNode) DeployWorkflow(context.Context, *inferpb.DeployWorkflowRequest) (*inferpb.DeployWorkflowResponse, error) {
	return &inferpb.DeployWorkflowResponse{}, f.next()
}

func (f *faultyNode) InferSingleFrame(context.Context, *inferpb.InferRequest) (*inferpb.InferResponse, error) {
	return &inferpb.InferResponse{Result: &inferpb.InferResult{}}, f.next()
}

func startFaultyNode(t *testing.T, script ...error) (*faultyNode, string) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	node := &faultyNode{script: script}
	srv := grpc.NewServer()
	inferpb.RegisterInferenceServiceServer(srv, node)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return node, lis.Addr().String()
}

func unavailable() error { return status.Error(codes.Unavailable, "[503 SHUTTING_DOWN] draining") }

func exhausted(retryAfter time.Duration) error {
	st := status.New(codes.ResourceExhausted, "[429 RESOURCE_EXHAUSTED] queue full")
	details := []protoadapt.MessageV1{&errdetails.ErrorInfo{Reason: "RESOURCE_EXHAUSTED", Domain: edgebox.ErrorDomain,
		Metadata: map[string]string{"code": "429"}}}
	if retryAfter > 0 {
		details = append(details, &errdetails.RetryInfo{RetryDelay: durationpb.New(retryAfter)})
	}
	st, _ = st.WithDetails(details...)
	return st.Err()
}

var fastRetries = edgebox.WithRetryPolicy(edgebox.RetryPolicy{MaxAttempts: 4, InitialBackoff: 10 * time.Millisecond,
	MaxBackoff: 40 * time.Millisecond})

func TestIdempotentCallIsRetriedOnUnavailable(t *testing.T) {
	node, addr := startFaultyNode(t, unavailable(), unavailable())
	c := dial(t, addr, fastRetries, edgebox.WithoutBreaker())
	if _, err := c.ListCameras(testContext(t, 10*time.Second)); err != nil {
		t.Fatalf("ListCameras: %v", err)
	}
	if n := node.attempts.Load(); n != 3 {
		t.Fatalf("%d attempts, want 3", n)
	}
}

func TestRetriesStopAtMaxAttempts(t *testing.T) {
	node, addr := startFaultyNode(t, unavailable(), unavailable(), unavailable(), unavailable(), unavailable())
	c := dial(t, addr, fastRetries, edgebox.WithoutBreaker())
	_, err := c.ListCameras(testContext(t, 10*time.Second))
	if !edgebox.IsUnavailable(err) {
		t.Fatalf("got %v", err)
	}
	if n := node.attempts.Load(); n != 4 {
		t.Fatalf("%d attempts, want 4", n)
	}
}

func TestCallsThatChangeStateAreNeverRetried(t *testing.T) {
	for name, call := range map[string]func(*edgebox.Client, context.Context) error{
		"AddCamera": func(c *edgebox.Client, ctx context.Context) error {
			_, err := c.AddCamera(ctx, &inferpb.AddCameraRequest{CameraId: "x"})
			return err
		},
		"DeployWorkflow": func(c *edgebox.Client, ctx context.Context) error {
			_, err := c.DeployWorkflow(ctx, &inferpb.WorkflowSpec{WorkflowId: "x"})
			return err
		},
	} {
		t.Run(name, func(t *testing.T) {
			node, addr := startFaultyNode(t, unavailable(), unavailable())
			c := dial(t, addr, fastRetries, edgebox.WithoutBreaker())
			if err := call(c, testContext(t, 10*time.Second)); !edgebox.IsUnavailable(err) {
				t.Fatalf("got %v", err)
			}
			if n := node.attempts.Load(); n != 1 {
				t.Fatalf("%d attempts, want 1", n)
			}
		})
	}
}

func TestResourceExhaustedIsRetriedAfterTheRetryInfoDelay(t *testing.T) {
	node, addr := startFaultyNode(t, exhausted(300*time.Millisecond))
	c := dial(t, addr, fastRetries, edgebox.WithoutBreaker())
	start := time.Now()
	if _, err := c.InferSingleFrame(testContext(t, 10*time.Second), &inferpb.InferRequest{Plugin: "person"}); err != nil {
		t.Fatalf("InferSingleFrame: %v", err)
	}
	if waited := time.Since(start); waited < 300*time.Millisecond {
		t.Fatalf("retried after %s, before the hinted 300ms", waited)
	}
	if n := node.attempts.Load(); n != 2 {
		t.Fatalf("%d attempts, want 2", n)
	}
}

func TestResourceExhaustedWithoutAHintIsNotRetried(t *testing.T) {
	node, addr := startFaultyNode(t, exhausted(0))
	c := dial(t, addr, fastRetries, edgebox.WithoutBreaker())
	_, err := c.InferSingleFrame(testContext(t, 10*time.Second), &inferpb.InferRequest{Plugin: "person"})
	if !edgebox.IsResourceExhausted(err) || edgebox.CodeOf(err) != inferpb.InferErrorCode_RESOURCE_EXHAUSTED {
		t.Fatalf("got %v", err)
	}
	if n := node.attempts.Load(); n != 1 {
		t.Fatalf("%d attempts, want 1", n)
	}
}

func TestRetryAfterHintLongerThanTheDeadlineReturnsTheRealError(t *testing.T) {
	_, addr := startFaultyNode(t, exhausted(5*time.Second))
	c := dial(t, addr, fastRetries, edgebox.WithoutBreaker(), edgebox.WithCallTimeout(time.Second))
	start := time.Now()
	_, err := c.InferSingleFrame(context.Background(), &inferpb.InferRequest{Plugin: "person"})
	e, ok := edgebox.AsError(err)
	if !ok || e.GRPCCode != codes.ResourceExhausted || e.RetryAfter != 5*time.Second {
		t.Fatalf("got %v", err)
	}
	if time.Since(start) > 500*time.Millisecond {
		t.Fatalf("waited %s for a retry that could not fit the deadline", time.Since(start))
	}
}

func TestBackoffGrowsExponentiallyWithJitterUpToTheCap(t *testing.T) {
	p := edgebox.RetryPolicy{MaxAttempts: 10, InitialBackoff: 100 * time.Millisecond, MaxBackoff: time.Second,
		Multiplier: 2, Jitter: 0.2}
	for n, want := range map[int]time.Duration{1: 100 * time.Millisecond, 2: 200 * time.Millisecond,
		3: 400 * time.Millisecond, 4: 800 * time.Millisecond, 5: time.Second, 9: time.Second} {
		seen := map[time.Duration]bool{}
		for range 50 {
			d := p.Backoff(n)
			if d < want*8/10 || d > want*12/10 {
				t.Fatalf("Backoff(%d) = %s, want %s ±20%%", n, d, want)
			}
			seen[d] = true
		}
		if len(seen) < 10 {
			t.Fatalf("Backoff(%d) has no jitter: %v", n, seen)
		}
	}
}
