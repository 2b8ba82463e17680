// Package supervisor runs an edgebox engine process and keeps it running.
//
// It starts the binary, waits for its "EDGEBOX READY grpc=HOST:PORT" line and then for HealthCheck to answer
// SERVING, restarts it with exponential back-off when it exits or stops answering health checks, and stops
// it with SIGTERM (SIGKILL after a timeout). A restarted engine keeps the gRPC port of the first one, so
// clients reconnect to the same address. It does not talk to the engine beyond HealthCheck.
package supervisor

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/edgebox/edgebox/clients/go/inferpb"
)

// Config describes the engine to run; zero fields take the defaults in brackets.
type Config struct {
	// Binary is the edgebox executable.
	Binary string
	// Args are passed first, e.g. --config FILE --data_dir DIR. The supervisor adds --grpc_port itself.
	Args []string
	// GRPCPort is the port of the first start; 0 lets the OS choose. Restarts reuse the port the engine
	// reported, so clients keep their address.
	GRPCPort int
	// Env is added to the supervisor's environment.
	Env []string
	// Dir is the working directory [the supervisor's].
	Dir string
	// Output receives the engine's stdout and stderr, line by line [discarded; see Logs].
	Output io.Writer
	// TLS, when the engine serves TLS, is used by the health checks.
	TLS *tls.Config

	// ReadyTimeout bounds a start: READY line plus SERVING [60s].
	ReadyTimeout time.Duration
	// StopTimeout is how long SIGTERM gets before SIGKILL [15s].
	StopTimeout time.Duration
	// RestartBackoff is the first wait before a restart; it doubles up to MaxRestartBackoff [200ms, 10s].
	RestartBackoff    time.Duration
	MaxRestartBackoff time.Duration
	// StableAfter: an engine that ran this long before dying restarts after RestartBackoff again [30s].
	StableAfter time.Duration
	// HealthInterval between health checks of a running engine; negative disables them [2s].
	HealthInterval time.Duration
	// HealthTimeout of one check [2s].
	HealthTimeout time.Duration
	// HealthFailures consecutive failed checks make the supervisor kill the (hung) engine [5].
	HealthFailures int
	// Logger receives the supervisor's own events [discard].
	Logger *slog.Logger
}

func (c Config) withDefaults() Config {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&c.ReadyTimeout, 60*time.Second)
	def(&c.StopTimeout, 15*time.Second)
	def(&c.RestartBackoff, 200*time.Millisecond)
	def(&c.MaxRestartBackoff, 10*time.Second)
	def(&c.StableAfter, 30*time.Second)
	def(&c.HealthInterval, 2*time.Second)
	def(&c.HealthTimeout, 2*time.Second)
	if c.HealthFailures <= 0 {
		c.HealthFailures = 5
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

const logLines = 400

var readyLine = regexp.MustCompile(`^EDGEBOX READY grpc=(\S+)`)

// Supervisor owns one engine process at a time. Its methods are safe for concurrent use.
type Supervisor struct {
	cfg  Config
	logs *ring

	mu       sync.Mutex
	changed  chan struct{} // closed and replaced on every state change
	port     int
	addr     string
	proc     *process // the current process, nil between runs
	ready    int      // instances that became SERVING, in total
	starts   int      // processes started, in total
	stopping bool
	lastErr  error
	stopErr  error // exit error of the process that Stop terminated

	stopRequested chan struct{}
	loopDone      chan struct{}
}

// Start launches the engine and returns once it serves, or with an error (and the engine's last log lines)
// if the first start fails: a first failure is a configuration problem, not something to retry.
func Start(ctx context.Context, cfg Config) (*Supervisor, error) {
	if cfg.Binary == "" {
		return nil, errors.New("supervisor: Config.Binary is empty")
	}
	s := &Supervisor{cfg: cfg.withDefaults(), logs: newRing(logLines), changed: make(chan struct{}),
		port: cfg.GRPCPort, stopRequested: make(chan struct{}), loopDone: make(chan struct{})}
	first, err := s.launch(ctx)
	if err != nil {
		close(s.loopDone)
		return nil, fmt.Errorf("%w\n--- engine output (last lines) ---\n%s", err, s.Logs())
	}
	go s.loop(first)
	return s, nil
}

// Addr returns host:port of the engine's gRPC server (stable across restarts).
func (s *Supervisor) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addr
}

// PID returns the process id of the running engine, 0 between runs.
func (s *Supervisor) PID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		return 0
	}
	return s.proc.cmd.Process.Pid
}

// Starts returns how many processes were started in total (1 before any restart).
func (s *Supervisor) Starts() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.starts
}

// ReadyCount returns how many started processes became SERVING in total.
func (s *Supervisor) ReadyCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ready
}

// LastError returns why the last process ended or failed to start (nil if none did).
func (s *Supervisor) LastError() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastErr
}

