package edgebox_test

// The examples of docs/api.md: `go test` runs them against the engine started by TestMain, and
// TestDocsShowTheExamples checks that docs/api.md shows exactly these bodies (go test ./edgebox -run Docs
// -update-docs rewrites them there). engineAddr is the engine's host:port, photoPath an image file.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"time"

	"github.com/edgebox/edgebox/clients/go/edgebox"
	"github.com/edgebox/edgebox/clients/go/inferpb"
)

const photoPath = "../../../tests/data/astronaut.png"

func ExampleDial() {
	client, err := edgebox.Dial(engineAddr, // e.g. "127.0.0.1:50051"
		edgebox.WithCallTimeout(5*time.Second),                          // every unary call, retries included
		edgebox.WithMethodTimeout("InferBatch", 30*time.Second),         // per RPC
		edgebox.WithBreaker(edgebox.BreakerConfig{FailureThreshold: 5}), // on by default
		// edgebox.WithTLSFiles("ca.pem", "client.pem", "client-key.pem"), // TLS / mTLS
	)
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	health, err := client.HealthCheck(context.Background())
	switch {
	case errors.Is(err, edgebox.ErrCircuitOpen):
		log.Printf("node considered down; no call made")
	case edgebox.IsUnavailable(err):
		log.Printf("node unreachable after retries: %v", err)
	case err != nil:
		log.Fatal(err)
	default:
		fmt.Println(health.GetStatus())
	}
	// Output: SERVING
}

func ExampleClient_AddCamera() {
	client, err := edgebox.Dial(engineAddr)
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	ctx := context.Background()
	_, err = client.DeployWorkflow(ctx, &inferpb.WorkflowSpec{WorkflowId: "doc-add", Plugins: []string{"person"}})
	if err != nil {
		log.Fatal(err)
	}

	camera, err := client.AddCamera(ctx, &inferpb.AddCameraRequest{
		CameraId:   "doc-lobby",
		RtspUrl:    "demo://person", // or rtsp://user:pass@10.0.0.7:554/stream1
		WorkflowId: "doc-add",
		Config:     map[string]string{"fps": "2"},
	})
	if errors.Is(err, edgebox.ErrAlreadyExists) {
		log.Printf("doc-lobby is already registered")
	} else if err != nil {
		log.Fatal(err)
	}
	fmt.Println(camera.GetCameraId(), camera.GetWorkflowId())

	_ = client.RemoveCamera(ctx, "doc-lobby")
	_ = client.DeleteWorkflow(ctx, "doc-add")
	// Output: doc-lobby doc-add
}

func ExampleClient_RemoveCamera() {
	client, err := edgebox.Dial(engineAddr)
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	err = client.RemoveCamera(context.Background(), "no-such-camera")
	if errors.Is(err, edgebox.ErrCameraNotFound) {
		e, _ := edgebox.AsError(err)
		fmt.Println(e.Code, int(e.Code), e.GRPCCode)
	}
	// Output: CAMERA_NOT_FOUND 1001 NotFound
}

func ExampleClient_ListCameras() {
	client, err := edgebox.Dial(engineAddr)
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	ctx := context.Background()
	if _, err := client.DeployWorkflow(ctx, &inferpb.WorkflowSpec{WorkflowId: "doc-cams", Plugins: []string{"motion"}}); err != nil {
		log.Fatal(err)
	}
	if _, err := client.AddCamera(ctx, &inferpb.AddCameraRequest{CameraId: "doc-yard", RtspUrl: "demo://empty",
		WorkflowId: "doc-cams"}); err != nil {
		log.Fatal(err)
	}

	cameras, err := client.ListCameras(ctx) // sorted by camera id
	if err != nil {
		log.Fatal(err)
	}
	for _, c := range cameras {
		log.Printf("%s %s %.1f fps in, %d reconnects, last error %q", c.GetCameraId(), c.GetState(),
			c.GetFpsIn(), c.GetReconnects(), c.GetLastError())
		if c.GetCameraId() == "doc-yard" {
			fmt.Println(c.GetCameraId(), c.GetRtspUrl(), c.GetWorkflowId())
		}
	}

	_ = client.RemoveCamera(ctx, "doc-yard")
	_ = client.DeleteWorkflow(ctx, "doc-cams")
	// Output: doc-yard demo://empty doc-cams
}

