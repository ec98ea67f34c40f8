package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// standin is the program a container runs when its own is not on the
// machine: an HTTP server on each TCP port and a UDP responder on each UDP
// port. It serves the files of its ConfigMap mounts; anything else gets a
// JSON document naming the pod, node and cluster.
type standin struct {
	Pod, Namespace, Container, Node, Cluster, PodIP string
	TCP, UDP                                        []int
	Mounts                                          []standinMount
	log                                             *slog.Logger
}

// standinMount is a volume mounted at Path whose files are in Dir (or, for a
// subPath mount of one file, that file).
type standinMount struct {
	Path, Dir string
}

func parseMount(s string) (standinMount, error) {
	p, dir, ok := strings.Cut(s, "=")
	if !ok || !strings.HasPrefix(p, "/") || !filepath.IsAbs(dir) {
		return standinMount{}, fmt.Errorf("mount %q: want /mount/path=/abs/dir", s)
	}
	return standinMount{Path: path.Clean(p), Dir: dir}, nil
}

// identity is the JSON document the stand-in answers with.
type identity struct {
	Pod       string `json:"pod"`
	Namespace string `json:"namespace"`
	Container string `json:"container"`
	Node      string `json:"node"`
	Cluster   string `json:"cluster"`
	PodIP     string `json:"podIP"`
}

func (s *standin) identity() identity {
	return identity{Pod: s.Pod, Namespace: s.Namespace, Container: s.Container, Node: s.Node, Cluster: s.Cluster, PodIP: s.PodIP}
}

// run serves until ctx is done. With no ports it just waits (a "pause").
func (s *standin) run(ctx context.Context) error {
	var wg sync.WaitGroup
	errc := make(chan error, len(s.TCP)+len(s.UDP))
	for _, port := range s.TCP {
		l, err := net.Listen("tcp", ":"+strconv.Itoa(port))
		if err != nil {
			return fmt.Errorf("stand-in listen tcp %d: %w", port, err)
		}
		srv := &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
		wg.Add(2)
		go func() {
			defer wg.Done()
			if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
				errc <- err
			}
		}()
		go func() { defer wg.Done(); <-ctx.Done(); srv.Close() }()
		s.log.Info("stand-in listening", "proto", "tcp", "port", port)
	}
	for _, port := range s.UDP {
		pc, err := net.ListenPacket("udp", ":"+strconv.Itoa(port))
		if err != nil {
			return fmt.Errorf("stand-in listen udp %d: %w", port, err)
		}
		wg.Add(2)
		go func() { defer wg.Done(); s.serveUDP(pc) }()
		go func() { defer wg.Done(); <-ctx.Done(); pc.Close() }()
		s.log.Info("stand-in listening", "proto", "udp", "port", port)
	}
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	wg.Wait()
	return err
}

// serveUDP answers every datagram with the identity JSON.
func (s *standin) serveUDP(pc net.PacketConn) {
	reply, _ := json.Marshal(s.identity())
	buf := make([]byte, 64*1024)
	for {
		_, addr, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		_, _ = pc.WriteTo(append(reply, '\n'), addr)
	}
}

func (s *standin) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.log.Info("request", "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr)
	if name := s.lookup(r.URL.Path); name != "" {
		// ServeContent, not ServeFile: no redirect of .../index.html.
		f, err := os.Open(name)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		defer f.Close()
		st, err := f.Stat()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		http.ServeContent(w, r, name, st.ModTime(), f)
		return
	}
	if len(s.Mounts) > 0 && r.URL.Path != "/" {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(s.identity())
}

// lookup finds the file a request path names in the mounts: under a mount
// path, or relative to a mount as a document root (as an nginx serving a
// ConfigMap mounted at its html directory does); "/" and directories mean
// their index.html.
func (s *standin) lookup(reqPath string) string {
	p := path.Clean("/" + reqPath)
	withIndex := func(p string) string {
		if strings.HasSuffix(p, "/") || p == "/" {
			return p + "index.html"
		}
		return p
	}
	for _, m := range s.Mounts {
		st, err := os.Stat(m.Dir)
		if err != nil {
			continue
		}
		if !st.IsDir() { // a subPath mount of one file
			if p == m.Path || withIndex(p) == "/"+path.Base(m.Path) || strings.TrimSuffix(p, "/") == path.Dir(m.Path) && path.Base(m.Path) == "index.html" {
				return m.Dir
			}
			continue
		}
		var rels []string
		if rel, ok := strings.CutPrefix(p, m.Path); ok && (rel == "" || strings.HasPrefix(rel, "/") || m.Path == "/") {
			rels = append(rels, withIndex("/"+strings.TrimPrefix(rel, "/")))
		}
		rels = append(rels, withIndex(p))
		for _, rel := range rels {
			f := filepath.Join(m.Dir, filepath.FromSlash(rel))
			if fst, err := os.Stat(f); err == nil && fst.Mode().IsRegular() {
				return f
			} else if err == nil && fst.IsDir() {
				if idx := filepath.Join(f, "index.html"); fileExists(idx) {
					return idx
				}
			}
		}
	}
	return ""
}

func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular()
}
