package node

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

type probeKind int

const (
	probeStartup probeKind = iota
	probeReadiness
	probeLiveness
)

func (k probeKind) String() string {
	return [...]string{"startup", "readiness", "liveness"}[k]
}

// startProbes starts the container's probe loops for one run; they stop
// when ctx is done. Without a readiness probe the container is ready once
// started; without a startup probe it is started once running.
func (c *container) startProbes(ctx context.Context, wg *sync.WaitGroup) {
	if c.kind == kindInit {
		return
	}
	startedCh := make(chan struct{})
	if c.spec.StartupProbe != nil {
		wg.Add(1)
		go func() { defer wg.Done(); c.probeLoop(ctx, probeStartup, c.spec.StartupProbe, startedCh) }()
	} else {
		close(startedCh)
	}
	if c.spec.ReadinessProbe != nil {
		wg.Add(1)
		go func() { defer wg.Done(); c.probeLoop(ctx, probeReadiness, c.spec.ReadinessProbe, startedCh) }()
	} else {
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case <-startedCh:
				c.setProbeResult(probeReadiness, true)
			case <-ctx.Done():
			}
		}()
	}
	if c.spec.LivenessProbe != nil {
		wg.Add(1)
		go func() { defer wg.Done(); c.probeLoop(ctx, probeLiveness, c.spec.LivenessProbe, startedCh) }()
	}
}

// probeLoop runs probe p every period after its initial delay and applies
// the success and failure thresholds. The startup probe closes started on
// success; the others wait for started.
func (c *container) probeLoop(ctx context.Context, kind probeKind, p *corev1.Probe, started chan struct{}) {
	if kind != probeStartup {
		select {
		case <-started:
		case <-ctx.Done():
			return
		}
	}
	period := seconds(p.PeriodSeconds, 10)
	timeout := seconds(p.TimeoutSeconds, 1)
	successes, failures := int32(0), int32(0)
	needSuccess := max(p.SuccessThreshold, 1)
	needFailure := max(p.FailureThreshold, 3)
	if p.FailureThreshold > 0 {
		needFailure = p.FailureThreshold
	}
	delay := time.Duration(p.InitialDelaySeconds) * time.Second
	timer := time.NewTimer(delay)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		err := c.runProbe(ctx, p, timeout)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			successes, failures = successes+1, 0
		} else {
			successes, failures = 0, failures+1
			c.w.log.Debug("probe failed", "container", c.spec.Name, "probe", kind.String(), "err", err)
		}
		switch {
		case err == nil && successes >= needSuccess:
			if kind == probeStartup {
				c.setProbeResult(probeStartup, true)
				close(started)
				return
			}
			c.setProbeResult(kind, true)
		case err != nil && failures >= needFailure:
			if kind == probeReadiness {
				c.setProbeResult(kind, false)
			} else {
				c.w.log.Info("container failed its probe; restarting", "container", c.spec.Name, "probe", kind.String(), "err", err)
				select {
				case c.kill <- struct{}{}:
				default:
				}
				return
			}
		}
		timer.Reset(period)
	}
}

func (c *container) setProbeResult(kind probeKind, ok bool) {
	c.mu.Lock()
	changed := false
	switch kind {
	case probeStartup:
		changed = c.started != ok
		c.started = ok
	case probeReadiness:
		changed = c.ready != ok
		c.ready = ok
	}
	c.mu.Unlock()
	if changed {
		c.w.statusChanged()
	}
}

func seconds(v, def int32) time.Duration {
	if v <= 0 {
		v = def
	}
	return time.Duration(v) * time.Second
}

