package refmanager_test

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/edgebox/edgebox/clients/go/managerpb"
	"github.com/edgebox/edgebox/clients/go/refmanager"
)

// dialManager serves a manager without callbacks and returns a raw ManagerService client of it.
func dialManager(t *testing.T) (*refmanager.Server, managerpb.ManagerServiceClient) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m := refmanager.New(refmanager.Options{NoCallback: true})
	go func() { _ = m.Serve(lis) }()
	t.Cleanup(m.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return m, managerpb.NewManagerServiceClient(conn)
}

func TestUnknownNodeGetsNotFoundAndAStaleSessionIsAskedToRegisterAgain(t *testing.T) {
	m, c := dialManager(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := c.Heartbeat(ctx, &managerpb.HeartbeatRequest{NodeId: "n1", SessionId: "s"})
	if status.Code(err) != codes.NotFound {
		t.Fatalf("heartbeat of an unknown node: %v", err)
	}
	if _, err := c.ReportMetrics(ctx, &managerpb.ReportMetricsRequest{NodeId: "n1"}); status.Code(err) != codes.NotFound {
		t.Fatalf("metrics of an unknown node: %v", err)
	}
	if _, err := c.RegisterNode(ctx, &managerpb.RegisterNodeRequest{NodeId: "n1", GrpcAddress: "127.0.0.1:1"}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("registration without api_version: %v", err)
	}
	reg, err := c.RegisterNode(ctx, &managerpb.RegisterNodeRequest{ApiVersion: 1, NodeId: "n1", GrpcAddress: "0.0.0.0:5005"})
	if err != nil || reg.GetSessionId() == "" || reg.GetApiVersion() != refmanager.APIVersion {
		t.Fatalf("RegisterNode: %v %v", reg, err)
	}
	if n, _ := m.Node("n1"); n.Address != "127.0.0.1:5005" {
		t.Fatalf("an unspecified host should resolve to the caller's address, got %s", n.Address)
	}
	hb, err := c.Heartbeat(ctx, &managerpb.HeartbeatRequest{NodeId: "n1", SessionId: reg.GetSessionId(), Seq: 1})
	if err != nil || hb.GetReRegister() {
		t.Fatalf("heartbeat of the current session: %v %v", hb, err)
	}
	hb, err = c.Heartbeat(ctx, &managerpb.HeartbeatRequest{NodeId: "n1", SessionId: "old", Seq: 1})
	if err != nil || !hb.GetReRegister() {
		t.Fatalf("heartbeat of a stale session: %v %v", hb, err)
	}
	m.Forget("n1")
	if _, err := c.Heartbeat(ctx, &managerpb.HeartbeatRequest{NodeId: "n1"}); status.Code(err) != codes.NotFound {
		t.Fatalf("heartbeat after Forget: %v", err)
	}
}

func TestHTTPViewListsNodesAsJSON(t *testing.T) {
	m, c := dialManager(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	reg, err := c.RegisterNode(ctx, &managerpb.RegisterNodeRequest{ApiVersion: 1, NodeId: "n1",
		GrpcAddress: "127.0.0.1:7000", Version: "0.1.0"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Heartbeat(ctx, &managerpb.HeartbeatRequest{NodeId: "n1", SessionId: reg.GetSessionId(),
		Status: managerpb.NodeStatus_NODE_STATUS_SERVING, CameraCount: 2}); err != nil {
		t.Fatal(err)
	}
	web := httptest.NewServer(m.HTTPHandler())
	defer web.Close()

	var list []map[string]any
	getJSON(t, web.URL+"/nodes", http.StatusOK, &list)
	if len(list) != 1 || list[0]["id"] != "n1" || list[0]["status"] != "NODE_STATUS_SERVING" ||
		list[0]["camera_count"] != 2.0 || list[0]["heartbeats"] != 1.0 {
		t.Fatalf("/nodes = %v", list)
	}
	var one map[string]any
	getJSON(t, web.URL+"/nodes/n1", http.StatusOK, &one)
	if one["registration"].(map[string]any)["version"] != "0.1.0" || one["last_heartbeat"] == nil {
		t.Fatalf("/nodes/n1 = %v", one)
	}
	getJSON(t, web.URL+"/nodes/nope", http.StatusNotFound, &one)
}

func getJSON(t *testing.T, url string, wantStatus int, into any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != wantStatus {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(into); err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
}
