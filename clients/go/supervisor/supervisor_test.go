package supervisor_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/edgebox/edgebox/clients/go/internal/enginetest"
	"github.com/edgebox/edgebox/clients/go/supervisor"
)

func binary(t *testing.T) string {
	t.Helper()
	bin, err := enginetest.Binary()
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

func TestFirstStartFailureIsReportedWithTheEngineOutput(t *testing.T) {
	dir := t.TempDir()
	config := filepath.Join(dir, "bad.json")
	if err := os.WriteFile(config, []byte(`{"grpc": {"port": "not a number"}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err := supervisor.Start(context.Background(), supervisor.Config{Binary: binary(t),
		Args: []string{"--config", config, "--data_dir", filepath.Join(dir, "data")}})
	if err == nil {
		t.Fatal("Start succeeded with an invalid config")
	}
	if !strings.Contains(err.Error(), "grpc.port") || !strings.Contains(err.Error(), "exit status 2") {
		t.Fatalf("error does not carry the engine's reason: %v", err)
	}
	if time.Since(start) > 20*time.Second {
		t.Fatalf("took %s to notice", time.Since(start))
	}
}

func TestStopDrainsWithSIGTERMAndTheEngineExitsZero(t *testing.T) {
	e, err := enginetest.Start(context.Background(), t.TempDir(), enginetest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	pid := e.PID()
	if e.Addr() == "" || pid == 0 || e.Starts() != 1 || e.ReadyCount() != 1 {
		t.Fatalf("addr %q pid %d starts %d ready %d", e.Addr(), pid, e.Starts(), e.ReadyCount())
	}
	if err := e.Stop(context.Background()); err != nil {
		t.Fatalf("exit: %v\n%s", err, e.Logs())
	}
	if !strings.Contains(e.Logs(), "received SIGTERM") {
		t.Fatalf("the engine did not see SIGTERM:\n%s", e.Logs())
	}
	if err := syscall.Kill(pid, 0); err == nil {
		t.Fatalf("process %d still exists after Stop", pid)
	}
	if e.PID() != 0 || e.Starts() != 1 {
		t.Fatalf("after Stop: pid %d, starts %d", e.PID(), e.Starts())
	}
	if err := e.Stop(context.Background()); err != nil {
		t.Fatalf("a second Stop: %v", err)
	}
}

func TestAHungEngineIsKilledAndRestarted(t *testing.T) {
	e := enginetest.StartT(t, enginetest.Options{Supervisor: supervisor.Config{
		HealthInterval: 200 * time.Millisecond, HealthTimeout: 300 * time.Millisecond, HealthFailures: 3,
		RestartBackoff: 50 * time.Millisecond}})
	addr, pid := e.Addr(), e.PID()
	if err := e.Signal(syscall.SIGSTOP); err != nil { // alive, but answers nothing
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	got, err := e.WaitReady(ctx, 2)
	if err != nil {
		t.Fatalf("not restarted: %v (last error %v)", err, e.LastError())
	}
	if got != addr || e.PID() == pid || e.Starts() != 2 {
		t.Fatalf("restarted at %s (was %s), pid %d (was %d), starts %d", got, addr, e.PID(), pid, e.Starts())
	}
	if err := e.LastError(); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Fatalf("last error %v, want the kill of the hung process", err)
	}
}
