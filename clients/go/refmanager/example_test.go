package refmanager_test

// The ManagerService examples of docs/api.md. A node (edgebox's manager link) makes these calls; here a Go
// program makes them against the reference manager, which shows what the manager records.

import (
	"context"
	"fmt"
	"log"
	"net"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/edgebox/edgebox/clients/go/managerpb"
	"github.com/edgebox/edgebox/clients/go/refmanager"
)

// exampleManager serves a reference manager (no callbacks: the example nodes do not exist) and returns a
// client of it; stop with the returned function.
func exampleManager() (*refmanager.Server, managerpb.ManagerServiceClient, func()) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	m := refmanager.New(refmanager.Options{NoCallback: true})
	go func() { _ = m.Serve(lis) }()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		log.Fatal(err)
	}
	return m, managerpb.NewManagerServiceClient(conn), func() { conn.Close(); m.Stop() }
}

func ExampleServer_RegisterNode() {
	manager, client, stop := exampleManager()
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	reply, err := client.RegisterNode(ctx, &managerpb.RegisterNodeRequest{
		ApiVersion:  1,
		NodeId:      "edge-07",
		GrpcAddress: "0.0.0.0:50051", // the manager calls back at the address the node connected from
		Version:     "0.1.0",
		Plugins:     []string{"face", "motion", "person"},
		StartedAtMs: time.Now().UnixMilli(),
	})
	if err != nil {
		log.Fatal(err)
	}
	node, _ := manager.Node("edge-07")
	fmt.Println(reply.GetApiVersion(), reply.GetSessionId() != "", node.Address, node.Registrations)
	// Output: 1 true 127.0.0.1:50051 1
}

func ExampleServer_Heartbeat() {
	manager, client, stop := exampleManager()
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	reg, err := client.RegisterNode(ctx, &managerpb.RegisterNodeRequest{ApiVersion: 1, NodeId: "edge-07",
		GrpcAddress: "10.0.0.7:50051"})
	if err != nil {
		log.Fatal(err)
	}

	reply, err := client.Heartbeat(ctx, &managerpb.HeartbeatRequest{
		NodeId: "edge-07", SessionId: reg.GetSessionId(), Seq: 1, TimestampMs: time.Now().UnixMilli(),
		Status: managerpb.NodeStatus_NODE_STATUS_SERVING, Version: "0.1.0", UptimeS: 12.5,
		CameraCount: 1,
		Cameras: []*managerpb.CameraSummary{{CameraId: "dock", WorkflowId: "people",
			State: managerpb.CameraState_CAMERA_STATE_STREAMING, FpsIn: 10}},
		WorkflowCount: 1, PluginCount: 3,
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("re-register:", reply.GetReRegister())
	last := manager.Nodes()[0].LastHeartbeat()
	fmt.Println(last.Request.GetStatus(), last.Request.GetCameras()[0].GetState())

	// A manager that restarted does not know the node: NOT_FOUND, and the node registers again.
	_, err = client.Heartbeat(ctx, &managerpb.HeartbeatRequest{NodeId: "edge-99", Seq: 1})
	fmt.Println(status.Code(err) == codes.NotFound)
	// Output:
	// re-register: false
	// NODE_STATUS_SERVING CAMERA_STATE_STREAMING
	// true
}

func ExampleServer_ReportMetrics() {
	manager, client, stop := exampleManager()
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	reg, err := client.RegisterNode(ctx, &managerpb.RegisterNodeRequest{ApiVersion: 1, NodeId: "edge-07",
		GrpcAddress: "10.0.0.7:50051"})
	if err != nil {
		log.Fatal(err)
	}

	_, err = client.ReportMetrics(ctx, &managerpb.ReportMetricsRequest{
		NodeId: "edge-07", SessionId: reg.GetSessionId(), TimestampMs: time.Now().UnixMilli(),
		Metrics: &managerpb.NodeMetrics{ActiveCameras: 4, RegisteredCameras: 5, TotalInferRequests: 123456,
			AvgInferLatencyMs: 38.5, MemoryUsageBytes: 512 << 20, GpuUtilization: -1, GpuMemoryUsedBytes: -1},
	})
	if err != nil {
		log.Fatal(err)
	}
	node, _ := manager.Node("edge-07")
	sample := node.Metrics[0]
	fmt.Println(sample.Request.GetMetrics().GetActiveCameras(), sample.Request.GetMetrics().GetTotalInferRequests())
	// Output: 4 123456
}
