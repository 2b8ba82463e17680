package edgebox_test

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/edgebox/edgebox/clients/go/edgebox"
	"github.com/edgebox/edgebox/clients/go/inferpb"
)

// Every error code a client can provoke on a healthy engine, each checked through every way of asking.
func TestEveryReachableErrorCodeIsTyped(t *testing.T) {
	c := dial(t, engineAddr)
	ctx := testContext(t, 60*time.Second)
	wf, cam := uniqueID("wf-err"), uniqueID("cam-err")
	if _, err := c.DeployWorkflow(ctx, &inferpb.WorkflowSpec{WorkflowId: wf, Plugins: []string{"motion"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.AddCamera(ctx, &inferpb.AddCameraRequest{CameraId: cam, RtspUrl: "demo://empty", WorkflowId: wf,
		Config: map[string]string{"fps": "1"}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx := testContext(t, 20*time.Second)
		_ = c.RemoveCamera(ctx, cam)
		_ = c.DeleteWorkflow(ctx, wf)
	})

	cases := []struct {
		name     string
		call     func(context.Context) error
		sentinel *edgebox.Error
		code     inferpb.InferErrorCode
		grpcCode codes.Code
		is       func(error) bool
	}{
		{"CAMERA_NOT_FOUND", func(ctx context.Context) error { return c.RemoveCamera(ctx, "no-such-camera") },
			edgebox.ErrCameraNotFound, 1001, codes.NotFound, edgebox.IsNotFound},
		{"WORKFLOW_NOT_FOUND", func(ctx context.Context) error {
			_, err := c.AddCamera(ctx, &inferpb.AddCameraRequest{CameraId: uniqueID("cam"), RtspUrl: "demo://empty",
				WorkflowId: "no-such-workflow"})
			return err
		}, edgebox.ErrWorkflowNotFound, 1002, codes.NotFound, edgebox.IsNotFound},
		{"PLUGIN_LOAD_FAILED", func(ctx context.Context) error {
			_, err := c.DeployWorkflow(ctx, &inferpb.WorkflowSpec{WorkflowId: uniqueID("wf"),
				Plugins: []string{"no_such_plugin"}})
			return err
		}, edgebox.ErrPluginLoadFailed, 2001, codes.FailedPrecondition, edgebox.IsFailedPrecondition},
		{"INVALID_REQUEST", func(ctx context.Context) error {
			_, err := c.DeployWorkflow(ctx, &inferpb.WorkflowSpec{WorkflowId: "bad id!", Plugins: []string{"person"}})
			return err
		}, edgebox.ErrInvalidRequest, 400, codes.InvalidArgument, edgebox.IsInvalidArgument},
		{"INVALID_REQUEST (infer without a target)", func(ctx context.Context) error {
			_, err := c.InferSingleFrame(ctx, &inferpb.InferRequest{Frame: &inferpb.Frame{ImageData: []byte{1}}})
			return err
		}, edgebox.ErrInvalidRequest, 400, codes.InvalidArgument, edgebox.IsInvalidArgument},
		{"ALREADY_EXISTS", func(ctx context.Context) error {
			_, err := c.DeployWorkflow(ctx, &inferpb.WorkflowSpec{WorkflowId: wf, Plugins: []string{"motion"}})
			return err
		}, edgebox.ErrAlreadyExists, 409, codes.AlreadyExists, edgebox.IsAlreadyExists},
		{"FAILED_PRECONDITION", func(ctx context.Context) error { return c.DeleteWorkflow(ctx, wf) },
			edgebox.ErrFailedPrecondition, 412, codes.FailedPrecondition, edgebox.IsFailedPrecondition},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call(ctx)
			if err == nil {
				t.Fatal("no error")
			}
			var e *edgebox.Error
			if !errors.As(err, &e) {
				t.Fatalf("%T is not *edgebox.Error: %v", err, err)
			}
			if e.Code != tc.code || e.GRPCCode != tc.grpcCode || e.Reason != tc.code.String() {
				t.Fatalf("code %d reason %q gRPC %s; want %d %s %s", e.Code, e.Reason, e.GRPCCode, tc.code,
					tc.code, tc.grpcCode)
			}
			if !errors.Is(err, tc.sentinel) || !tc.is(err) {
				t.Fatalf("errors.Is(err, %v) or its Is helper is false", tc.sentinel.Reason)
			}
			if prefix := "[" + itoa(int(tc.code)) + " " + tc.code.String() + "] "; !strings.HasPrefix(e.Message, prefix) {
				t.Fatalf("message %q does not start with %q", e.Message, prefix)
			}
			if e.Metadata["code"] != itoa(int(tc.code)) {
				t.Fatalf("ErrorInfo metadata %v", e.Metadata)
			}
			if status.Code(err) != tc.grpcCode || edgebox.CodeOf(err) != tc.code {
				t.Fatalf("status.Code %s, CodeOf %v", status.Code(err), edgebox.CodeOf(err))
			}
			for _, other := range []*edgebox.Error{edgebox.ErrCameraNotFound, edgebox.ErrWorkflowNotFound,
				edgebox.ErrPluginLoadFailed, edgebox.ErrFailedPrecondition, edgebox.ErrInvalidRequest} {
				if other != tc.sentinel && errors.Is(err, other) {
					t.Fatalf("error also matches %s", other.Reason)
				}
			}
		})
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

func TestConnectionRefusedIsUnavailableWithoutAnEngineCode(t *testing.T) {
	c := dial(t, "127.0.0.1:1", edgebox.WithoutRetries(), edgebox.WithoutBreaker())
	_, err := c.HealthCheck(testContext(t, 10*time.Second))
	if !edgebox.IsUnavailable(err) || edgebox.CodeOf(err) != inferpb.InferErrorCode_OK {
		t.Fatalf("got %v", err)
	}
	if errors.Is(err, edgebox.ErrCircuitOpen) || errors.Is(err, edgebox.ErrShuttingDown) {
		t.Fatalf("%v matches a sentinel it should not", err)
	}
}
