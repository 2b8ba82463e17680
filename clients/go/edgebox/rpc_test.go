package edgebox_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"slices"
	"testing"
	"time"

	"github.com/edgebox/edgebox/clients/go/edgebox"
	"github.com/edgebox/edgebox/clients/go/inferpb"
	"github.com/edgebox/edgebox/clients/go/internal/enginetest"
)

type detections struct {
	Detections []struct {
		Label string    `json:"label"`
		Score float64   `json:"score"`
		Box   []float64 `json:"box"`
	} `json:"detections"`
	Width  int `json:"width"`
	Height int `json:"height"`
}

func personScore(t testing.TB, r *inferpb.InferResult) float64 {
	t.Helper()
	var d detections
	if err := json.Unmarshal([]byte(r.GetJsonData()), &d); err != nil {
		t.Fatalf("json_data %q: %v", r.GetJsonData(), err)
	}
	best := 0.0
	for _, det := range d.Detections {
		if det.Label == "person" && det.Score > best {
			best = det.Score
		}
	}
	return best
}

func TestWorkflowAndCameraRPCsRoundTrip(t *testing.T) {
	c := dial(t, engineAddr)
	ctx := testContext(t, 60*time.Second)
	wf := uniqueID("wf")
	info, err := c.DeployWorkflow(ctx, &inferpb.WorkflowSpec{WorkflowId: wf, Plugins: []string{"person"}, MinScore: 0.4})
	if err != nil {
		t.Fatalf("DeployWorkflow: %v", err)
	}
	if info.GetVersion() != 1 || info.GetSpec().GetWorkflowId() != wf {
		t.Fatalf("DeployWorkflow returned %v", info)
	}
	info, err = c.UpdateWorkflow(ctx, &inferpb.WorkflowSpec{WorkflowId: wf, Plugins: []string{"person"}, MinScore: 0.6})
	if err != nil {
		t.Fatalf("UpdateWorkflow: %v", err)
	}
	if info.GetVersion() != 2 || info.GetSpec().GetMinScore() < 0.59 {
		t.Fatalf("UpdateWorkflow returned %v", info)
	}
	workflows, err := c.ListWorkflows(ctx)
	if err != nil {
		t.Fatalf("ListWorkflows: %v", err)
	}
	if !hasWorkflow(workflows, wf) {
		t.Fatalf("ListWorkflows lacks %s: %v", wf, workflows)
	}

	cam := uniqueID("cam")
	camera, err := c.AddCamera(ctx, &inferpb.AddCameraRequest{CameraId: cam, RtspUrl: "demo://empty", WorkflowId: wf,
		Config: map[string]string{"fps": "2"}})
	if err != nil {
		t.Fatalf("AddCamera: %v", err)
	}
	if camera.GetCameraId() != cam || camera.GetWorkflowId() != wf {
		t.Fatalf("AddCamera returned %v", camera)
	}
	enginetest.Eventually(t, 20*time.Second, func() error {
		cameras, err := c.ListCameras(ctx)
		if err != nil {
			return err
		}
		for _, ci := range cameras {
			if ci.GetCameraId() == cam && ci.GetState() == inferpb.CameraState_STREAMING {
				return nil
			}
		}
		return enginetest.Errorf("camera %s is not STREAMING yet: %v", cam, cameras)
	})
	metrics, err := c.GetMetrics(ctx)
	if err != nil {
		t.Fatalf("GetMetrics: %v", err)
	}
	if metrics.GetRegisteredCameras() < 1 || metrics.GetWorkflows() < 1 || metrics.GetMemoryUsageBytes() <= 0 {
		t.Fatalf("GetMetrics returned %v", metrics)
	}
	// The workflow's person model, with the backend and device it really runs on (HealthCheck lists the same).
	health, err := c.HealthCheck(ctx)
	if err != nil {
		t.Fatalf("HealthCheck: %v", err)
	}
	found := false
	for _, m := range metrics.GetModels() {
		label := m.GetModel() + ": " + m.GetBackend() + " on " + m.GetDevice()
		if m.GetModel() == "person" && m.GetBatchLimit() >= 1 && m.GetExecutions() >= 1 && slices.Contains(health.GetModels(), label) {
			found = true
		}
	}
	if !found {
		t.Fatalf("GetMetrics models %v lack person as HealthCheck lists it (%v)", metrics.GetModels(), health.GetModels())
	}
	if err := c.RemoveCamera(ctx, cam); err != nil {
		t.Fatalf("RemoveCamera: %v", err)
	}
	if err := c.DeleteWorkflow(ctx, wf); err != nil {
		t.Fatalf("DeleteWorkflow: %v", err)
	}
	workflows, err = c.ListWorkflows(ctx)
	if err != nil || hasWorkflow(workflows, wf) {
		t.Fatalf("after DeleteWorkflow: %v %v", workflows, err)
	}
}

