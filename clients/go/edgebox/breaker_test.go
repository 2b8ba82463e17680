package edgebox_test

import (
	"errors"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgebox/edgebox/clients/go/edgebox"
	"github.com/edgebox/edgebox/clients/go/internal/enginetest"
)

type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func call(t *testing.T, b *edgebox.Breaker, o edgebox.Outcome) error {
	t.Helper()
	done, err := b.Allow()
	if err != nil {
		return err
	}
	done(o)
	return nil
}

func TestBreakerOpensAfterConsecutiveFailuresOnly(t *testing.T) {
	clock := &fakeClock{now: time.Unix(1000, 0)}
	b := edgebox.NewBreaker(edgebox.BreakerConfig{FailureThreshold: 3, OpenTimeout: time.Second, Now: clock.Now})
	for _, o := range []edgebox.Outcome{edgebox.OutcomeFailure, edgebox.OutcomeFailure, edgebox.OutcomeSuccess,
		edgebox.OutcomeFailure, edgebox.OutcomeFailure, edgebox.OutcomeIgnored} {
		if err := call(t, b, o); err != nil {
			t.Fatal(err)
		}
	}
	if b.State() != edgebox.BreakerClosed {
		t.Fatalf("state %s after a success broke the run of failures", b.State())
	}
	if err := call(t, b, edgebox.OutcomeFailure); err != nil {
		t.Fatal(err)
	}
	if b.State() != edgebox.BreakerOpen {
		t.Fatalf("state %s after 3 consecutive failures", b.State())
	}
	err := call(t, b, edgebox.OutcomeSuccess)
	e, ok := edgebox.AsError(err)
	if !errors.Is(err, edgebox.ErrCircuitOpen) || !ok || e.RetryAfter != time.Second || !edgebox.IsUnavailable(err) {
		t.Fatalf("open circuit answered %v", err)
	}
	clock.Advance(400 * time.Millisecond)
	if e, _ := edgebox.AsError(call(t, b, edgebox.OutcomeSuccess)); e == nil || e.RetryAfter != 600*time.Millisecond {
		t.Fatalf("RetryAfter should count down: %v", e)
	}
}

func TestBreakerHalfOpenLetsOneProbeThroughThenClosesOrReopens(t *testing.T) {
	clock := &fakeClock{now: time.Unix(1000, 0)}
	var transitions []string
	b := edgebox.NewBreaker(edgebox.BreakerConfig{FailureThreshold: 1, OpenTimeout: time.Second, Now: clock.Now,
		OnStateChange: func(from, to edgebox.BreakerState) { transitions = append(transitions, from.String()+">"+to.String()) }})
	_ = call(t, b, edgebox.OutcomeFailure)
	clock.Advance(time.Second)
	if b.State() != edgebox.BreakerHalfOpen {
		t.Fatalf("state %s after the open timeout", b.State())
	}
	probe, err := b.Allow()
	if err != nil {
		t.Fatalf("the first probe was refused: %v", err)
	}
	if _, err := b.Allow(); !errors.Is(err, edgebox.ErrCircuitOpen) {
		t.Fatalf("a second concurrent probe was let through: %v", err)
	}
	probe(edgebox.OutcomeFailure)
	if b.State() != edgebox.BreakerOpen {
		t.Fatalf("state %s after a failed probe", b.State())
	}
	clock.Advance(time.Second)
	probe, err = b.Allow()
	if err != nil {
		t.Fatal(err)
	}
	probe(edgebox.OutcomeSuccess)
	if b.State() != edgebox.BreakerClosed {
		t.Fatalf("state %s after a successful probe", b.State())
	}
	want := []string{"closed>open", "open>half-open", "half-open>open", "open>half-open", "half-open>closed"}
	if strings.Join(transitions, " ") != strings.Join(want, " ") {
		t.Fatalf("transitions %v, want %v", transitions, want)
	}
}

func TestBreakerIgnoredProbeFreesItsSlot(t *testing.T) {
	clock := &fakeClock{now: time.Unix(1000, 0)}
	b := edgebox.NewBreaker(edgebox.BreakerConfig{FailureThreshold: 1, OpenTimeout: time.Second, Now: clock.Now,
		SuccessThreshold: 2})
	_ = call(t, b, edgebox.OutcomeFailure)
	clock.Advance(time.Second)
	if err := call(t, b, edgebox.OutcomeIgnored); err != nil {
		t.Fatal(err)
	}
	if err := call(t, b, edgebox.OutcomeSuccess); err != nil {
		t.Fatalf("the slot of an ignored probe was not freed: %v", err)
	}
	if b.State() != edgebox.BreakerHalfOpen {
		t.Fatalf("state %s after 1 of 2 successes", b.State())
	}
	_ = call(t, b, edgebox.OutcomeSuccess)
	if b.State() != edgebox.BreakerClosed {
		t.Fatalf("state %s after 2 of 2 successes", b.State())
	}
}

// The breaker against a real engine: it opens when the engine goes away and closes when it is back.
func TestBreakerOpensWhenTheEngineStopsAndClosesWhenItIsBack(t *testing.T) {
	engine := enginetest.StartT(t, enginetest.Options{})
	addr := engine.Addr()
	var mu sync.Mutex
	var transitions []string
	c := dial(t, addr, edgebox.WithoutRetries(), edgebox.WithMaxReconnectBackoff(200*time.Millisecond),
		edgebox.WithBreaker(edgebox.BreakerConfig{FailureThreshold: 3, OpenTimeout: 300 * time.Millisecond,
			OnStateChange: func(from, to edgebox.BreakerState) {
				mu.Lock()
				transitions = append(transitions, from.String()+">"+to.String())
				mu.Unlock()
			}}))
	ctx := testContext(t, 90*time.Second)
	if _, err := c.HealthCheck(ctx); err != nil {
		t.Fatal(err)
	}
	if err := engine.Stop(ctx); err != nil {
		t.Fatalf("engine exit: %v", err)
	}
	var failures int
	for {
		_, err := c.HealthCheck(ctx)
		if errors.Is(err, edgebox.ErrCircuitOpen) {
			break
		}
		if !edgebox.IsUnavailable(err) {
			t.Fatalf("engine stopped, got %v", err)
		}
		if failures++; failures > 3 {
			t.Fatalf("still closed after %d failures", failures)
		}
	}
	if failures != 3 || c.Breaker().State() != edgebox.BreakerOpen {
		t.Fatalf("opened after %d failures, state %s", failures, c.Breaker().State())
	}

	_, port, _ := net.SplitHostPort(addr)
	portNum, _ := strconv.Atoi(port)
	restarted := enginetest.StartT(t, enginetest.Options{DataDir: engine.DataDir, GRPCPort: portNum})
	if restarted.Addr() != addr {
		t.Fatalf("restarted at %s, not %s", restarted.Addr(), addr)
	}
	enginetest.Eventually(t, 20*time.Second, func() error {
		_, err := c.HealthCheck(ctx)
		return err
	})
	if s := c.Breaker().State(); s != edgebox.BreakerClosed {
		t.Fatalf("state %s with the engine back", s)
	}
	mu.Lock()
	defer mu.Unlock()
	if transitions[0] != "closed>open" || transitions[len(transitions)-1] != "half-open>closed" {
		t.Fatalf("transitions %v", transitions)
	}
}