func ExampleClient_DeployWorkflow() {
	client, err := edgebox.Dial(engineAddr)
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	ctx := context.Background()

	info, err := client.DeployWorkflow(ctx, &inferpb.WorkflowSpec{
		WorkflowId: "doc-deploy",
		Plugins:    []string{"person"},
		MinScore:   0.5,
		Zones: []*inferpb.Zone{{Name: "door", Points: []*inferpb.Point{
			{X: 0, Y: 0.5}, {X: 0.5, Y: 0.5}, {X: 0.5, Y: 1}, {X: 0, Y: 1}}}},
		Alarm: &inferpb.AlarmRule{Labels: []string{"person"}, MinConsecutiveFrames: 2, CooldownMs: 10000},
	})
	if errors.Is(err, edgebox.ErrPluginLoadFailed) {
		log.Fatalf("a plugin is missing on this node: %v", err)
	} else if err != nil {
		log.Fatal(err)
	}
	fmt.Println(info.GetSpec().GetWorkflowId(), "version", info.GetVersion())

	_ = client.DeleteWorkflow(ctx, "doc-deploy")
	// Output: doc-deploy version 1
}

func ExampleClient_UpdateWorkflow() {
	client, err := edgebox.Dial(engineAddr)
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	ctx := context.Background()
	spec := &inferpb.WorkflowSpec{WorkflowId: "doc-update", Plugins: []string{"person"}}
	if _, err := client.DeployWorkflow(ctx, spec); err != nil {
		log.Fatal(err)
	}

	spec.MinScore = 0.7 // the whole spec is replaced; cameras switch to version 2 between two frames
	info, err := client.UpdateWorkflow(ctx, spec)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("version", info.GetVersion())

	_ = client.DeleteWorkflow(ctx, "doc-update")
	// Output: version 2
}

func ExampleClient_DeleteWorkflow() {
	client, err := edgebox.Dial(engineAddr)
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	ctx := context.Background()
	if _, err := client.DeployWorkflow(ctx, &inferpb.WorkflowSpec{WorkflowId: "doc-delete", Plugins: []string{"motion"}}); err != nil {
		log.Fatal(err)
	}

	err = client.DeleteWorkflow(ctx, "doc-delete")
	switch {
	case errors.Is(err, edgebox.ErrFailedPrecondition):
		log.Printf("cameras still use it: remove or re-point them first")
	case err != nil:
		log.Fatal(err)
	}
	err = client.DeleteWorkflow(ctx, "doc-delete")
	fmt.Println(errors.Is(err, edgebox.ErrWorkflowNotFound), edgebox.IsNotFound(err))
	// Output: true true
}

func ExampleClient_ListWorkflows() {
	client, err := edgebox.Dial(engineAddr)
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	ctx := context.Background()
	if _, err := client.DeployWorkflow(ctx, &inferpb.WorkflowSpec{WorkflowId: "doc-list", Plugins: []string{"face"}}); err != nil {
		log.Fatal(err)
	}

	workflows, err := client.ListWorkflows(ctx)
	if err != nil {
		log.Fatal(err)
	}
	for _, w := range workflows {
		if w.GetSpec().GetWorkflowId() == "doc-list" {
			fmt.Println(w.GetSpec().GetPlugins(), "version", w.GetVersion(), "cameras", w.GetCameraIds())
		}
	}

	_ = client.DeleteWorkflow(ctx, "doc-list")
	// Output: [face] version 1 cameras []
}

func ExampleClient_InferSingleFrame() {
	client, err := edgebox.Dial(engineAddr)
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	photo, err := os.ReadFile(photoPath) // JPEG or PNG
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	result, err := client.InferSingleFrame(ctx, &inferpb.InferRequest{
		Plugin: "person", // or WorkflowId: "lobby"
		Frame:  &inferpb.Frame{ImageData: photo},
	})
	if edgebox.IsDeadlineExceeded(err) {
		log.Fatal("no result within 30 s")
	} else if err != nil {
		log.Fatal(err)
	}
	var found struct {
		Detections []struct {
			Label string    `json:"label"`
			Score float64   `json:"score"`
			Box   []float64 `json:"box"`
		} `json:"detections"`
	}
	if err := json.Unmarshal([]byte(result.GetJsonData()), &found); err != nil {
		log.Fatal(err)
	}
	d := found.Detections[0]
	fmt.Println(d.Label, d.Score > 0.5, len(d.Box))
	// Output: person true 4
}

