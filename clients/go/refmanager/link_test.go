package refmanager_test

import (
	"context"
	"crypto/tls"
	"net"
	"slices"
	"sort"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/edgebox/edgebox/clients/go/edgebox"
	"github.com/edgebox/edgebox/clients/go/inferpb"
	"github.com/edgebox/edgebox/clients/go/internal/enginetest"
	"github.com/edgebox/edgebox/clients/go/managerpb"
	"github.com/edgebox/edgebox/clients/go/refmanager"
)

// startManager serves a new (empty) manager on addr ("127.0.0.1:0" for any port) and stops it at cleanup.
func startManager(t *testing.T, addr string, opts ...grpc.ServerOption) (*refmanager.Server, string) {
	t.Helper()
	var lis net.Listener
	var err error
	for range 50 { // the port of a manager that just stopped can take a moment to be free
		if lis, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	m := refmanager.New(refmanager.Options{})
	go func() { _ = m.Serve(lis, opts...) }()
	t.Cleanup(m.Stop)
	return m, lis.Addr().String()
}

func waitFor(t *testing.T, m *refmanager.Server, timeout time.Duration, what string, cond func(n refmanager.Node) bool) refmanager.Node {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var last refmanager.Node
	err := m.Wait(ctx, func(s *refmanager.Server) bool {
		n, ok := s.Node("node-a")
		last = n
		return ok && cond(n)
	})
	if err != nil {
		t.Fatalf("%s: not within %s (registrations %d, heartbeats %d, metrics %d)", what, timeout,
			last.Registrations, len(last.Heartbeats), len(last.Metrics))
	}
	return last
}

func medianInterval(times []time.Time) time.Duration {
	var d []time.Duration
	for i := 1; i < len(times); i++ {
		d = append(d, times[i].Sub(times[i-1]))
	}
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	return d[len(d)/2]
}

func managerConfig(addr string) map[string]any {
	return map[string]any{"manager": map[string]any{"address": addr, "node_id": "node-a",
		"heartbeat_interval_s": 0.5, "metrics_interval_s": 1}}
}

func TestEngineRegistersReportsAndRegistersAgainAfterTheManagerRestarts(t *testing.T) {
	m, addr := startManager(t, "127.0.0.1:0")
	engine := enginetest.StartT(t, enginetest.Options{Config: managerConfig(addr)})

	// Registration, and the manager calling the node back.
	n := waitFor(t, m, 20*time.Second, "registration and callback", func(n refmanager.Node) bool {
		return n.Registrations == 1 && n.Inventory != nil
	})
	reg := n.Registration
	if reg.GetApiVersion() != 1 || reg.GetGrpcAddress() != engine.Addr() || n.Address != engine.Addr() ||
		reg.GetVersion() == "" || !slices.Contains(reg.GetPlugins(), "person") || reg.GetStartedAtMs() == 0 {
		t.Fatalf("registration %v (address %s)", reg, n.Address)
	}
	if n.Inventory.Err != "" || n.Inventory.Health.GetStatus() != inferpb.HealthStatus_SERVING {
		t.Fatalf("callback inventory: %+v", n.Inventory)
	}

	// Heartbeats at about their interval, metrics arriving, and the node's cameras in the heartbeats.
	client, err := edgebox.Dial(engine.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := client.DeployWorkflow(ctx, &inferpb.WorkflowSpec{WorkflowId: "wf", Plugins: []string{"motion"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.AddCamera(ctx, &inferpb.AddCameraRequest{CameraId: "cam-1", RtspUrl: "demo://empty",
		WorkflowId: "wf", Config: map[string]string{"fps": "1"}}); err != nil {
		t.Fatal(err)
	}
	n = waitFor(t, m, 20*time.Second, "8 heartbeats, 3 metrics samples, a streaming camera", func(n refmanager.Node) bool {
		hb := n.LastHeartbeat()
		return len(n.Heartbeats) >= 8 && len(n.Metrics) >= 3 && hb.Request.GetCameraCount() == 1 &&
			hb.Request.GetCameras()[0].GetState() == managerpb.CameraState_CAMERA_STATE_STREAMING
	})
	var beats, samples []time.Time
	for i, hb := range n.Heartbeats {
		beats = append(beats, hb.ReceivedAt)
		if hb.Request.GetSeq() != uint64(i+1) || hb.Request.GetSessionId() != n.SessionID {
			t.Fatalf("heartbeat %d: seq %d session %q (want %q)", i, hb.Request.GetSeq(),
				hb.Request.GetSessionId(), n.SessionID)
		}
	}
	for _, s := range n.Metrics {
		samples = append(samples, s.ReceivedAt)
	}
	hbEvery, metricsEvery := medianInterval(beats), medianInterval(samples)
	t.Logf("heartbeat every %s (configured 0.5 s), metrics every %s (configured 1 s)", hbEvery, metricsEvery)
	if hbEvery < 350*time.Millisecond || hbEvery > 800*time.Millisecond {
		t.Fatalf("heartbeats every %s, configured 0.5 s", hbEvery)
	}
	if metricsEvery < 700*time.Millisecond || metricsEvery > 1500*time.Millisecond {
		t.Fatalf("metrics every %s, configured 1 s", metricsEvery)
	}
	hb := n.LastHeartbeat().Request
	if hb.GetStatus() != managerpb.NodeStatus_NODE_STATUS_SERVING || hb.GetPluginCount() < 3 ||
		hb.GetWorkflowCount() != 1 || hb.GetCameras()[0].GetCameraId() != "cam-1" ||
		hb.GetCameras()[0].GetWorkflowId() != "wf" || hb.GetUptimeS() <= 0 {
		t.Fatalf("last heartbeat %v", hb)
	}
	last := n.Metrics[len(n.Metrics)-1].Request.GetMetrics()
	if last.GetRegisteredCameras() != 1 || last.GetWorkflows() != 1 || last.GetMemoryUsageBytes() <= 0 {
		t.Fatalf("last metrics %v", last)
	}

	// The manager goes away: inference carries on.
	m.Stop()
	photo := enginetest.TestDataT(t, "astronaut.png")
	for range 3 {
		r, err := client.InferSingleFrame(ctx, &inferpb.InferRequest{Plugin: "person",
			Frame: &inferpb.Frame{ImageData: photo}})
		if err != nil || r.GetJsonData() == "" {
			t.Fatalf("inference with the manager down: %v", err)
		}
		time.Sleep(300 * time.Millisecond)
	}
	if h, err := client.HealthCheck(ctx); err != nil || h.GetStatus() != inferpb.HealthStatus_SERVING {
		t.Fatalf("health with the manager down: %v %v", h, err)
	}

	// A new manager on the same address knows nothing: the node registers again.
	restarted := time.Now()
	m2, _ := startManager(t, addr)
	n = waitFor(t, m2, 20*time.Second, "registration with the restarted manager", func(n refmanager.Node) bool {
		return n.Registrations == 1 && len(n.Heartbeats) >= 2 && len(n.Metrics) >= 1
	})
	t.Logf("registered again %s after the manager came back", n.RegisteredAt.Sub(restarted).Round(time.Millisecond))
	if n.LastHeartbeat().Request.GetCameraCount() != 1 {
		t.Fatalf("heartbeat after re-registration: %v", n.LastHeartbeat().Request)
	}

	// The manager can ask for a registration in a heartbeat reply.
	if !m2.RequestReregister("node-a") {
		t.Fatal("node-a unknown")
	}
	waitFor(t, m2, 10*time.Second, "registration on request", func(n refmanager.Node) bool {
		return n.Registrations == 2
	})
}

func TestManagerLinkOverMutualTLS(t *testing.T) {
	pki, err := enginetest.WritePKI(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	serverTLS, err := edgebox.LoadTLSConfig(pki.CAFile, pki.ServerCertFile, pki.ServerKeyFile)
	if err != nil {
		t.Fatal(err)
	}
	serverTLS.ClientCAs, serverTLS.ClientAuth = serverTLS.RootCAs, tls.RequireAndVerifyClientCert
	m, addr := startManager(t, "127.0.0.1:0", grpc.Creds(credentials.NewTLS(serverTLS)))
	cfg := managerConfig(addr)
	mc := cfg["manager"].(map[string]any)
	mc["tls_ca_file"], mc["tls_cert_file"], mc["tls_key_file"] = pki.CAFile, pki.ClientCertFile, pki.ClientKeyFile
	enginetest.StartT(t, enginetest.Options{Config: cfg})
	waitFor(t, m, 20*time.Second, "registration and heartbeats over mTLS", func(n refmanager.Node) bool {
		return n.Registrations == 1 && len(n.Heartbeats) >= 2
	})
}
