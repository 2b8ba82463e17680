package edgebox

import (
	"math/rand/v2"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/edgebox/edgebox/clients/go/inferpb"
)

// RetryPolicy says how idempotent calls (List*, HealthCheck, GetMetrics, InferSingleFrame, InferBatch) are
// retried. Calls that change state (AddCamera, RemoveCamera, Deploy/Update/DeleteWorkflow) and streams are
// never retried: a lost answer does not tell whether the change happened.
//
// Retried: UNAVAILABLE from the transport or a draining engine (SHUTTING_DOWN), and RESOURCE_EXHAUSTED only
// when the engine sent a RetryInfo hint, which is then the minimum wait. Everything else is returned at once.
type RetryPolicy struct {
	// MaxAttempts counts the first call; 1 disables retries [4].
	MaxAttempts int
	// InitialBackoff is the wait before the first retry [100ms].
	InitialBackoff time.Duration
	// MaxBackoff caps the wait between attempts, before jitter [2s].
	MaxBackoff time.Duration
	// Multiplier grows the wait after each attempt [2].
	Multiplier float64
	// Jitter spreads each wait uniformly over ±Jitter of itself, 0..1 [0.2].
	Jitter float64
}

// DefaultRetryPolicy is used when no WithRetryPolicy option is given.
var DefaultRetryPolicy = RetryPolicy{MaxAttempts: 4, InitialBackoff: 100 * time.Millisecond,
	MaxBackoff: 2 * time.Second, Multiplier: 2, Jitter: 0.2}

func (p RetryPolicy) withDefaults() RetryPolicy {
	d := DefaultRetryPolicy
	if p.MaxAttempts <= 0 {
		p.MaxAttempts = d.MaxAttempts
	}
	if p.InitialBackoff <= 0 {
		p.InitialBackoff = d.InitialBackoff
	}
	if p.MaxBackoff <= 0 {
		p.MaxBackoff = d.MaxBackoff
	}
	if p.Multiplier < 1 {
		p.Multiplier = d.Multiplier
	}
	if p.Jitter < 0 || p.Jitter > 1 {
		p.Jitter = d.Jitter
	}
	return p
}

// Backoff returns the wait before retry number n (1 = the first retry), jitter included.
func (p RetryPolicy) Backoff(n int) time.Duration {
	d := float64(p.InitialBackoff)
	for i := 1; i < n && d < float64(p.MaxBackoff); i++ {
		d *= p.Multiplier
	}
	d = min(d, float64(p.MaxBackoff))
	d *= 1 + p.Jitter*(2*rand.Float64()-1)
	return time.Duration(d)
}

// retryDelay says whether e is worth another attempt after retry number n, and after how long.
func (p RetryPolicy) retryDelay(e *Error, n int) (time.Duration, bool) {
	switch e.GRPCCode {
	case codes.Unavailable:
		if e.Reason == ReasonCircuitOpen || e.Code == inferpb.InferErrorCode_BACKEND_INIT_FAILED {
			return 0, false // the breaker decides when to try again; a backend that failed to start stays failed
		}
		return p.Backoff(n), true
	case codes.ResourceExhausted:
		if e.RetryAfter <= 0 {
			return 0, false // no hint (e.g. message too large, GPU out of memory): retrying will not help
		}
		return max(e.RetryAfter, p.Backoff(n)), true
	}
	return 0, false
}

// breakerOutcome classifies a call's error for the circuit breaker: only failures that say the node is not
// there (UNAVAILABLE without an engine code, or the engine draining) count against it.
func breakerOutcome(err error) Outcome {
	if err == nil {
		return OutcomeSuccess
	}
	e, ok := AsError(err)
	if !ok {
		return OutcomeFailure
	}
	switch e.GRPCCode {
	case codes.Unavailable:
		if e.Code == inferpb.InferErrorCode_OK || e.Code == inferpb.InferErrorCode_SHUTTING_DOWN {
			return OutcomeFailure
		}
		return OutcomeSuccess
	case codes.Canceled, codes.DeadlineExceeded:
		if e.Code == inferpb.InferErrorCode_OK {
			return OutcomeIgnored // the caller's own context; says nothing about the node
		}
	}
	return OutcomeSuccess
}
