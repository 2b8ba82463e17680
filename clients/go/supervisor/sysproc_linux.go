//go:build linux

package supervisor

import "syscall"

// sysProcAttr puts the engine in its own process group (a terminal's Ctrl-C reaches the supervisor, which
// then stops the engine in order) and kills it if the supervisor dies without stopping it.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
