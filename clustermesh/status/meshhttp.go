package status

import (
	"context"
	"crypto/subtle"
	"crypto/tls"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"
)

// Paths of the mesh page's API.
const (
	MeshAPIPath    = "/api/mesh"
	MeshEventsPath = "/api/mesh/events"
)

//go:embed mesh.html
var meshPage []byte

// MeshSource is what the mesh page needs: a current document and a way to
// learn it changed. *MeshWatcher implements it.
type MeshSource interface {
	Mesh() Mesh
	Subscribe() (<-chan struct{}, func())
}

// MeshHandler serves the live mesh page at /, its document at MeshAPIPath,
// a server-sent event stream of it at MeshEventsPath (one event per
// rebuild), /healthz (serving), /readyz (the first full read is done) and,
// if metrics is not nil, /metrics. The page needs no build step and no
// framework; it opens one event stream and redraws from it.
func MeshHandler(src MeshSource, metrics http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Content-Security-Policy", "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'")
		_, _ = w.Write(meshPage)
	})
	mux.HandleFunc("GET "+MeshAPIPath, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(src.Mesh())
	})
	mux.HandleFunc("GET "+MeshEventsPath, func(w http.ResponseWriter, r *http.Request) {
		flusher, ok := w.(http.Flusher)
		if !ok {
			http.Error(w, "streaming unsupported", http.StatusInternalServerError)
			return
		}
		changed, stop := src.Subscribe()
		defer stop()
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("Cache-Control", "no-store")
		send := func() bool {
			b, err := json.Marshal(src.Mesh())
			if err != nil {
				return false
			}
			if _, err := fmt.Fprintf(w, "event: mesh\ndata: %s\n\n", b); err != nil {
				return false
			}
			flusher.Flush()
			return true
		}
		if !send() {
			return
		}
		for {
			select {
			case <-r.Context().Done():
				return
			case <-changed:
				if !send() {
					return
				}
			}
		}
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if !src.Mesh().Ready {
			http.Error(w, "not ready: the first read of the mesh is not complete", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	if metrics != nil {
		mux.Handle("GET /metrics", metrics)
	}
	return mux
}

// PageServer says where and how a status page is served.
type PageServer struct {
	// Addr is host:port. A loopback host needs nothing else; any other
	// address needs TLS with client certificates or a BearerToken.
	Addr string
	// TLS, if set, serves HTTPS; with ClientAuth RequireAndVerifyClientCert
	// it authenticates readers by certificate.
	TLS *tls.Config
	// BearerToken, if set, is required from every request as
	// "Authorization: Bearer <token>" or, for browsers, "?token=<token>"
	// (the page passes it on to its event stream). It grants read access
	// only: the page and API have nothing to change.
	BearerToken string
}

// ErrExposed is returned by Listen for a non-loopback address without TLS
// client certificates or a bearer token.
var ErrExposed = errors.New("status page on a non-loopback address needs --status-tls with client certificates or --status-token")

// Listen checks the exposure rules and binds the address.
func (p PageServer) Listen() (net.Listener, error) {
	host, _, err := net.SplitHostPort(p.Addr)
	if err != nil {
		return nil, fmt.Errorf("status address %q: %w", p.Addr, err)
	}
	ip := net.ParseIP(host)
	loopback := host == "localhost" || (ip != nil && ip.IsLoopback())
	clientCerts := p.TLS != nil && p.TLS.ClientAuth == tls.RequireAndVerifyClientCert
	if !loopback && !clientCerts && p.BearerToken == "" {
		return nil, fmt.Errorf("status address %s: %w", p.Addr, ErrExposed)
	}
	ln, err := net.Listen("tcp", p.Addr)
	if err != nil {
		return nil, fmt.Errorf("serve status on %s: %w", p.Addr, err)
	}
	if p.TLS != nil {
		ln = tls.NewListener(ln, p.TLS)
	}
	return ln, nil
}

// Serve serves h on ln, behind the bearer token if set, until ctx is done.
func (p PageServer) Serve(ctx context.Context, ln net.Listener, h http.Handler) error {
	if p.BearerToken != "" {
		h = requireToken(p.BearerToken, h)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		// Event streams never end by themselves.
		_ = srv.Shutdown(sctx)
		_ = srv.Close()
	}()
	err := srv.Serve(ln)
	if errors.Is(err, http.ErrServerClosed) {
		<-stopped
		return nil
	}
	return fmt.Errorf("serve status on %s: %w", ln.Addr(), err)
}

func requireToken(token string, h http.Handler) http.Handler {
	want := []byte("Bearer " + token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got := []byte(r.Header.Get("Authorization"))
		if q := r.URL.Query().Get("token"); q != "" {
			got = []byte("Bearer " + q)
		}
		if r.URL.Path == "/healthz" || subtle.ConstantTimeCompare(got, want) == 1 {
			h.ServeHTTP(w, r)
			return
		}
		w.Header().Set("WWW-Authenticate", `Bearer realm="braid"`)
		http.Error(w, "unauthorized: pass the read-only status token (Authorization: Bearer ..., or ?token=...)", http.StatusUnauthorized)
	})
}