// Logs returns the engine's last output lines.
func (s *Supervisor) Logs() string { return s.logs.String() }

// WaitReady waits until n processes in total have become SERVING (1 = the first start) and returns the
// address.
func (s *Supervisor) WaitReady(ctx context.Context, n int) (string, error) {
	for {
		s.mu.Lock()
		ready, addr, changed, stopping := s.ready, s.addr, s.changed, s.stopping
		s.mu.Unlock()
		if ready >= n && s.PID() != 0 {
			return addr, nil
		}
		if stopping {
			return "", errors.New("supervisor: stopped")
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-changed:
		}
	}
}

// Signal sends sig to the running engine (tests use it to simulate crashes and hangs).
func (s *Supervisor) Signal(sig os.Signal) error {
	s.mu.Lock()
	p := s.proc
	s.mu.Unlock()
	if p == nil {
		return errors.New("supervisor: no engine running")
	}
	return p.cmd.Process.Signal(sig)
}

// Stop stops restarting, sends SIGTERM, waits up to StopTimeout (then SIGKILL), and returns the engine's
// exit error (nil for a clean exit, or when no engine was running). It is safe to call more than once.
func (s *Supervisor) Stop(ctx context.Context) error {
	s.mu.Lock()
	already := s.stopping
	s.stopping = true
	s.notifyLocked()
	s.mu.Unlock()
	if !already {
		close(s.stopRequested)
	}
	select {
	case <-s.loopDone:
	case <-ctx.Done():
		if p := s.current(); p != nil {
			_ = p.cmd.Process.Kill()
		}
		<-s.loopDone
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stopErr
}

func (s *Supervisor) current() *process {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.proc
}

func (s *Supervisor) notifyLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// loop watches the running process and restarts it until Stop.
func (s *Supervisor) loop(p *process) {
	defer close(s.loopDone)
	backoff := s.cfg.RestartBackoff
	for {
		started := time.Now()
		stopped := s.watch(p)
		p.close()
		s.mu.Lock()
		s.proc = nil
		s.lastErr = p.exitErr
		if stopped {
			s.stopErr = p.exitErr
		}
		s.notifyLocked()
		s.mu.Unlock()
		if stopped {
			return
		}
		if time.Since(started) >= s.cfg.StableAfter {
			backoff = s.cfg.RestartBackoff
		}
		for {
			s.cfg.Logger.Warn("edgebox engine ended; restarting", "error", p.exitErr, "after", backoff)
			select {
			case <-s.stopRequested:
				return
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, s.cfg.MaxRestartBackoff)
			ctx, cancel := context.WithCancel(context.Background())
			go func() {
				select {
				case <-s.stopRequested:
					cancel()
				case <-ctx.Done():
				}
			}()
			next, err := s.launch(ctx)
			cancel()
			if err == nil {
				p = next
				break
			}
			s.mu.Lock()
			s.lastErr = err
			stopping := s.stopping
			s.mu.Unlock()
			if stopping {
				return
			}
		}
	}
}

// watch waits for p to exit, health-checking it; on Stop it terminates p. It reports whether Stop was asked.
func (s *Supervisor) watch(p *process) bool {
	var tick <-chan time.Time
	if s.cfg.HealthInterval > 0 {
		t := time.NewTicker(s.cfg.HealthInterval)
		defer t.Stop()
		tick = t.C
	}
	failures := 0
	for {
		select {
		case <-p.exited:
			return false
		case <-s.stopRequested:
			s.terminate(p)
			return true
		case <-tick:
			if err := p.health(s.cfg.HealthTimeout); err != nil {
				failures++
				s.cfg.Logger.Warn("edgebox health check failed", "failures", failures, "error", err)
				if failures >= s.cfg.HealthFailures {
					s.cfg.Logger.Error("edgebox engine stopped answering; killing it", "pid", p.cmd.Process.Pid)
					_ = p.cmd.Process.Kill()
				}
			} else {
				failures = 0
			}
		}
	}
}

func (s *Supervisor) terminate(p *process) {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(s.cfg.StopTimeout):
		s.cfg.Logger.Error("edgebox engine ignored SIGTERM; killing it", "timeout", s.cfg.StopTimeout)
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
}

// launch starts one process and waits until it serves; on failure the process is killed.
func (s *Supervisor) launch(ctx context.Context) (*process, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.ReadyTimeout)
	defer cancel()
	s.mu.Lock()
	port := s.port
	s.mu.Unlock()
	args := append(append([]string{}, s.cfg.Args...), "--grpc_port", strconv.Itoa(port))
	cmd := exec.Command(s.cfg.Binary, args...)
	cmd.Dir = s.cfg.Dir
	cmd.Env = append(os.Environ(), s.cfg.Env...)
	cmd.SysProcAttr = sysProcAttr()
	p, err := startProcess(cmd, s.logs, s.cfg.Output)
	if err != nil {
		return nil, fmt.Errorf("supervisor: starting %s: %w", s.cfg.Binary, err)
	}
	s.mu.Lock()
	s.starts++
	s.proc = p
	s.notifyLocked()
	s.mu.Unlock()

	fail := func(err error) (*process, error) {
		_ = cmd.Process.Kill()
		<-p.exited
		p.close()
		s.mu.Lock()
		s.proc = nil
		s.notifyLocked()
		s.mu.Unlock()
		return nil, err
	}
	var addr string
	select {
	case addr = <-p.readyAddr:
	case <-p.exited:
		return fail(fmt.Errorf("supervisor: the engine exited before it was ready: %v", p.exitErr))
	case <-ctx.Done():
		return fail(fmt.Errorf("supervisor: no READY line within %s: %w", s.cfg.ReadyTimeout, ctx.Err()))
	}
	if err := p.dial(addr, s.cfg.TLS); err != nil {
		return fail(err)
	}
	if err := p.waitServing(ctx); err != nil {
		return fail(fmt.Errorf("supervisor: the engine at %s did not become SERVING: %w", addr, err))
	}
	if _, portText, err := splitPort(addr); err == nil {
		s.mu.Lock()
		s.port, _ = strconv.Atoi(portText)
		s.mu.Unlock()
	}
	s.mu.Lock()
	s.addr = addr
	s.ready++
	s.notifyLocked()
	s.mu.Unlock()
	s.cfg.Logger.Info("edgebox engine serving", "addr", addr, "pid", cmd.Process.Pid)
	return p, nil
}

