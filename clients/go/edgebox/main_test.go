package edgebox_test

import (
	"context"
	"fmt"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgebox/edgebox/clients/go/edgebox"
	"github.com/edgebox/edgebox/clients/go/internal/enginetest"
)

// engineAddr is the host:port of the engine shared by the tests and examples of this package (started by
// TestMain). Tests that stop or kill an engine start their own.
var engineAddr string

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	dir, err := os.MkdirTemp("", "edgebox-go-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	engine, err := enginetest.Start(ctx, dir, enginetest.Options{})
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "starting the shared edgebox engine:", err)
		return 1
	}
	engineAddr = engine.Addr()
	code := m.Run()
	if code != 0 {
		fmt.Fprintf(os.Stderr, "--- shared edgebox output (last lines) ---\n%s\n", engine.Logs())
	}
	ctx, cancel = context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := engine.Stop(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "the shared edgebox engine exited with", err)
		if code == 0 {
			code = 1
		}
	}
	return code
}

// dial returns a client of addr closed at the end of the test.
func dial(t testing.TB, addr string, opts ...edgebox.Option) *edgebox.Client {
	t.Helper()
	c, err := edgebox.Dial(addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

var idCounter atomic.Int64

// uniqueID returns a fresh id for a camera or workflow on the shared engine.
func uniqueID(prefix string) string {
	return fmt.Sprintf("%s-%d-%d", prefix, os.Getpid(), idCounter.Add(1))
}

func testContext(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
