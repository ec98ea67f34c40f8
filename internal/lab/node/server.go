package node

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// serveAPI serves the kubelet API on NodeIP:KubeletPort until ctx is done.
func (n *node) serveAPI(ctx context.Context) error {
	cert, err := tls.LoadX509KeyPair(n.cfg.ServingCert, n.cfg.ServingKey)
	if err != nil {
		return fmt.Errorf("kubelet API certificate: %w", err)
	}
	tlsCfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if n.cfg.ClientCA != "" {
		pem, err := os.ReadFile(n.cfg.ClientCA)
		if err != nil {
			return fmt.Errorf("kubelet API client CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return fmt.Errorf("kubelet API client CA %s: no certificate in it", n.cfg.ClientCA)
		}
		tlsCfg.ClientCAs = pool
		tlsCfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	l, err := net.Listen("tcp", net.JoinHostPort(n.cfg.NodeIP.String(), strconv.Itoa(KubeletPort)))
	if err != nil {
		return fmt.Errorf("kubelet API: %w", err)
	}
	srv := &http.Server{
		Handler:           n.apiHandler(),
		TLSConfig:         tlsCfg,
		ReadHeaderTimeout: 10 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.ServeTLS(l, "", "") }()
	select {
	case err := <-errc:
		return fmt.Errorf("kubelet API: %w", err)
	case <-ctx.Done():
		// Hijacked exec streams end with their pods; Close stops the rest.
		srv.Close()
		<-errc
		return nil
	}
}

func (n *node) apiHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") })
	mux.HandleFunc("GET /pods", n.handlePods)
	mux.HandleFunc("GET /containerLogs/{namespace}/{pod}/{container}", n.handleLogs)
	for _, p := range []string{"/exec/{namespace}/{pod}/{container}", "/exec/{namespace}/{pod}/{uid}/{container}"} {
		mux.HandleFunc("GET "+p, n.handleExec)
		mux.HandleFunc("POST "+p, n.handleExec)
	}
	return mux
}

func (n *node) handlePods(w http.ResponseWriter, _ *http.Request) {
	list := corev1.PodList{TypeMeta: metav1.TypeMeta{Kind: "PodList", APIVersion: "v1"}}
	for _, wk := range n.workerList() {
		list.Items = append(list.Items, *wk.spec().DeepCopy())
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(list)
}

// lookupContainer finds a container of a pod on this node, or writes a 404.
func (n *node) lookupContainer(w http.ResponseWriter, r *http.Request) *container {
	ns, name, cname := r.PathValue("namespace"), r.PathValue("pod"), r.PathValue("container")
	wk := n.worker(ns, name)
	if wk == nil || (r.PathValue("uid") != "" && string(wk.uid) != r.PathValue("uid")) {
		http.Error(w, fmt.Sprintf("pod %s/%s not found on node %s", ns, name, n.cfg.NodeName), http.StatusNotFound)
		return nil
	}
	c := wk.container(cname)
	if c == nil {
		http.Error(w, fmt.Sprintf("container %s not found in pod %s/%s", cname, ns, name), http.StatusNotFound)
		return nil
	}
	return c
}

// logOptions are the containerLogs query parameters.
type logOptions struct {
	follow, previous, timestamps bool
	tailLines, limitBytes        int64 // -1: unset
	since                        time.Time
}

func parseLogOptions(q map[string][]string) (logOptions, error) {
	get := func(k string) string {
		if v := q[k]; len(v) > 0 {
			return v[0]
		}
		return ""
	}
	o := logOptions{
		follow:     get("follow") == "true" || get("follow") == "1",
		previous:   get("previous") == "true" || get("previous") == "1",
		timestamps: get("timestamps") == "true" || get("timestamps") == "1",
		tailLines:  -1,
		limitBytes: -1,
	}
	for k, dst := range map[string]*int64{"tailLines": &o.tailLines, "limitBytes": &o.limitBytes} {
		if v := get(k); v != "" {
			i, err := strconv.ParseInt(v, 10, 64)
			if err != nil || i < 0 {
				return o, fmt.Errorf("%s=%q is not a non-negative integer", k, v)
			}
			*dst = i
		}
	}
	if v := get("sinceSeconds"); v != "" {
		s, err := strconv.ParseInt(v, 10, 64)
		if err != nil || s <= 0 {
			return o, fmt.Errorf("sinceSeconds=%q is not a positive integer", v)
		}
		o.since = time.Now().Add(-time.Duration(s) * time.Second)
	}
	if v := get("sinceTime"); v != "" {
		t, err := time.Parse(time.RFC3339, v)
		if err != nil {
			return o, fmt.Errorf("sinceTime=%q: %w", v, err)
		}
		o.since = t
	}
	return o, nil
}

func (n *node) handleLogs(w http.ResponseWriter, r *http.Request) {
	c := n.lookupContainer(w, r)
	if c == nil {
		return
	}
	opts, err := parseLogOptions(r.URL.Query())
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	c.mu.Lock()
	path, prev := c.logPath, c.prevLog
	running := c.state.Running != nil
	runID := c.id
	c.mu.Unlock()
	if opts.previous {
		// The previous instance is the one before the running one, or,
		// while the container waits to restart, the one that just ended.
		if running {
			path = prev
		} else if c.restartCount() == 0 {
			path = ""
		}
		opts.follow = false
	}
	if path == "" {
		what := "has not started yet"
		if opts.previous {
			what = "has no previous terminated instance"
		}
		http.Error(w, fmt.Sprintf("container %q in pod %q %s", c.spec.Name, c.w.name, what), http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "text/plain")
	if err := writeLogs(r.Context(), w, path, opts, func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.id == runID && c.state.Running != nil
	}); err != nil && r.Context().Err() == nil {
		c.w.log.Debug("serve logs", "container", c.spec.Name, "err", err)
	}
}

// writeLogs copies the CRI-format log at path to w as plain text. With
// follow it keeps reading while alive reports the container still running.
func writeLogs(ctx context.Context, w io.Writer, path string, o logOptions, alive func() bool) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	flush := func() {
		if fl, ok := w.(http.Flusher); ok {
			fl.Flush()
		}
	}
	written := int64(0)
	emit := func(line []byte) (bool, error) {
		ts, text, ok := parseCRILine(line)
		if !ok || (!o.since.IsZero() && ts.Before(o.since)) {
			return true, nil
		}
		if o.timestamps {
			text = append([]byte(ts.Format(time.RFC3339Nano)+" "), text...)
		}
		if o.limitBytes >= 0 && written+int64(len(text)) > o.limitBytes {
			text = text[:o.limitBytes-written]
		}
		m, err := w.Write(text)
		written += int64(m)
		return o.limitBytes < 0 || written < o.limitBytes, err
	}
	if o.tailLines >= 0 {
		data, err := io.ReadAll(f)
		if err != nil {
			return err
		}
		end := bytes.LastIndexByte(data, '\n') + 1
		lines := bytes.SplitAfter(data[:end], []byte("\n"))
		if len(lines) > 0 && len(lines[len(lines)-1]) == 0 {
			lines = lines[:len(lines)-1]
		}
		if int64(len(lines)) > o.tailLines {
			lines = lines[int64(len(lines))-o.tailLines:]
		}
		for _, l := range lines {
			if more, err := emit(l); err != nil || !more {
				return err
			}
		}
		if _, err := f.Seek(int64(end), io.SeekStart); err != nil {
			return err
		}
	}
	br := bufio.NewReader(f)
	var partial []byte
	for {
		line, err := br.ReadBytes('\n')
		if len(line) > 0 {
			partial = append(partial, line...)
			if partial[len(partial)-1] == '\n' {
				more, werr := emit(partial)
				partial = nil
				if werr != nil || !more {
					return werr
				}
			}
		}
		if err == nil {
			continue
		}
		if !errors.Is(err, io.EOF) {
			return err
		}
		if !o.follow {
			return nil
		}
		flush()
		running := alive()
		if !running {
			// One more pass: the writer may have added lines before stopping.
			rest, _ := io.ReadAll(br)
			for _, l := range bytes.SplitAfter(append(partial, rest...), []byte("\n")) {
				if len(l) > 0 && l[len(l)-1] == '\n' {
					if more, err := emit(l); err != nil || !more {
						return err
					}
				}
			}
			flush()
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond): // a log file grows; poll it
		}
	}
}