func ExampleClient_InferBatch() {
	client, err := edgebox.Dial(engineAddr)
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	photo, err := os.ReadFile(photoPath)
	if err != nil {
		log.Fatal(err)
	}

	items, err := client.InferBatch(context.Background(), &inferpb.InferBatchRequest{
		Plugin: "person",
		Frames: []*inferpb.Frame{{ImageData: photo}, {ImageData: []byte("not an image")}},
	})
	if err != nil {
		log.Fatal(err)
	}
	for i, item := range items { // one per frame, in order; a bad frame fails alone
		if item.GetErrorCode() != inferpb.InferErrorCode_OK {
			fmt.Println(i, item.GetErrorCode())
			continue
		}
		fmt.Println(i, item.GetResult().GetJsonData() != "")
	}
	// Output:
	// 0 true
	// 1 INVALID_REQUEST
}

func ExampleClient_HealthCheck() {
	client, err := edgebox.Dial(engineAddr)
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	health, err := client.HealthCheck(context.Background())
	if err != nil {
		log.Fatal(err)
	}
	log.Printf("edgebox %s up %.0f s, GPU %v, backends %v, plugin errors %v", health.GetVersion(),
		health.GetUptimeS(), health.GetGpuAvailable(), health.GetBackends(), health.GetPluginErrors())
	fmt.Println(health.GetStatus(), health.GetPlugins())
	// Output: SERVING [face motion person]
}

func ExampleClient_GetMetrics() {
	client, err := edgebox.Dial(engineAddr)
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	m, err := client.GetMetrics(context.Background())
	if err != nil {
		log.Fatal(err)
	}
	log.Printf("%d/%d cameras streaming, %d inferences (%d failed), %.1f ms mean latency, queue %d",
		m.GetActiveCameras(), m.GetRegisteredCameras(), m.GetTotalInferRequests_64(), m.GetFailedInferRequests(),
		m.GetAvgInferLatencyMs(), m.GetQueueDepth())
	fmt.Println(m.GetMemoryUsageBytes() > 0)
	// Output: true
}

func ExampleClient_SubscribeResults() {
	client, err := edgebox.Dial(engineAddr)
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := client.DeployWorkflow(ctx, &inferpb.WorkflowSpec{WorkflowId: "doc-sub", Plugins: []string{"person"}}); err != nil {
		log.Fatal(err)
	}
	if _, err := client.AddCamera(ctx, &inferpb.AddCameraRequest{CameraId: "doc-door", RtspUrl: "demo://person",
		WorkflowId: "doc-sub", Config: map[string]string{"fps": "2"}}); err != nil {
		log.Fatal(err)
	}

	stream, err := client.SubscribeResults(ctx, &inferpb.SubscribeRequest{
		CameraIds:  []string{"doc-door"}, // empty = every camera
		OmitImages: true,
	})
	if err != nil {
		log.Fatal(err)
	}
	defer stream.Close()
	for n := 0; n < 2; n++ {
		r, err := stream.Recv()
		if err == io.EOF {
			break // the engine is shutting down
		} else if err != nil {
			log.Fatal(err)
		}
		fmt.Println(r.GetCameraId(), r.GetWorkflowId(), r.GetFrameSeq() > 0)
	}

	_ = client.RemoveCamera(ctx, "doc-door")
	_ = client.DeleteWorkflow(ctx, "doc-sub")
	// Output:
	// doc-door doc-sub true
	// doc-door doc-sub true
}

func ExampleClient_StreamInfer() {
	client, err := edgebox.Dial(engineAddr)
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	photo, err := os.ReadFile(photoPath)
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	stream, err := client.StreamInfer(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer stream.Close()
	go func() { // send and receive concurrently: the engine works on several frames at once
		for i := 0; i < 3; i++ {
			frame := &inferpb.StreamFrame{Frame: &inferpb.Frame{ImageData: photo}, SourceId: "dock-cam"}
			if i == 0 {
				frame.Plugin = "person" // the first message names the workflow or plugin
			}
			if err := stream.Send(frame); err != nil {
				return // Recv reports why
			}
		}
		_ = stream.CloseSend()
	}()
	for {
		r, err := stream.Recv()
		if err == io.EOF {
			break // every frame answered
		} else if err != nil {
			log.Fatal(err)
		}
		fmt.Println(r.GetFrameSeq(), r.GetCameraId(), r.GetErrorCode())
	}
	// Output:
	// 1 dock-cam OK
	// 2 dock-cam OK
	// 3 dock-cam OK
}