func hasWorkflow(list []*inferpb.WorkflowInfo, id string) bool {
	for _, w := range list {
		if w.GetSpec().GetWorkflowId() == id {
			return true
		}
	}
	return false
}

func TestHealthCheckReportsServingAndPlugins(t *testing.T) {
	c := dial(t, engineAddr)
	h, err := c.HealthCheck(testContext(t, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if h.GetStatus() != inferpb.HealthStatus_SERVING || h.GetVersion() == "" || h.GetPluginCount() < 1 {
		t.Fatalf("HealthCheck returned %v", h)
	}
	found := false
	for _, p := range h.GetPlugins() {
		found = found || p == "person"
	}
	if !found {
		t.Fatalf("plugins %v lack person", h.GetPlugins())
	}
}

func TestInferSingleFrameFindsTheAstronaut(t *testing.T) {
	c := dial(t, engineAddr)
	photo := enginetest.TestDataT(t, "astronaut.png")
	r, err := c.InferSingleFrame(testContext(t, 60*time.Second), &inferpb.InferRequest{
		Plugin: "person", Frame: &inferpb.Frame{ImageData: photo}, SourceId: "go-test", ReturnImage: true})
	if err != nil {
		t.Fatal(err)
	}
	if s := personScore(t, r); s < 0.5 {
		t.Fatalf("person score %.2f in %s", s, r.GetJsonData())
	}
	if r.GetCameraId() != "go-test" || len(r.GetImageData()) == 0 {
		t.Fatalf("source id %q, image %d bytes", r.GetCameraId(), len(r.GetImageData()))
	}
}

func TestInferBatchReturnsOneItemPerFrameWithItsOwnError(t *testing.T) {
	c := dial(t, engineAddr)
	photo := enginetest.TestDataT(t, "astronaut.png")
	items, err := c.InferBatch(testContext(t, 60*time.Second), &inferpb.InferBatchRequest{Plugin: "person",
		Frames: []*inferpb.Frame{{ImageData: photo}, {ImageData: []byte("not an image")}, {ImageData: photo}}})
	if err != nil {
		t.Fatal(err)
	}
	if len(items) != 3 {
		t.Fatalf("%d items", len(items))
	}
	for _, i := range []int{0, 2} {
		if items[i].GetErrorCode() != inferpb.InferErrorCode_OK || personScore(t, items[i].GetResult()) < 0.5 {
			t.Fatalf("item %d: %v", i, items[i])
		}
	}
	if items[1].GetErrorCode() != inferpb.InferErrorCode_INVALID_REQUEST || items[1].GetErrorMessage() == "" {
		t.Fatalf("corrupt frame: %v", items[1])
	}
}

func TestSubscribeResultsStreamsADemoCamerasResults(t *testing.T) {
	c := dial(t, engineAddr)
	ctx := testContext(t, 60*time.Second)
	wf, cam := uniqueID("wf-sub"), uniqueID("cam-sub")
	if _, err := c.DeployWorkflow(ctx, &inferpb.WorkflowSpec{WorkflowId: wf, Plugins: []string{"person"}}); err != nil {
		t.Fatal(err)
	}
	stream, err := c.SubscribeResults(ctx, &inferpb.SubscribeRequest{CameraIds: []string{cam}, OmitImages: true})
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	if _, err := c.AddCamera(ctx, &inferpb.AddCameraRequest{CameraId: cam, RtspUrl: "demo://person",
		WorkflowId: wf, Config: map[string]string{"fps": "5"}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx := testContext(t, 20*time.Second)
		_ = c.RemoveCamera(ctx, cam)
		_ = c.DeleteWorkflow(ctx, wf)
	})
	var last uint64
	persons := 0
	for n := 0; n < 10 && persons == 0 || n < 3; n++ {
		r, err := stream.Recv()
		if err != nil {
			t.Fatalf("Recv %d: %v", n, err)
		}
		if r.GetCameraId() != cam || r.GetWorkflowId() != wf || len(r.GetImageData()) != 0 {
			t.Fatalf("result %d: camera %q workflow %q image %d bytes", n, r.GetCameraId(), r.GetWorkflowId(),
				len(r.GetImageData()))
		}
		if r.GetFrameSeq() <= last {
			t.Fatalf("frame_seq %d after %d", r.GetFrameSeq(), last)
		}
		last = r.GetFrameSeq()
		if personScore(t, r) > 0 {
			persons++
		}
	}
	if persons == 0 {
		t.Fatalf("no person in 10 results of demo://person")
	}
}

func TestStreamInferReturnsOneResultPerFrameInOrder(t *testing.T) {
	c := dial(t, engineAddr)
	photo := enginetest.TestDataT(t, "astronaut.png")
	stream, err := c.StreamInfer(testContext(t, 60*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	const frames = 6
	sendErr := make(chan error, 1)
	go func() {
		for i := 0; i < frames; i++ {
			f := &inferpb.StreamFrame{Frame: &inferpb.Frame{ImageData: photo, Timestamp: int64(1000 + i)},
				SourceId: "go-stream"}
			if i == 0 {
				f.Plugin = "person"
			}
			if i == 3 {
				f.Frame.ImageData = []byte("broken") // one bad frame must not end the stream
			}
			if err := stream.Send(f); err != nil {
				sendErr <- err
				return
			}
		}
		sendErr <- stream.CloseSend()
	}()
	for i := 0; i < frames; i++ {
		r, err := stream.Recv()
		if err != nil {
			t.Fatalf("Recv %d: %v", i, err)
		}
		if r.GetFrameSeq() != uint64(i+1) || r.GetCameraId() != "go-stream" {
			t.Fatalf("result %d: frame_seq %d camera %q", i, r.GetFrameSeq(), r.GetCameraId())
		}
		if i == 3 {
			if r.GetErrorCode() != inferpb.InferErrorCode_INVALID_REQUEST {
				t.Fatalf("bad frame: error code %v (%s)", r.GetErrorCode(), r.GetErrorMessage())
			}
			continue
		}
		if r.GetErrorCode() != inferpb.InferErrorCode_OK || personScore(t, r) < 0.5 {
			t.Fatalf("result %d: %v", i, r)
		}
	}
	if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("after the last result: %v, want io.EOF", err)
	}
	if err := <-sendErr; err != nil {
		t.Fatal(err)
	}
}

func TestTinyDeadlineOnInferSingleFrameIsDeadlineExceeded(t *testing.T) {
	c := dial(t, engineAddr, edgebox.WithMethodTimeout("InferSingleFrame", time.Millisecond))
	photo := enginetest.TestDataT(t, "astronaut.png")
	_, err := c.InferSingleFrame(testContext(t, 10*time.Second), &inferpb.InferRequest{Plugin: "person",
		Frame: &inferpb.Frame{ImageData: photo}})
	if !edgebox.IsDeadlineExceeded(err) {
		t.Fatalf("got %v, want DeadlineExceeded", err)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("errors.Is(%v, context.DeadlineExceeded) is false", err)
	}
	// The caller's own deadline gives the same answer.
	c2 := dial(t, engineAddr)
	ctx := testContext(t, time.Millisecond)
	if _, err := c2.InferSingleFrame(ctx, &inferpb.InferRequest{Plugin: "person",
		Frame: &inferpb.Frame{ImageData: photo}}); !edgebox.IsDeadlineExceeded(err) {
		t.Fatalf("got %v, want DeadlineExceeded", err)
	}
}
