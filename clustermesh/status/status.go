package status

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/reconcile"
)

// Snapshot is the document the status page renders and /api/status serves.
type Snapshot struct {
	// Cluster is the local cluster; Role is "operator" or "agent".
	Cluster clustermesh.ClusterName `json:"cluster"`
	Role    string                  `json:"role"`
	Node    string                  `json:"node,omitempty"`
	// Zone and Region place an agent's node, as its flags or its Node
	// object said.
	Zone   string    `json:"zone,omitempty"`
	Region string    `json:"region,omitempty"`
	Time   time.Time `json:"time"`
	// Healthy is false when any part reports a problem; Problems says
	// which.
	Healthy  bool     `json:"healthy"`
	Problems []string `json:"problems,omitempty"`
	// Publish is set on operators.
	Publish *clustermesh.PublishStatus `json:"publish,omitempty"`
	// Remotes lists every remote cluster known, departed ones included.
	Remotes []clustermesh.RemoteClusterStatus `json:"remotes"`
	// InvalidClusterConfigs counts cluster configs rejected by validation.
	InvalidClusterConfigs int `json:"invalidClusterConfigs,omitempty"`
	// Maps is the fill of each BPF map (agents only).
	Maps []MapFill `json:"maps,omitempty"`
	// Loops is how each reconcile loop's rounds went.
	Loops []reconcile.Status `json:"loops,omitempty"`
	// Nodes is every mesh node's liveness as this agent's gossip sees it
	// (agents only). An unreachable node's backends are out of the
	// healthy set; its mesh state stays.
	Nodes []NodeHealth `json:"nodes,omitempty"`
	// FallbackServices counts services with no healthy backend, served
	// from every ready one (agents only).
	FallbackServices int `json:"fallbackServices,omitempty"`
	// PodDevices are the pod-facing devices the agent's tc programs are
	// attached to, by name (agents following pods, --pod-devices).
	PodDevices []string `json:"podDevices,omitempty"`
	// Counters are the datapath's packet counters since its maps were
	// created, by name (bpf.Counter), summed over CPUs (agents only).
	Counters map[string]uint64 `json:"counters,omitempty"`
	// Policy is the NetworkPolicy enforcement of the node (agents only).
	Policy *PolicyStatus `json:"policy,omitempty"`
	// Tunnel is the node's WireGuard device (agents with a tunnel only).
	Tunnel *TunnelStatus `json:"tunnel,omitempty"`
}

// PolicyStatus is what the agent enforces from its cluster's
// NetworkPolicies and what they dropped.
type PolicyStatus struct {
	// Synced is false until the policies and the cluster's identities
	// were read: until then the maps keep what they held.
	Synced   bool `json:"synced"`
	Policies int  `json:"policies"`
	Rules    int  `json:"rules"`
	// Revision names the policy set last compiled (agent.PolicyRevision);
	// Enforced is the revision the datapath's maps hold. They are equal
	// once a change is enforced.
	Revision string `json:"revision,omitempty"`
	Enforced string `json:"enforced,omitempty"`
	// Identities lists every local identity a policy selects.
	Identities []PolicyIdentity `json:"identities,omitempty"`
	// Drops counts drops per policy, direction and reason since the
	// datapath was loaded; a drop counts against every policy isolating
	// the pod in that direction (none of them allowed the packet).
	Drops []PolicyDrops `json:"drops,omitempty"`
	// RecentDrops are the last drops on this node, newest last.
	RecentDrops []PolicyDrop `json:"recentDrops,omitempty"`
}

// PolicyIdentity is a local identity and the policies selecting it.
type PolicyIdentity struct {
	Identity  clustermesh.NumericIdentity `json:"identity"`
	Namespace string                      `json:"namespace"`
	Labels    map[string]string           `json:"labels,omitempty"`
	Ingress   []string                    `json:"ingress,omitempty"`
	Egress    []string                    `json:"egress,omitempty"`
	// Dropped counts the identity's drops on this node, both directions.
	Dropped uint64 `json:"dropped"`
}

// PolicyDrops is a drop counter. Policy is "namespace/name", or empty for
// the cluster's default deny.
type PolicyDrops struct {
	Policy    string `json:"policy"`
	Direction string `json:"direction"`
	Reason    string `json:"reason"`
	Packets   uint64 `json:"packets"`
}

// PolicyDrop is one dropped packet.
type PolicyDrop struct {
	// AgeSeconds is how long ago it was dropped.
	AgeSeconds float64                     `json:"ageSeconds"`
	Direction  string                      `json:"direction"`
	Reason     string                      `json:"reason"`
	Source     clustermesh.NumericIdentity `json:"source"`
	// SourceCluster is the cluster owning the source identity; empty for
	// addresses outside the mesh.
	SourceCluster      clustermesh.ClusterName     `json:"sourceCluster,omitempty"`
	Destination        clustermesh.NumericIdentity `json:"destination"`
	DestinationCluster clustermesh.ClusterName     `json:"destinationCluster,omitempty"`
	From               string                      `json:"from"`
	To                 string                      `json:"to"`
	Protocol           string                      `json:"protocol"`
}

// AddLoops adds loops to Loops, and a problem for each whose last round
// failed (it is being retried).
func (s *Snapshot) AddLoops(loops ...reconcile.Status) {
	for _, l := range loops {
		s.Loops = append(s.Loops, l)
		if p := l.Problem(); p != "" {
			s.Problems = append(s.Problems, p)
		}
	}
}