func splitPort(addr string) (string, string, error) {
	i := strings.LastIndexByte(addr, ':')
	if i < 0 {
		return "", "", fmt.Errorf("no port in %q", addr)
	}
	return addr[:i], addr[i+1:], nil
}

// process is one running engine.
type process struct {
	cmd       *exec.Cmd
	readyAddr chan string
	exited    chan struct{}
	exitErr   error
	conn      *grpc.ClientConn
	health    func(timeout time.Duration) error
}

func startProcess(cmd *exec.Cmd, logs *ring, out io.Writer) (*process, error) {
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &process{cmd: cmd, readyAddr: make(chan string, 1), exited: make(chan struct{}),
		health: func(time.Duration) error { return errors.New("not connected") }}
	var readers sync.WaitGroup
	readers.Add(2)
	pump := func(r io.Reader, watchReady bool) {
		defer readers.Done()
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			logs.add(line)
			if out != nil {
				fmt.Fprintln(out, line)
			}
			if watchReady {
				if m := readyLine.FindStringSubmatch(line); m != nil {
					select {
					case p.readyAddr <- m[1]:
					default:
					}
				}
			}
		}
		_, _ = io.Copy(io.Discard, r) // a line longer than the buffer: keep the pipe drained
	}
	go pump(stdout, true)
	go pump(stderr, false)
	go func() {
		readers.Wait() // Wait must not run before the pipes are drained
		p.exitErr = cmd.Wait()
		close(p.exited)
	}()
	return p, nil
}

func (p *process) dial(addr string, tlsCfg *tls.Config) error {
	creds := insecure.NewCredentials()
	if tlsCfg != nil {
		cfg := tlsCfg.Clone()
		cfg.NextProtos = []string{"h2"}
		creds = credentials.NewTLS(cfg)
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		return fmt.Errorf("supervisor: dial %s: %w", addr, err)
	}
	p.conn = conn
	client := inferpb.NewInferenceServiceClient(conn)
	p.health = func(timeout time.Duration) error {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		resp, err := client.HealthCheck(ctx, &inferpb.HealthCheckRequest{})
		if err != nil {
			return err
		}
		if resp.GetStatus() != inferpb.HealthStatus_SERVING {
			return fmt.Errorf("status %s", resp.GetStatus())
		}
		return nil
	}
	return nil
}

func (p *process) close() {
	if p.conn != nil {
		_ = p.conn.Close()
	}
}

func (p *process) waitServing(ctx context.Context) error {
	for {
		err := p.health(time.Second)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last health check: %v)", ctx.Err(), err)
		case <-p.exited:
			return fmt.Errorf("the engine exited: %v", p.exitErr)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// ring keeps the last n lines of output.
type ring struct {
	mu    sync.Mutex
	lines []string
	next  int
	full  bool
}

func newRing(n int) *ring { return &ring{lines: make([]string, n)} }

func (r *ring) add(line string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lines[r.next] = line
	r.next = (r.next + 1) % len(r.lines)
	r.full = r.full || r.next == 0
}

func (r *ring) String() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	if r.full {
		out = append(out, r.lines[r.next:]...)
	}
	out = append(out, r.lines[:r.next]...)
	return strings.Join(out, "\n")
}
