// Command refserver is the grpc-go reference point for bench/grpc_calls.py: the InferenceService of
// proto/infer_service.proto (stubs from clients/go/inferpb) answering HealthCheck, ListCameras and
// InferSingleFrame with fixed, edgebox-sized replies. It exists only to be measured; it runs no model.
//
//	refserver -port 50051    # prints "READY 127.0.0.1:PORT" once it listens
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"syscall"

	"google.golang.org/grpc"

	pb "github.com/edgebox/edgebox/clients/go/inferpb"
)

type server struct {
	pb.UnimplementedInferenceServiceServer
	health *pb.HealthCheckResponse
}

func (s *server) HealthCheck(context.Context, *pb.HealthCheckRequest) (*pb.HealthCheckResponse, error) {
	return s.health, nil
}

func (s *server) ListCameras(context.Context, *pb.ListCamerasRequest) (*pb.ListCamerasResponse, error) {
	return &pb.ListCamerasResponse{}, nil
}

// InferSingleFrame receives the frame and answers an empty result: the transport's cost, no decode, no model.
func (s *server) InferSingleFrame(_ context.Context, req *pb.InferRequest) (*pb.InferResponse, error) {
	return &pb.InferResponse{Result: &pb.InferResult{
		CameraId: req.GetSourceId(), WorkflowId: req.GetWorkflowId(), JsonData: `{"detections":[]}`,
	}}, nil
}

func main() {
	port := flag.Int("port", 0, "TCP port on 127.0.0.1 (0: any free port)")
	flag.Parse()
	lis, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", *port))
	if err != nil {
		log.Fatalf("refserver: %v", err)
	}
	srv := grpc.NewServer()
	pb.RegisterInferenceServiceServer(srv, &server{health: &pb.HealthCheckResponse{
		Status: pb.HealthStatus_SERVING, Timestamp: 1, PluginCount: 3, Version: "0.1.0",
		Plugins: []string{"face", "motion", "person"}, Backends: []string{"openvino-cpu", "onnxruntime-cpu"},
	}})
	go func() {
		stop := make(chan os.Signal, 1)
		signal.Notify(stop, syscall.SIGTERM, os.Interrupt)
		<-stop
		srv.Stop()
	}()
	fmt.Printf("READY %s\n", lis.Addr())
	if err := srv.Serve(lis); err != nil {
		log.Fatalf("refserver: %v", err)
	}
}