// NodeHealth is one mesh node's gossip state.
type NodeHealth struct {
	Cluster clustermesh.ClusterName `json:"cluster"`
	Node    string                  `json:"node"`
	// State is alive, suspect, dead or unknown (never seen).
	State       string `json:"state"`
	Unreachable bool   `json:"unreachable"`
	// LastSeenSeconds is how long ago the node was last known alive; -1
	// when never.
	LastSeenSeconds float64 `json:"lastSeenSeconds"`
}

// MapFill is how full one BPF map is.
type MapFill struct {
	Name     string  `json:"name"`
	Entries  int     `json:"entries"`
	Capacity int     `json:"capacity"`
	Pressure float64 `json:"pressure"`
}

// SetHealth adds a problem for every remote cluster that is disconnected
// or stale (departed ones are not problems) and sets Healthy: true when
// Problems is then empty. Sources call it last, after adding their own
// problems.
func (s *Snapshot) SetHealth() {
	for _, r := range s.Remotes {
		switch {
		case r.Gone:
		case !r.Connected:
			s.Problems = append(s.Problems, fmt.Sprintf("cluster %s: disconnected: %s", r.Name, r.LastError))
		case r.Stale:
			s.Problems = append(s.Problems, fmt.Sprintf("cluster %s: stale: its watches have shown no progress for %v, what is shown of it may be out of date; hint: check the broker is reachable from here, and `braid status` on cluster %s's operator", r.Name, s.Time.Sub(r.LastHeard()).Round(time.Second), r.Name))
		}
	}
	s.Healthy = len(s.Problems) == 0
}

// Source is what the status page needs from a running agent or operator.
type Source interface {
	// Snapshot is cheap, non-blocking and returns a value the caller owns.
	Snapshot() Snapshot
}

// APIPath is where the JSON document is served.
const APIPath = "/api/status"

// Handler serves the status page at /, the JSON document at APIPath and
// health at /healthz and /readyz.
func Handler(src Source) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+APIPath, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(src.Snapshot())
	})
	mux.HandleFunc("GET /healthz", health(src))
	// Ready means healthy: a source that is not has nothing right to
	// serve.
	mux.HandleFunc("GET /readyz", health(src))
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		if err := page.Execute(w, view(src.Snapshot())); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
		}
	})
	return mux
}

// health answers 200 "ok" when src is healthy, else 503 with its problems,
// one a line.
func health(src Source) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		s := src.Snapshot()
		if !s.Healthy {
			w.WriteHeader(http.StatusServiceUnavailable)
			for _, p := range s.Problems {
				fmt.Fprintln(w, p)
			}
			return
		}
		fmt.Fprintln(w, "ok")
	}
}

// Fetch reads the JSON document from a status server at baseURL (for
// example http://127.0.0.1:9876).
func Fetch(ctx context.Context, client *http.Client, baseURL string) (Snapshot, error) {
	var s Snapshot
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, baseURL+APIPath, nil)
	if err != nil {
		return s, fmt.Errorf("fetch status from %s: %w", baseURL, err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return s, fmt.Errorf("fetch status from %s: %w", baseURL, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return s, fmt.Errorf("fetch status from %s: HTTP %s", baseURL, resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxSnapshotBytes+1))
	if err != nil {
		return s, fmt.Errorf("fetch status from %s: %w", baseURL, err)
	}
	if len(body) > MaxSnapshotBytes {
		return s, fmt.Errorf("fetch status from %s: response is larger than %d bytes; is that a braid status server?", baseURL, MaxSnapshotBytes)
	}
	if err := json.Unmarshal(body, &s); err != nil {
		return s, fmt.Errorf("fetch status from %s: decode: %w", baseURL, err)
	}
	return s, nil
}

// MaxSnapshotBytes bounds the status document Fetch reads: a mesh of a
// thousand clusters fits many times over.
const MaxSnapshotBytes = 8 << 20

// Limits of the status server (see Serve).
const (
	ReadHeaderTimeout = 5 * time.Second
	ReadTimeout       = 10 * time.Second
	WriteTimeout      = 30 * time.Second
	IdleTimeout       = 60 * time.Second
	MaxHeaderBytes    = 16 << 10
	// MaxBodyBytes bounds a request body; every endpoint is a GET.
	MaxBodyBytes = 4 << 10
)

// limitBody caps request bodies at MaxBodyBytes.
func limitBody(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ContentLength > MaxBodyBytes {
			http.Error(w, "request body too large", http.StatusRequestEntityTooLarge)
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, MaxBodyBytes)
		h.ServeHTTP(w, r)
	})
}

// Serve serves Handler(src) on ln, and metrics at /metrics if it is not
// nil, until ctx is done; it then shuts the server down, giving requests in
// flight up to two seconds. It returns nil after a shutdown.
func Serve(ctx context.Context, ln net.Listener, src Source, metrics http.Handler) error {
	mux := http.NewServeMux()
	if metrics != nil {
		mux.Handle("/metrics", metrics)
	}
	mux.Handle("/", Handler(src))
	// A client that declares a body and never sends it, or idles, is cut
	// off: connections and goroutines stay bounded.
	srv := &http.Server{
		Handler:           limitBody(mux),
		ReadHeaderTimeout: ReadHeaderTimeout,
		ReadTimeout:       ReadTimeout,
		WriteTimeout:      WriteTimeout,
		IdleTimeout:       IdleTimeout,
		MaxHeaderBytes:    MaxHeaderBytes,
	}
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	err := srv.Serve(ln)
	if errors.Is(err, http.ErrServerClosed) {
		<-stopped
		return nil
	}
	return fmt.Errorf("serve status on %s: %w", ln.Addr(), err)
}