// runProbe runs one probe against the container; nil means success.
func (c *container) runProbe(ctx context.Context, p *corev1.Probe, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	podIP := c.w.sb.ip.String()
	switch {
	case p.HTTPGet != nil:
		g := p.HTTPGet
		port, err := resolvePort(g.Port, &c.spec)
		if err != nil {
			return err
		}
		host := g.Host
		if host == "" {
			host = podIP
		}
		scheme := "http"
		if g.Scheme == corev1.URISchemeHTTPS {
			scheme = "https"
		}
		path := g.Path
		if !strings.HasPrefix(path, "/") {
			path = "/" + path
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, scheme+"://"+net.JoinHostPort(host, strconv.Itoa(port))+path, nil)
		if err != nil {
			return err
		}
		req.Header.Set("User-Agent", "kube-probe/1.37")
		for _, h := range g.HTTPHeaders {
			if strings.EqualFold(h.Name, "Host") {
				req.Host = h.Value
				continue
			}
			req.Header.Add(h.Name, h.Value)
		}
		client := &http.Client{Transport: &http.Transport{
			TLSClientConfig:   &tls.Config{InsecureSkipVerify: true}, // as the kubelet: probes do not verify
			DisableKeepAlives: true,
		}}
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode < 200 || resp.StatusCode >= 400 {
			return fmt.Errorf("HTTP probe failed with statuscode: %d", resp.StatusCode)
		}
		return nil
	case p.TCPSocket != nil:
		port, err := resolvePort(p.TCPSocket.Port, &c.spec)
		if err != nil {
			return err
		}
		host := p.TCPSocket.Host
		if host == "" {
			host = podIP
		}
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort(host, strconv.Itoa(port)))
		if err != nil {
			return err
		}
		return conn.Close()
	case p.Exec != nil:
		if len(p.Exec.Command) == 0 {
			return fmt.Errorf("exec probe has no command")
		}
		code, err := c.execWait(ctx, p.Exec.Command)
		if err != nil {
			return err
		}
		if code != 0 {
			return fmt.Errorf("command %q exited with %d", strings.Join(p.Exec.Command, " "), code)
		}
		return nil
	case p.GRPC != nil:
		conn, err := grpc.NewClient(net.JoinHostPort(podIP, strconv.Itoa(int(p.GRPC.Port))),
			grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return err
		}
		defer conn.Close()
		service := ""
		if p.GRPC.Service != nil {
			service = *p.GRPC.Service
		}
		resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: service})
		if err != nil {
			return err
		}
		if resp.Status != healthpb.HealthCheckResponse_SERVING {
			return fmt.Errorf("gRPC health: %v", resp.Status)
		}
		return nil
	}
	return fmt.Errorf("probe has no handler")
}

// resolvePort turns a probe's port (number or container port name) into a
// number.
func resolvePort(p intstr.IntOrString, c *corev1.Container) (int, error) {
	if p.Type == intstr.Int {
		if p.IntVal <= 0 || p.IntVal > 65535 {
			return 0, fmt.Errorf("invalid port %d", p.IntVal)
		}
		return int(p.IntVal), nil
	}
	for _, cp := range c.Ports {
		if cp.Name == p.StrVal {
			return int(cp.ContainerPort), nil
		}
	}
	if n, err := strconv.Atoi(p.StrVal); err == nil {
		return n, nil
	}
	return 0, fmt.Errorf("container %s has no port named %q", c.Name, p.StrVal)
}

// execWait runs argv in the container (its netns, cgroup and environment)
// with no input and output discarded, and returns its exit code.
func (c *container) execWait(ctx context.Context, argv []string) (int, error) {
	cmd, err := c.execCommand(ctx, argv)
	if err != nil {
		return 0, err
	}
	if err := c.w.n.spawn.start(cmd, c.w.sb.ns, c.cgroup); err != nil {
		return 0, fmt.Errorf("exec %s: %w", argv[0], err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err = <-done:
	case <-ctx.Done():
		_ = cmd.Process.Kill()
		<-done
		return 0, fmt.Errorf("command %q timed out", strings.Join(argv, " "))
	}
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode(), nil
	}
	return 0, err
}

// execCommand prepares argv to run in the container: the program is looked
// up in the container's PATH, the environment is the container's.
func (c *container) execCommand(ctx context.Context, argv []string) (*exec.Cmd, error) {
	c.mu.Lock()
	running := c.state.Running != nil
	c.mu.Unlock()
	if !running {
		return nil, fmt.Errorf("container %s: %w", c.spec.Name, errNotRunning)
	}
	pod := c.w.spec()
	env, err := c.w.n.containerEnv(ctx, pod, &c.spec, c.w.sb.ip.String())
	if err != nil {
		return nil, err
	}
	prog, ok := lookProgram(argv[0], env["PATH"])
	if !ok {
		return nil, fmt.Errorf("exec: %q: executable file not found in $PATH", argv[0])
	}
	cmd := exec.Command(prog, argv[1:]...)
	cmd.Args[0] = argv[0]
	cmd.Env = envList(env)
	cmd.Dir = workingDir(c.spec.WorkingDir, c.w.sb.dir)
	return cmd, nil
}
