package edgebox

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/keepalive"
)

// Defaults of a Client; each has an Option.
const (
	DefaultCallTimeout = 10 * time.Second
	// DefaultMaxMessageBytes matches the engine's grpc.max_message_bytes default (frames are up to 32 MiB).
	DefaultMaxMessageBytes = 64 << 20
	// DefaultMaxReconnectBackoff caps gRPC's reconnect back-off (its own default of 120 s would leave a
	// restarted engine unused for minutes).
	DefaultMaxReconnectBackoff = 2 * time.Second
)

// DefaultKeepalive pings an idle connection that has calls in flight every 30 s and drops it when a ping goes
// unanswered for 10 s, so that a node that vanished (power cut, cable) fails calls instead of hanging them.
var DefaultKeepalive = keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}

// Option configures a Client (and every client of a Pool).
type Option func(*options)

type options struct {
	callTimeout     time.Duration
	methodTimeouts  map[string]time.Duration
	retry           RetryPolicy
	breaker         *BreakerConfig
	keepalive       keepalive.ClientParameters
	tls             *tls.Config
	tlsErr          error
	maxReconnect    time.Duration
	maxMessageBytes int
	dialOptions     []grpc.DialOption
	logger          *slog.Logger
}

func defaultOptions() options {
	return options{
		callTimeout:     DefaultCallTimeout,
		methodTimeouts:  map[string]time.Duration{},
		retry:           DefaultRetryPolicy,
		breaker:         &BreakerConfig{},
		keepalive:       DefaultKeepalive,
		maxReconnect:    DefaultMaxReconnectBackoff,
		maxMessageBytes: DefaultMaxMessageBytes,
		logger:          slog.New(slog.DiscardHandler),
	}
}

// WithCallTimeout bounds every unary call, retries included [10s]; 0 = only the caller's context. A deadline
// on the caller's context that comes sooner wins. Streams have no default deadline.
func WithCallTimeout(d time.Duration) Option {
	return func(o *options) { o.callTimeout = d }
}

// WithMethodTimeout overrides the call timeout of one RPC, named as in the proto ("InferBatch").
func WithMethodTimeout(method string, d time.Duration) Option {
	return func(o *options) { o.methodTimeouts[method] = d }
}

// WithRetryPolicy replaces DefaultRetryPolicy; zero fields take its values.
func WithRetryPolicy(p RetryPolicy) Option {
	return func(o *options) { o.retry = p.withDefaults() }
}

// WithoutRetries makes every call a single attempt.
func WithoutRetries() Option {
	return func(o *options) { o.retry.MaxAttempts = 1 }
}

// WithBreaker configures the per-node circuit breaker (on by default with BreakerConfig's defaults).
func WithBreaker(cfg BreakerConfig) Option {
	return func(o *options) { o.breaker = &cfg }
}

// WithoutBreaker turns the circuit breaker off.
func WithoutBreaker() Option {
	return func(o *options) { o.breaker = nil }
}

// WithKeepalive replaces DefaultKeepalive. The engine (grpclib) accepts pings at any rate.
func WithKeepalive(p keepalive.ClientParameters) Option {
	return func(o *options) { o.keepalive = p }
}

// WithMaxReconnectBackoff caps the wait between reconnection attempts to a node that is down [2s].
func WithMaxReconnectBackoff(d time.Duration) Option {
	return func(o *options) { o.maxReconnect = d }
}

// WithMaxMessageBytes sets the largest message sent or received [64 MiB].
func WithMaxMessageBytes(n int) Option {
	return func(o *options) { o.maxMessageBytes = n }
}

// WithTLS connects over TLS with the given configuration (server verification, and a client certificate
// for mTLS). The engine negotiates HTTP/2 by ALPN; NextProtos is set for you.
func WithTLS(cfg *tls.Config) Option {
	return func(o *options) { o.tls = cfg }
}

// WithTLSFiles connects over TLS trusting the PEM CA bundle caFile (empty = the system roots) and, when
// certFile and keyFile are set, presents that client certificate (mTLS). File errors are returned by Dial.
func WithTLSFiles(caFile, certFile, keyFile string) Option {
	return func(o *options) { o.tls, o.tlsErr = LoadTLSConfig(caFile, certFile, keyFile) }
}

// WithDialOptions appends raw grpc.DialOptions (interceptors, a custom dialer, ...).
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(o *options) { o.dialOptions = append(o.dialOptions, opts...) }
}

// WithLogger logs retries and breaker transitions at Debug/Warn [discard].
func WithLogger(l *slog.Logger) Option {
	return func(o *options) { o.logger = l }
}

// LoadTLSConfig builds a client TLS configuration from PEM files; see WithTLSFiles.
func LoadTLSConfig(caFile, certFile, keyFile string) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("edgebox: reading CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("edgebox: %s holds no PEM certificate", caFile)
		}
		cfg.RootCAs = pool
	}
	if (certFile == "") != (keyFile == "") {
		return nil, fmt.Errorf("edgebox: a client certificate needs both certFile and keyFile")
	}
	if certFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("edgebox: loading client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

func (o *options) grpcDialOptions() []grpc.DialOption {
	bo := backoff.DefaultConfig
	bo.BaseDelay = 100 * time.Millisecond
	bo.MaxDelay = o.maxReconnect
	return append([]grpc.DialOption{
		grpc.WithKeepaliveParams(o.keepalive),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: bo, MinConnectTimeout: 5 * time.Second}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(o.maxMessageBytes),
			grpc.MaxCallSendMsgSize(o.maxMessageBytes)),
	}, o.dialOptions...)
}
