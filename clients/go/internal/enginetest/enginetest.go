// Package enginetest starts real edgebox engines for the Go tests: it finds the binary, writes a config into
// a temporary directory and runs the engine under the supervisor on an ephemeral port.
//
// The binary is $EDGEBOX_BIN, else the project's .venv/bin/edgebox, else `edgebox` on PATH. Set
// EDGEBOX_TEST_LOG=1 to see the engines' output while the tests run (it is printed anyway when a test fails).
package enginetest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/edgebox/edgebox/clients/go/supervisor"
)

// ModuleRoot returns the directory of clients/go (the folder holding go.mod), found from the working
// directory of the test.
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("enginetest: no go.mod above the working directory")
		}
		dir = parent
	}
}

// RepoRoot returns the edgebox repository root (two levels above clients/go).
func RepoRoot() (string, error) {
	root, err := ModuleRoot()
	if err != nil {
		return "", err
	}
	return filepath.Clean(filepath.Join(root, "..", "..")), nil
}

// Binary locates the edgebox executable.
func Binary() (string, error) {
	if bin := os.Getenv("EDGEBOX_BIN"); bin != "" {
		return bin, nil
	}
	if repo, err := RepoRoot(); err == nil {
		venv := filepath.Join(repo, ".venv", "bin", "edgebox")
		if _, err := os.Stat(venv); err == nil {
			return venv, nil
		}
	}
	if bin, err := exec.LookPath("edgebox"); err == nil {
		return bin, nil
	}
	return "", errors.New("enginetest: edgebox not found: set EDGEBOX_BIN, or run ./dev setup to create " +
		".venv/bin/edgebox")
}

// TestData reads a file of the repository's tests/data folder (e.g. "astronaut.png").
func TestData(name string) ([]byte, error) {
	repo, err := RepoRoot()
	if err != nil {
		return nil, err
	}
	return os.ReadFile(filepath.Join(repo, "tests", "data", name))
}

// Options of an engine; Config's top-level keys replace those of the defaults
// ({"console": {"enabled": false}, "engine": {"admission_max_load": 0}}).
type Options struct {
	// Config is the engine's JSON config as a Go value; keys override the defaults.
	Config map[string]any
	// DataDir is the state folder [a new temporary folder]; pass an earlier engine's to restart "it".
	DataDir string
	// GRPCPort [0 = ephemeral].
	GRPCPort int
	// Supervisor tunes the supervisor; Binary, Args and GRPCPort are filled in.
	Supervisor supervisor.Config
}

// Engine is a running, supervised engine.
type Engine struct {
	*supervisor.Supervisor
	DataDir    string
	ConfigPath string
}

// Start runs an engine and waits until it serves. dir holds its config (and data, unless DataDir is set).
func Start(ctx context.Context, dir string, opts Options) (*Engine, error) {
	bin, err := Binary()
	if err != nil {
		return nil, err
	}
	cfg := map[string]any{
		"console": map[string]any{"enabled": false},
		// Admission control measures this (busy, shared) machine; the tests are not about capacity.
		"engine":    map[string]any{"admission_max_load": 0},
		"log_level": "INFO",
	}
	for k, v := range opts.Config {
		cfg[k] = v
	}
	data, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return nil, err
	}
	configPath := filepath.Join(dir, "engine.json")
	if err := os.WriteFile(configPath, data, 0o644); err != nil {
		return nil, err
	}
	dataDir := opts.DataDir
	if dataDir == "" {
		dataDir = filepath.Join(dir, "data")
	}
	sc := opts.Supervisor
	sc.Binary = bin
	sc.Args = []string{"--config", configPath, "--data_dir", dataDir}
	sc.GRPCPort = opts.GRPCPort
	if sc.Output == nil && os.Getenv("EDGEBOX_TEST_LOG") != "" {
		sc.Output = os.Stderr
	}
	sup, err := supervisor.Start(ctx, sc)
	if err != nil {
		return nil, err
	}
	return &Engine{Supervisor: sup, DataDir: dataDir, ConfigPath: configPath}, nil
}

// StartT is Start for a test: it fails the test on error, stops the engine at cleanup, and prints the
// engine's output if the test failed.
func StartT(t testing.TB, opts Options) *Engine {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	e, err := Start(ctx, t.TempDir(), opts)
	if err != nil {
		t.Fatalf("starting edgebox: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("--- edgebox output (last lines) ---\n%s", e.Logs())
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := e.Stop(ctx); err != nil {
			t.Logf("edgebox exited with %v", err)
		}
	})
	return e
}

// TestDataT is TestData for a test.
func TestDataT(t testing.TB, name string) []byte {
	t.Helper()
	b, err := TestData(name)
	if err != nil {
		t.Fatalf("reading test data: %v", err)
	}
	return b
}

// Eventually polls cond every 50 ms until it returns nil or timeout passes, then fails with its last error.
func Eventually(t testing.TB, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %v", timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Errorf is fmt.Errorf, re-exported so that Eventually conditions read short.
var Errorf = fmt.Errorf
