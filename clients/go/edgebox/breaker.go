package edgebox

import (
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
)

// BreakerState is where a circuit breaker stands.
type BreakerState int

const (
	// BreakerClosed lets every call through and counts consecutive transport failures.
	BreakerClosed BreakerState = iota
	// BreakerOpen refuses calls at once (ErrCircuitOpen) until OpenTimeout has passed.
	BreakerOpen
	// BreakerHalfOpen lets up to HalfOpenProbes calls through; their outcome closes or re-opens the circuit.
	BreakerHalfOpen
)

func (s BreakerState) String() string {
	switch s {
	case BreakerClosed:
		return "closed"
	case BreakerOpen:
		return "open"
	case BreakerHalfOpen:
		return "half-open"
	}
	return fmt.Sprintf("BreakerState(%d)", int(s))
}

// Outcome is what a call that the breaker let through tells it afterwards.
type Outcome int

const (
	// OutcomeSuccess: the node answered (an engine error such as NOT_FOUND is an answer too).
	OutcomeSuccess Outcome = iota
	// OutcomeFailure: the node could not be reached or is going away (UNAVAILABLE without an engine code).
	OutcomeFailure
	// OutcomeIgnored: says nothing about the node (the caller cancelled, or its own deadline passed).
	OutcomeIgnored
)

// BreakerConfig tunes a Breaker; zero fields take the defaults in brackets.
type BreakerConfig struct {
	// FailureThreshold consecutive failures open a closed circuit [5].
	FailureThreshold int
	// OpenTimeout is how long an open circuit refuses calls before it lets probes through [5s].
	OpenTimeout time.Duration
	// HalfOpenProbes is how many calls may be in flight while half-open [1].
	HalfOpenProbes int
	// SuccessThreshold successful probes close a half-open circuit [1].
	SuccessThreshold int
	// OnStateChange, if set, is called (outside the breaker's lock) on every transition.
	OnStateChange func(from, to BreakerState)
	// Now is the clock [time.Now]; tests replace it.
	Now func() time.Time
}

func (c BreakerConfig) withDefaults() BreakerConfig {
	if c.FailureThreshold <= 0 {
		c.FailureThreshold = 5
	}
	if c.OpenTimeout <= 0 {
		c.OpenTimeout = 5 * time.Second
	}
	if c.HalfOpenProbes <= 0 {
		c.HalfOpenProbes = 1
	}
	if c.SuccessThreshold <= 0 {
		c.SuccessThreshold = 1
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

// Breaker is a closed/open/half-open circuit breaker for one node. It is safe for concurrent use.
type Breaker struct {
	cfg BreakerConfig

	mu        sync.Mutex
	state     BreakerState
	failures  int // consecutive, while closed
	successes int // successful probes, while half-open
	probes    int // probes in flight, while half-open
	openedAt  time.Time
}

// NewBreaker returns a closed breaker.
func NewBreaker(cfg BreakerConfig) *Breaker {
	return &Breaker{cfg: cfg.withDefaults()}
}

// State returns the current state (an open circuit whose timeout has passed reports half-open).
func (b *Breaker) State() BreakerState {
	b.mu.Lock()
	from, to := b.advanceLocked()
	state := b.state
	b.mu.Unlock()
	b.notify(from, to)
	return state
}

// Allow asks to make one call. It returns ErrCircuitOpen-matching *Error (with RetryAfter) when refused;
// otherwise the caller must call done exactly once with the call's outcome.
func (b *Breaker) Allow() (done func(Outcome), err error) {
	b.mu.Lock()
	from, to := b.advanceLocked()
	switch b.state {
	case BreakerOpen:
		wait := b.openedAt.Add(b.cfg.OpenTimeout).Sub(b.cfg.Now())
		b.mu.Unlock()
		b.notify(from, to)
		return nil, b.openError(wait, "open")
	case BreakerHalfOpen:
		if b.probes >= b.cfg.HalfOpenProbes {
			b.mu.Unlock()
			b.notify(from, to)
			return nil, b.openError(b.cfg.OpenTimeout/10, "half-open with its probe(s) in flight")
		}
		b.probes++
		b.mu.Unlock()
		b.notify(from, to)
		return b.once(true), nil
	default:
		b.mu.Unlock()
		b.notify(from, to)
		return b.once(false), nil
	}
}

func (b *Breaker) openError(wait time.Duration, what string) *Error {
	if wait < 0 {
		wait = 0
	}
	return &Error{GRPCCode: codes.Unavailable, Reason: ReasonCircuitOpen, RetryAfter: wait,
		Message: fmt.Sprintf("circuit breaker %s after %d consecutive connection failures; no call was made "+
			"(next probe in %s)", what, b.cfg.FailureThreshold, wait.Round(time.Millisecond))}
}

func (b *Breaker) once(probe bool) func(Outcome) {
	var once sync.Once
	return func(o Outcome) { once.Do(func() { b.record(o, probe) }) }
}

func (b *Breaker) record(o Outcome, probe bool) {
	b.mu.Lock()
	from := b.state
	if probe && b.state == BreakerHalfOpen {
		b.probes--
	}
	switch {
	case o == OutcomeIgnored:
	case b.state == BreakerClosed && o == OutcomeSuccess:
		b.failures = 0
	case b.state == BreakerClosed && o == OutcomeFailure:
		b.failures++
		if b.failures >= b.cfg.FailureThreshold {
			b.openLocked()
		}
	case b.state == BreakerHalfOpen && o == OutcomeFailure:
		b.openLocked()
	case b.state == BreakerHalfOpen && o == OutcomeSuccess:
		b.successes++
		if b.successes >= b.cfg.SuccessThreshold {
			b.state, b.failures = BreakerClosed, 0
		}
	}
	// A late outcome of a call admitted while closed says nothing once the circuit has opened.
	to := b.state
	b.mu.Unlock()
	b.notify(from, to)
}

func (b *Breaker) openLocked() {
	b.state, b.openedAt, b.successes = BreakerOpen, b.cfg.Now(), 0
}

// Probe moves an open circuit to half-open at once, so that the next call tests the node; the Client calls it
// when its connection to the node becomes ready again. It does nothing in other states.
func (b *Breaker) Probe() {
	b.mu.Lock()
	from := b.state
	if b.state == BreakerOpen {
		b.state, b.successes, b.probes = BreakerHalfOpen, 0, 0
	}
	to := b.state
	b.mu.Unlock()
	b.notify(from, to)
}

// advanceLocked moves an open circuit whose timeout passed to half-open; it returns the transition made.
func (b *Breaker) advanceLocked() (BreakerState, BreakerState) {
	from := b.state
	if b.state == BreakerOpen && !b.cfg.Now().Before(b.openedAt.Add(b.cfg.OpenTimeout)) {
		b.state, b.successes, b.probes = BreakerHalfOpen, 0, 0
	}
	return from, b.state
}

func (b *Breaker) notify(from, to BreakerState) {
	if from != to && b.cfg.OnStateChange != nil {
		b.cfg.OnStateChange(from, to)
	}
}
