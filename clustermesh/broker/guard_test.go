package broker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/internal/testenv"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestBrokerGuard checks what the broker enforces beyond etcd's key
// permissions, against a running broker: cluster users get leases of at most
// MaxLeaseTTL, cannot list leases or the keys bound to a lease; etcd's
// /metrics answers only on the separate loopback listener; and a data
// directory open to group or others is tightened to 0700.
func TestBrokerGuard(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "broker")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o777); err != nil { // whatever the umask
		t.Fatal(err)
	}
	ports := testenv.FreePorts(t, 2)
	b := startBroker(t, dir, ports[0], ports[1])
	checkMode(t, dir, 0o700)

	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	creds, err := b.AddCluster(ctx, testGrant("east"))
	if err != nil {
		t.Fatal(err)
	}
	cli := clusterClient(t, creds)
	admin, err := AdminClient(ctx, mustLocalAdmin(t, b))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()

	t.Run("lease TTL capped", func(t *testing.T) {
		tenYears := int64((10 * 365 * 24 * time.Hour).Seconds())
		_, err := cli.Grant(ctx, tenYears)
		if status.Code(err) != codes.OutOfRange || !strings.Contains(err.Error(), "longer than the broker's limit") {
			t.Errorf("cluster lease of 10 years: %v, want OutOfRange naming the limit", err)
		}
		max := int64(MaxLeaseTTL.Seconds())
		if _, err := cli.Grant(ctx, max+1); status.Code(err) != codes.OutOfRange {
			t.Errorf("cluster lease of %ds: %v, want OutOfRange", max+1, err)
		}
		l, err := cli.Grant(ctx, max)
		if err != nil {
			t.Fatalf("cluster lease of exactly MaxLeaseTTL: %v", err)
		}
		if l.TTL > max {
			t.Errorf("granted TTL %d, want at most %d", l.TTL, max)
		}
		// Root is not limited: it owns no cluster's entries.
		if _, err := admin.Grant(ctx, max+1); err != nil {
			t.Errorf("root lease of %ds: %v", max+1, err)
		}
	})

	t.Run("leases and their keys hidden", func(t *testing.T) {
		other, err := b.AddCluster(ctx, testGrant("west"))
		if err != nil {
			t.Fatal(err)
		}
		wcli := clusterClient(t, other)
		wl, err := wcli.Grant(ctx, 60)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := wcli.Put(ctx, clustermesh.ClusterKey("west"), "v", clientv3.WithLease(wl.ID)); err != nil {
			t.Fatal(err)
		}
		own, err := cli.Grant(ctx, 60)
		if err != nil {
			t.Fatal(err)
		}

		if _, err := cli.Leases(ctx); !errors.Is(err, rpctypes.ErrPermissionDenied) && status.Code(err) != codes.PermissionDenied {
			t.Errorf("list leases as east: %v, want permission denied", err)
		}
		for name, id := range map[string]clientv3.LeaseID{"own": own.ID, "west's": wl.ID} {
			if _, err := cli.TimeToLive(ctx, id, clientv3.WithAttachedKeys()); status.Code(err) != codes.PermissionDenied {
				t.Errorf("keys of %s lease as east: %v, want permission denied", name, err)
			}
		}
		ttl, err := cli.TimeToLive(ctx, own.ID)
		if err != nil || ttl.TTL <= 0 {
			t.Errorf("TTL of own lease without keys: %+v, %v", ttl, err)
		}
		// A consumer shows how long another cluster has left: it may read
		// the TTL of the lease that cluster's keys hang on, not its keys.
		if ttl, err := cli.TimeToLive(ctx, wl.ID); err != nil || ttl.TTL <= 0 {
			t.Errorf("TTL of west's lease as east: %+v, %v", ttl, err)
		}
		// Root still sees everything.
		ls, err := admin.Leases(ctx)
		if err != nil || len(ls.Leases) < 2 {
			t.Errorf("root lists leases: %+v, %v", ls, err)
		}
		rt, err := admin.TimeToLive(ctx, wl.ID, clientv3.WithAttachedKeys())
		if err != nil || len(rt.Keys) != 1 || string(rt.Keys[0]) != clustermesh.ClusterKey("west") {
			t.Errorf("root reads west's lease keys: %+v, %v", rt, err)
		}
	})

	t.Run("metrics on loopback listener only", func(t *testing.T) {
		murl := b.MetricsURL()
		if !strings.HasPrefix(murl, "http://127.0.0.1:") {
			t.Errorf("metrics URL %q, want http://127.0.0.1:PORT by default", murl)
		}
		get := func(c *http.Client, url string) (int, string, error) {
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
			if err != nil {
				return 0, "", err
			}
			resp, err := c.Do(req)
			if err != nil {
				return 0, "", err
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
			return resp.StatusCode, string(body), nil
		}
		code, body, err := get(http.DefaultClient, murl+"/metrics")
		if err != nil || code != http.StatusOK || !strings.Contains(body, "etcd_server_has_leader") {
			t.Fatalf("GET %s/metrics: %d, %v (body has etcd_server_has_leader: %v)", murl, code, err, strings.Contains(body, "etcd_server_has_leader"))
		}
		tlsCfg, err := creds.TLSConfig()
		if err != nil {
			t.Fatal(err)
		}
		// Without credentials, over TLS trusting the broker's CA.
		c := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsCfg}, Timeout: 10 * time.Second}
		defer c.CloseIdleConnections()
		for _, path := range []string{"/metrics", "/health", "/version"} {
			url := creds.Endpoints[0] + path
			code, body, err := get(c, url)
			if err == nil && code == http.StatusOK {
				t.Errorf("GET %s without credentials: 200 (%d bytes), want it not served on the client port", url, len(body))
			}
			if strings.Contains(body, "etcd_") {
				t.Errorf("GET %s without credentials returned metrics", url)
			}
		}
	})
}

// TestEnsureDataDir checks that a data directory open to group or others is
// tightened to 0700 with a warning, and that a private one is left alone.
func TestEnsureDataDir(t *testing.T) {
	for _, mode := range []os.FileMode{0o777, 0o750, 0o701, 0o700} {
		dir := filepath.Join(t.TempDir(), "data")
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(dir, mode); err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		if err := ensureDataDir(dir, slog.New(slog.NewTextHandler(&buf, nil))); err != nil {
			t.Fatalf("mode %04o: %v", mode, err)
		}
		checkMode(t, dir, 0o700)
		warned := strings.Contains(buf.String(), "level=WARN") && strings.Contains(buf.String(), fmt.Sprintf("was=%04o", mode))
		if want := mode != 0o700; warned != want {
			t.Errorf("mode %04o: warned %v, want %v (log %q)", mode, warned, want, buf.String())
		}
	}
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := ensureDataDir(file, slog.New(slog.DiscardHandler)); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Errorf("data dir that is a file: %v, want refusal", err)
	}
}
