package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// BuildBinary builds ./cmd/batchsender of the module that contains the
// current directory into dir, statically (CGO_ENABLED=0), and returns the
// binary's path.
func BuildBinary(ctx context.Context, dir string) (string, error) {
	root, err := ModuleRoot(ctx)
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "batchsender")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/batchsender")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("building batchsender: %w\n%s", err, out)
	}
	return bin, nil
}

// ModuleRoot returns the directory of the main module's go.mod.
func ModuleRoot(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("finding the module root: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("finding the module root: not inside a module")
	}
	return filepath.Dir(gomod), nil
}

// FreeAddr returns a loopback address with a port that was free a moment
// ago. The server is restarted on the same address after kills, so the port
// is chosen here rather than by the server.
func FreeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("finding a free port: %w", err)
	}
	addr := ln.Addr().String()
	if err := ln.Close(); err != nil {
		return "", fmt.Errorf("finding a free port: %w", err)
	}
	return addr, nil
}

// Server runs `batchsender serve` as a subprocess.
type Server struct {
	Bin     string   // path of the binary
	DataDir string   // BATCHSENDER_DATA_DIR
	Addr    string   // BATCHSENDER_ADDR, host:port
	Key     string   // BATCHSENDER_BOOTSTRAP_KEY
	Env     []string // extra KEY=VALUE settings
	LogPath string   // stdout and stderr of every run are appended here

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
	runs   int
}

// URL returns the server's base URL.
func (s *Server) URL() string { return "http://" + s.Addr }

// Start starts the process and waits until /readyz answers 200.
func (s *Server) Start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return errors.New("server already running")
	}
	logf, err := os.OpenFile(s.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("opening server log: %w", err)
	}
	s.runs++
	fmt.Fprintf(logf, "\n===== run %d at %s =====\n", s.runs, time.Now().Format(time.RFC3339Nano))
	cmd := exec.Command(s.Bin, "serve")
	cmd.Env = append([]string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + os.Getenv("HOME"),
		"BATCHSENDER_ADDR=" + s.Addr,
		"BATCHSENDER_DATA_DIR=" + s.DataDir,
		"BATCHSENDER_BOOTSTRAP_KEY=" + s.Key,
	}, s.Env...)
	// Lets whoever runs a benchmark profile and tune the server under test.
	for _, k := range []string{"BATCHSENDER_PPROF_ADDR", "GOGC", "GOMEMLIMIT", "GODEBUG", "GOMAXPROCS"} {
		if v, ok := os.LookupEnv(k); ok {
			cmd.Env = append(cmd.Env, k+"="+v)
		}
	}
	cmd.Stdout = logf
	cmd.Stderr = logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("starting batchsender serve: %w", err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		logf.Close()
		close(exited)
	}()
	s.cmd, s.exited = cmd, exited

	deadline := time.Now().Add(60 * time.Second)
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	for {
		select {
		case <-exited:
			s.cmd = nil
			return fmt.Errorf("batchsender serve exited before ready; log:\n%s", s.tailLog())
		default:
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.URL()+"/readyz", nil)
		resp, err := hc.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			s.killLocked()
			return fmt.Errorf("batchsender serve not ready on %s (last error %v); log:\n%s", s.Addr, err, s.tailLog())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Kill sends SIGKILL and waits for the process to be gone.
func (s *Server) Kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.killLocked()
}

func (s *Server) killLocked() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	<-s.exited
	s.cmd = nil
}

// Stop sends SIGTERM and waits up to grace for a clean exit, then kills.
// It reports whether the process exited on its own.
func (s *Server) Stop(grace time.Duration) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return true
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
		s.cmd = nil
		return true
	case <-time.After(grace):
		s.killLocked()
		return false
	}
}

// Running reports whether the process is alive.
func (s *Server) Running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return false
	}
	select {
	case <-s.exited:
		return false
	default:
		return true
	}
}

// PID returns the process ID, or 0 when not running.
func (s *Server) PID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return 0
	}
	return s.cmd.Process.Pid
}

// PeakRSS returns the process's peak resident set size in bytes (VmHWM).
func (s *Server) PeakRSS() (int64, error) {
	pid := s.PID()
	if pid == 0 {
		return 0, errors.New("server not running")
	}
	return ProcStatusBytes(pid, "VmHWM")
}

// ProcStatusBytes reads a "kB" field such as VmHWM or VmRSS from
// /proc/PID/status and returns it in bytes.
func ProcStatusBytes(pid int, field string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("reading process status: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		name, rest, ok := strings.Cut(line, ":")
		if !ok || name != field {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			return 0, fmt.Errorf("unexpected %s line %q", field, line)
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("parsing %s: %w", field, err)
		}
		return kb * 1024, nil
	}
	return 0, fmt.Errorf("no %s in /proc/%d/status", field, pid)
}

// Log returns everything the server has written so far.
func (s *Server) Log() string {
	b, _ := os.ReadFile(s.LogPath)
	return string(b)
}

func (s *Server) tailLog() string {
	b, _ := os.ReadFile(s.LogPath)
	if len(b) > 8000 {
		b = append([]byte("...\n"), b[len(b)-8000:]...)
	}
	return string(bytes.TrimSpace(b))
}