// parseCRILine splits "<time> <stream> <F|P> <text>\n" into the time and
// the text (with its newline when the line is complete).
func parseCRILine(line []byte) (time.Time, []byte, bool) {
	line = bytes.TrimSuffix(line, []byte("\n"))
	parts := bytes.SplitN(line, []byte(" "), 4)
	if len(parts) < 3 {
		return time.Time{}, nil, false
	}
	ts, err := time.Parse(time.RFC3339Nano, string(parts[0]))
	if err != nil {
		return time.Time{}, nil, false
	}
	var text []byte
	if len(parts) == 4 {
		text = append(text, parts[3]...)
	}
	if string(parts[2]) == "F" {
		text = append(text, '\n')
	}
	return ts, text, true
}

// execParams are the exec query parameters.
type execParams struct {
	command                    []string
	stdin, stdout, stderr, tty bool
}

func parseExecParams(r *http.Request) (execParams, error) {
	q := r.URL.Query()
	flag := func(k string) bool { v := q.Get(k); return v == "1" || strings.EqualFold(v, "true") }
	p := execParams{
		command: q["command"],
		stdin:   flag(corev1.ExecStdinParam),
		stdout:  flag(corev1.ExecStdoutParam),
		stderr:  flag(corev1.ExecStderrParam),
		tty:     flag(corev1.ExecTTYParam),
	}
	if len(p.command) == 0 {
		return p, errors.New("exec: no command")
	}
	if !p.stdin && !p.stdout && !p.stderr {
		return p, errors.New("exec: you must specify at least 1 of stdin, stdout, stderr")
	}
	if p.tty && p.stderr {
		p.stderr = false // a TTY merges stderr into stdout
	}
	return p, nil
}
