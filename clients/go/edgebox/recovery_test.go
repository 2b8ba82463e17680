package edgebox_test

import (
	"fmt"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/edgebox/edgebox/clients/go/edgebox"
	"github.com/edgebox/edgebox/clients/go/inferpb"
	"github.com/edgebox/edgebox/clients/go/internal/enginetest"
	"github.com/edgebox/edgebox/clients/go/supervisor"
)

// MaxRecovery is the longest an engine may take, from SIGKILL to answering with its state restored.
const MaxRecovery = 10 * time.Second

func TestCrashRecoveryRestoresCamerasAndWorkflows(t *testing.T) {
	engine := enginetest.StartT(t, enginetest.Options{Supervisor: supervisor.Config{RestartBackoff: 100 * time.Millisecond}})
	pool := edgebox.NewPool(edgebox.WithCallTimeout(2 * time.Second))
	defer pool.Close()
	c, err := pool.Get("node-a", engine.Addr())
	if err != nil {
		t.Fatal(err)
	}
	ctx := testContext(t, 60*time.Second)
	wf, cam := uniqueID("wf-crash"), uniqueID("cam-crash")
	if _, err := c.DeployWorkflow(ctx, &inferpb.WorkflowSpec{WorkflowId: wf, Plugins: []string{"motion"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.AddCamera(ctx, &inferpb.AddCameraRequest{CameraId: cam, RtspUrl: "demo://empty", WorkflowId: wf,
		Config: map[string]string{"fps": "2"}}); err != nil {
		t.Fatal(err)
	}
	oldPID := engine.PID()

	killed := time.Now()
	if err := engine.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	readyAt := make(chan time.Duration, 1)
	go func() {
		_, _ = engine.WaitReady(ctx, 2)
		readyAt <- time.Since(killed)
	}()
	var recovered time.Duration
	for {
		if time.Since(killed) > 3*MaxRecovery {
			t.Fatalf("no recovery within %s; supervisor: %v", 3*MaxRecovery, engine.LastError())
		}
		c, err := pool.Get("node-a", engine.Addr())
		if err != nil {
			t.Fatal(err)
		}
		cameras, err := c.ListCameras(ctx)
		if err != nil {
			time.Sleep(20 * time.Millisecond)
			continue
		}
		workflows, err := c.ListWorkflows(ctx)
		if err != nil {
			continue
		}
		if len(cameras) != 1 || cameras[0].GetCameraId() != cam || !hasWorkflow(workflows, wf) {
			t.Fatalf("after the restart: cameras %v, workflows %v", cameras, workflows)
		}
		recovered = time.Since(killed)
		break
	}
	msg := fmt.Sprintf("edgebox crash recovery (SIGKILL -> restarted -> cameras and workflows listed): %s",
		recovered.Round(time.Millisecond))
	select {
	case d := <-readyAt:
		msg += fmt.Sprintf(" (the supervisor saw SERVING after %s)", d.Round(time.Millisecond))
	default:
	}
	t.Log(msg)
	fmt.Fprintln(os.Stderr, msg)
	if engine.PID() == oldPID || engine.Starts() != 2 {
		t.Fatalf("pid %d (was %d), %d starts", engine.PID(), oldPID, engine.Starts())
	}
	if recovered > MaxRecovery {
		t.Fatalf("recovery took %s, more than %s", recovered, MaxRecovery)
	}
	// The camera runs again, not merely listed.
	enginetest.Eventually(t, 20*time.Second, func() error {
		cameras, err := c.ListCameras(ctx)
		if err != nil {
			return err
		}
		if s := cameras[0].GetState(); s != inferpb.CameraState_STREAMING {
			return enginetest.Errorf("camera state %s", s)
		}
		return nil
	})
}

func TestPoolKeepsOneClientPerNodeAndFollowsAddressChanges(t *testing.T) {
	pool := edgebox.NewPool()
	a1, err := pool.Get("a", engineAddr)
	if err != nil {
		t.Fatal(err)
	}
	a2, _ := pool.Get("a", engineAddr)
	b, _ := pool.Get("b", engineAddr)
	if a1 != a2 || a1 == b {
		t.Fatal("Get must return the same client for a node and different clients for different nodes")
	}
	if got := pool.Nodes(); len(got) != 2 || got[0] != "a" || got[1] != "b" {
		t.Fatalf("Nodes() = %v", got)
	}
	if _, err := a1.HealthCheck(testContext(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	moved, _ := pool.Get("a", "127.0.0.1:1")
	if moved == a1 || moved.Target() != "127.0.0.1:1" {
		t.Fatal("a node that registered from another address must get a new client")
	}
	if _, err := a1.HealthCheck(testContext(t, 10*time.Second)); err == nil {
		t.Fatal("the replaced client should be closed")
	}
	if err := pool.Remove("a"); err != nil {
		t.Fatal(err)
	}
	if _, ok := pool.Lookup("a"); ok {
		t.Fatal("Remove left the client")
	}
	if err := pool.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Get("c", engineAddr); err != edgebox.ErrPoolClosed {
		t.Fatalf("Get after Close: %v", err)
	}
}
